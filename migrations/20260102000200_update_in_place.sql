-- What a turn leaves on disk, and one more helper inlined. Measured in docs/performance.md
-- ("Bytes per turn").
--
-- The working-memory snapshot was deleted and inserted again on every turn: each turn left a dead
-- row of a kilobyte or more and two index entries, and inserts go to the end of the table, so
-- the space was only reused after a vacuum. Now a session has one snapshot row, updated in
-- place. Its indexed columns never change, so the update is a heap-only (HOT) update: the new
-- version goes into the same page and the next visitor of that page reclaims the old one.
delete from public.working_memory_snapshots w
  using public.working_memory_snapshots newer
  where newer.session_id = w.session_id and newer.seq > w.seq;
drop index public.idx_working_memory_snapshots_session;
alter table public.working_memory_snapshots
  add constraint working_memory_snapshots_session_id_key unique (session_id);

-- Room in each page for the next version of the snapshots on it, which a HOT update needs: a
-- full page sends the new version elsewhere, with new index entries. Only new pages honour it.
alter table public.working_memory_snapshots set (fillfactor = 50);

-- The session timeout asks for the newest user message of a session; an index of the user
-- messages alone answers that with half the entries and without the role in each.
create index idx_messages_session_user_created on public.messages (session_id, created_at)
  where role = 'user';
drop index public.idx_messages_session_role_created;

-- Histories of one region are rare (the turn loads every region unless a soul says otherwise):
-- the session's index, read newest first, answers them, filtering as it goes.
drop index public.idx_messages_session_region;

-- A fifth helper to inline, as in 20260102000000: the delivery update ranked both statuses
-- through the function manager (two calls per update, about 2 % of PostgreSQL's time per turn
-- through the gateway). Its body names nothing outside itself.
alter function public.soul_delivery_rank(text) reset all;

create or replace function public.soul_apply_changes(
  p_session uuid,
  p_changes jsonb,
  p_settings jsonb,
  p_now timestamptz
)
returns void
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_name text;
begin
  insert into public.messages (id, session_id, role, content, region, name, metadata, created_at)
    select (e ->> 'id')::uuid, p_session, e ->> 'role', e ->> 'content',
        coalesce(e ->> 'region', 'default'), e ->> 'name', coalesce(e -> 'metadata', '{}'::jsonb),
        coalesce((e ->> 'timestamp')::timestamptz, p_now)
      from pg_catalog.jsonb_array_elements(coalesce(p_changes -> 'memories', '[]'::jsonb))
        with ordinality as x(e, n)
      order by n;

  insert into public.soul_memories (session_id, key, value, updated_at)
    select p_session, o.e ->> 'key', o.e -> 'value', p_now
      from (
        select distinct on (e ->> 'key') e
          from pg_catalog.jsonb_array_elements(coalesce(p_changes -> 'soul_memory', '[]'::jsonb))
            with ordinality as x(e, n)
          order by e ->> 'key', n desc
      ) o
      where o.e ->> 'op' = 'set'
    on conflict (session_id, key)
      do update set value = excluded.value, updated_at = excluded.updated_at;
  delete from public.soul_memories m
    using (
      select distinct on (e ->> 'key') e
        from pg_catalog.jsonb_array_elements(coalesce(p_changes -> 'soul_memory', '[]'::jsonb))
          with ordinality as x(e, n)
        order by e ->> 'key', n desc
    ) o
    where o.e ->> 'op' = 'remove' and m.session_id = p_session and m.key = o.e ->> 'key';

  insert into public.process_memories (session_id, process_name, key, value, updated_at)
    select p_session, o.e ->> 'process', o.e ->> 'key', o.e -> 'value', p_now
      from (
        select distinct on (e ->> 'process', e ->> 'key') e
          from pg_catalog.jsonb_array_elements(
              coalesce(p_changes -> 'process_memory', '[]'::jsonb))
            with ordinality as x(e, n)
          order by e ->> 'process', e ->> 'key', n desc
      ) o
      where o.e ->> 'op' = 'set'
    on conflict (session_id, process_name, key)
      do update set value = excluded.value, updated_at = excluded.updated_at;
  delete from public.process_memories m
    using (
      select distinct on (e ->> 'process', e ->> 'key') e
        from pg_catalog.jsonb_array_elements(coalesce(p_changes -> 'process_memory', '[]'::jsonb))
          with ordinality as x(e, n)
        order by e ->> 'process', e ->> 'key', n desc
    ) o
    where o.e ->> 'op' = 'remove' and m.session_id = p_session
      and m.process_name = o.e ->> 'process' and m.key = o.e ->> 'key';

  if pg_catalog.jsonb_typeof(p_changes -> 'process_state') = 'object' then
    v_name := p_changes -> 'process_state' ->> 'name';
    -- The seed's validation on save: an unregistered name falls back to the initial process.
    if v_name is null or not coalesce(p_settings -> 'known_processes', '[]'::jsonb) ? v_name then
      v_name := p_settings ->> 'initial_process';
    end if;
    insert into public.mental_process_state (
        session_id, process_name, params, invocation_count, previous_process, updated_at)
      values (p_session, v_name,
        coalesce(p_changes -> 'process_state' -> 'params', '{}'::jsonb),
        coalesce((p_changes -> 'process_state' ->> 'invocation_count')::bigint, 0),
        p_changes -> 'process_state' ->> 'previous', p_now)
      on conflict (session_id) do update
        set process_name = excluded.process_name, params = excluded.params,
          invocation_count = excluded.invocation_count,
          previous_process = excluded.previous_process, updated_at = excluded.updated_at;
  end if;

  if p_changes -> 'snapshot' is not null and p_changes -> 'snapshot' <> 'null'::jsonb then
    insert into public.working_memory_snapshots (session_id, snapshot, created_at)
      values (p_session, p_changes -> 'snapshot', p_now)
      on conflict (session_id) do update
        set snapshot = excluded.snapshot, created_at = excluded.created_at;
  end if;

  insert into public.scheduled_events (session_id, key, kind, payload, due_at, created_at)
    select p_session, o.e ->> 'key', o.e ->> 'kind', coalesce(o.e -> 'payload', '{}'::jsonb),
        (o.e ->> 'due_at')::timestamptz, p_now
      from (
        select distinct on (e ->> 'key') e
          from pg_catalog.jsonb_array_elements(coalesce(p_changes -> 'schedule', '[]'::jsonb))
            with ordinality as x(e, n)
          order by e ->> 'key', n desc
      ) o
    on conflict (session_id, key) do update
      set kind = excluded.kind, payload = excluded.payload, due_at = excluded.due_at,
        claimed_until = null;
  delete from public.scheduled_events
    where session_id = p_session
      and key in (
        select pg_catalog.jsonb_array_elements_text(
          coalesce(p_changes -> 'cancel_events', '[]'::jsonb)));
end
$$;
