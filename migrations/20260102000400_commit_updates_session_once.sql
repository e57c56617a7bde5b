-- A commit with nothing queued behind it (nearly every commit) updated its session row twice:
-- once to count the replies, once more in `soul_start_next` to release the lease. Each update
-- writes a new version of the row and a WAL record; now the commit looks for a waiting message
-- itself and, finding none, counts and releases in one update. With a message waiting it hands
-- over to `soul_start_next` as before. Measured in docs/performance.md.
--
-- Restated in full (a migration restates what it changes); new: the `not exists` branch.
create or replace function public.soul_commit_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_session uuid := (request ->> 'session_id')::uuid;
  v_s public.user_sessions;
  v_replies integer;
begin
  select * into v_s from public.user_sessions where id = v_session for update;
  if not found or v_s.lease_token is distinct from (request ->> 'lease_token')::uuid then
    return pg_catalog.jsonb_build_object('outcome', 'lease_lost');
  end if;

  perform public.soul_apply_changes(v_session, request -> 'changes', request -> 'settings', v_now);

  with replies as (
    insert into public.messages (id, session_id, role, content, region, name, metadata, created_at)
      select (e ->> 'id')::uuid, v_session, 'assistant', e ->> 'content',
          coalesce(e ->> 'region', 'default'), e ->> 'name',
          coalesce(e -> 'metadata', '{}'::jsonb), coalesce((e ->> 'timestamp')::timestamptz, v_now)
        from pg_catalog.jsonb_array_elements(coalesce(request -> 'replies', '[]'::jsonb))
          with ordinality as x(e, n)
        order by n
      returning id, content
  ), outbox as (
    insert into public.outbound_messages (id, session_id, body, created_at, updated_at)
      select id, v_session, content, v_now, v_now from replies
      returning 1
  )
  select count(*) into v_replies from outbox;

  update public.inbound_messages set status = 'done', finished_at = v_now
    where id = v_s.lease_inbound_id;

  if not exists (
    select 1 from public.inbound_messages
      where session_id = v_session and status <> 'done'
  ) then
    -- What `soul_start_next` does when nothing waits, in the same update as the count.
    update public.user_sessions
      set total_messages = total_messages + v_replies, last_active_at = v_now,
        lease_token = null, lease_expires_at = null, lease_inbound_id = null
      where id = v_session;
    return pg_catalog.jsonb_build_object('outcome', 'committed', 'next', null);
  end if;

  update public.user_sessions
    set total_messages = total_messages + v_replies, last_active_at = v_now
    where id = v_session;
  return pg_catalog.jsonb_build_object(
    'outcome', 'committed',
    'next', public.soul_start_next(v_session, request -> 'settings', v_now, false));
end
$$;
