-- The inspector's re-runs are audited like its rewinds, and a session's state names the soul the
-- conversation is assigned to (a re-run runs the turn with that soul).

alter table public.inspector_audit drop constraint inspector_audit_action_check;
alter table public.inspector_audit add constraint inspector_audit_action_check
  check (action in ('reveal', 'export', 'erase', 'rewind', 'rerun'));

-- As in 20260105000000_turn_record_on_inbound.sql, with the session's persona.
create or replace function public.soul_session_state(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'version', s.version,
    'lease_expires_at', case when s.lease_token is not null then s.lease_expires_at end,
    'turn', s.turns,
    'persona', s.assigned_persona,
    'soul_memories', (select coalesce(pg_catalog.jsonb_object_agg(m.key, m.value), '{}'::jsonb)
      from public.soul_memories m where m.session_id = s.id),
    'process_memories', (select coalesce(pg_catalog.jsonb_object_agg(p.process_name, p.memory),
        '{}'::jsonb)
      from (select m.process_name, pg_catalog.jsonb_object_agg(m.key, m.value) as memory
              from public.process_memories m where m.session_id = s.id
              group by m.process_name) p),
    'process', (select pg_catalog.jsonb_build_object('name', p.process_name, 'params', p.params,
        'invocation_count', p.invocation_count, 'previous', p.previous_process)
      from public.mental_process_state p where p.session_id = s.id),
    'snapshot', (select w.snapshot from public.working_memory_snapshots w
      where w.session_id = s.id),
    'events', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'id', e.id, 'key', e.key, 'k', e.kind, 'p', e.payload, 'd', e.due_at) order by e.key),
        '[]'::jsonb)
      from public.scheduled_events e where e.session_id = s.id))
  from public.user_sessions s
  where s.id = (request ->> 'session_id')::uuid
$$;
