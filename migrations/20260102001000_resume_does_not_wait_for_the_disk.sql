-- A resume starts a turn for messages already stored (each acknowledged only once its own
-- insert was on disk): it marks the message started, stores it as the user message and takes
-- the lease. Waiting for that commit to reach the disk (a WAL flush, the dearest part of a
-- small transaction here) protects nothing: if the server crashes before the flush, the resume
-- is lost as a whole, the messages are still queued, and the turn is started again, as after a
-- worker's crash; a worker that outlived the crash holds a lease the server no longer knows, so
-- its commit is refused and it sends nothing. Any later commit that waits (the turn's commit,
-- whose replies go out only once it is on disk) flushes the resume with it. So the resume
-- commits asynchronously (`synchronous_commit = off` for its own transaction only). A begin
-- still waits: it stores the message its caller may acknowledge. Measured in
-- docs/performance.md.
--
-- Restated in full (a migration restates what it changes); new: the `set_config`.
create or replace function public.soul_resume_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_s public.user_sessions;
begin
  select * into v_s from public.user_sessions
    where id = (request ->> 'session_id')::uuid
    for update;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'idle');
  end if;
  if v_s.lease_token is not null and v_s.lease_expires_at > v_now then
    return pg_catalog.jsonb_build_object('outcome', 'busy');
  end if;
  -- Local to this transaction: it outlasts the function, unlike the search_path above.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  return pg_catalog.jsonb_build_object(
    'outcome', 'started',
    'turn', public.soul_start_next(v_s.id, request -> 'settings', v_now, v_s.version = 0));
end
$$;
