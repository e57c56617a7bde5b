-- Each statement of a PL/pgSQL function costs its executor's set-up and tear-down (opening the
-- tables and indexes, building the expressions) even when it touches no row, and
-- pg_stat_statements does not count that part against the statement. `soul_apply_changes` ran all
-- ten of its statements on every commit, most of them over an empty list (a reference turn sets
-- one soul-memory key and the process state: six of the ten had nothing to do). Now each runs
-- only when its list holds something for it: a set, a removal, an event, a cancellation. What
-- each statement does when it runs is unchanged. Measured in docs/performance.md.
--
-- Restated in full (a migration restates what it changes); new: the `if`s.
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
  if p_changes -> 'memories' <> '[]'::jsonb then
    insert into public.messages (id, session_id, role, content, region, name, metadata, created_at)
      select (e ->> 'id')::uuid, p_session, e ->> 'role', e ->> 'content',
          coalesce(e ->> 'region', 'default'), e ->> 'name', coalesce(e -> 'metadata', '{}'::jsonb),
          coalesce((e ->> 'timestamp')::timestamptz, p_now)
        from pg_catalog.jsonb_array_elements(p_changes -> 'memories') with ordinality as x(e, n)
        order by n;
  end if;

  if p_changes -> 'soul_memory' @> '[{"op": "set"}]' then
    insert into public.soul_memories (session_id, key, value, updated_at)
      select p_session, o.e ->> 'key', o.e -> 'value', p_now
        from (
          select distinct on (e ->> 'key') e
            from pg_catalog.jsonb_array_elements(p_changes -> 'soul_memory')
              with ordinality as x(e, n)
            order by e ->> 'key', n desc
        ) o
        where o.e ->> 'op' = 'set'
      on conflict (session_id, key)
        do update set value = excluded.value, updated_at = excluded.updated_at;
  end if;
  if p_changes -> 'soul_memory' @> '[{"op": "remove"}]' then
    delete from public.soul_memories m
      using (
        select distinct on (e ->> 'key') e
          from pg_catalog.jsonb_array_elements(p_changes -> 'soul_memory')
            with ordinality as x(e, n)
          order by e ->> 'key', n desc
      ) o
      where o.e ->> 'op' = 'remove' and m.session_id = p_session and m.key = o.e ->> 'key';
  end if;

  if p_changes -> 'process_memory' @> '[{"op": "set"}]' then
    insert into public.process_memories (session_id, process_name, key, value, updated_at)
      select p_session, o.e ->> 'process', o.e ->> 'key', o.e -> 'value', p_now
        from (
          select distinct on (e ->> 'process', e ->> 'key') e
            from pg_catalog.jsonb_array_elements(p_changes -> 'process_memory')
              with ordinality as x(e, n)
            order by e ->> 'process', e ->> 'key', n desc
        ) o
        where o.e ->> 'op' = 'set'
      on conflict (session_id, process_name, key)
        do update set value = excluded.value, updated_at = excluded.updated_at;
  end if;
  if p_changes -> 'process_memory' @> '[{"op": "remove"}]' then
    delete from public.process_memories m
      using (
        select distinct on (e ->> 'process', e ->> 'key') e
          from pg_catalog.jsonb_array_elements(p_changes -> 'process_memory')
            with ordinality as x(e, n)
          order by e ->> 'process', e ->> 'key', n desc
      ) o
      where o.e ->> 'op' = 'remove' and m.session_id = p_session
        and m.process_name = o.e ->> 'process' and m.key = o.e ->> 'key';
  end if;

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

  if p_changes -> 'schedule' <> '[]'::jsonb then
    insert into public.scheduled_events (session_id, key, kind, payload, due_at, created_at)
      select p_session, o.e ->> 'key', o.e ->> 'kind', coalesce(o.e -> 'payload', '{}'::jsonb),
          (o.e ->> 'due_at')::timestamptz, p_now
        from (
          select distinct on (e ->> 'key') e
            from pg_catalog.jsonb_array_elements(p_changes -> 'schedule')
              with ordinality as x(e, n)
            order by e ->> 'key', n desc
        ) o
      on conflict (session_id, key) do update
        set kind = excluded.kind, payload = excluded.payload, due_at = excluded.due_at,
          claimed_until = null;
  end if;
  if p_changes -> 'cancel_events' <> '[]'::jsonb then
    delete from public.scheduled_events
      where session_id = p_session
        and key in (
          select pg_catalog.jsonb_array_elements_text(p_changes -> 'cancel_events'));
  end if;
end
$$;
