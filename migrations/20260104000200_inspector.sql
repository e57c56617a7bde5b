-- The operator's inspector: its audit table, and the reads it lists conversations with.

-- Who revealed a number, exported or erased a person's data, or rewound or re-ran a turn of a
-- conversation, which conversation, and when. It holds no number and no text of the person's; no
-- foreign key, since an entry outlives the erasure it records.
create table public.inspector_audit (
  id uuid primary key,
  at timestamptz not null,
  actor text not null,
  action text not null check (action in ('reveal', 'export', 'erase', 'rewind', 'rerun')),
  session_id uuid not null
);

create index idx_inspector_audit_at on public.inspector_audit (at);

alter table public.inspector_audit enable row level security;
revoke all on table public.inspector_audit from public, anon, authenticated;
grant all on table public.inspector_audit to service_role;

-- The conversations a query selects, the most recently active first: what a list of them shows
-- (counts of undelivered replies and due events, the current process). Every filter set in the
-- request must hold; `now` decides which events are due. An inspector's read, not a turn's: it
-- may scan every session.
create function public.soul_inspect_conversations(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_agg(c.conversation order by c.last_active_at desc, c.id), '[]'::jsonb)
  from (
    select s.id, s.last_active_at, pg_catalog.jsonb_build_object(
      'id', s.id,
      'address', s.phone_number,
      'line', s.line,
      'persona', s.assigned_persona,
      'first_contact_at', s.first_contact_at,
      'last_active_at', s.last_active_at,
      'total_messages', s.total_messages,
      'opted_out', s.opted_out_at is not null,
      'process', (select p.process_name from public.mental_process_state p
                   where p.session_id = s.id),
      'pending_replies', (select pg_catalog.count(*) from public.outbound_messages o
                   where o.session_id = s.id and o.status = 'pending'),
      'failed_replies', (select pg_catalog.count(*) from public.outbound_messages o
                   where o.session_id = s.id and o.status in ('failed', 'undelivered')),
      'due_events', (select pg_catalog.count(*) from public.scheduled_events e
                   where e.session_id = s.id and e.due_at <= (request ->> 'now')::timestamptz),
      'next_event_at', (select pg_catalog.min(e.due_at) from public.scheduled_events e
                   where e.session_id = s.id)
    ) as conversation
    from public.user_sessions s
    where (request ->> 'session' is null or s.id = (request ->> 'session')::uuid)
      and (request ->> 'search' is null
           or pg_catalog.strpos(pg_catalog.lower(s.phone_number), pg_catalog.lower(request ->> 'search')) > 0
           or exists (select 1 from public.messages m
                       where m.session_id = s.id
                         and pg_catalog.strpos(pg_catalog.lower(m.content), pg_catalog.lower(request ->> 'search')) > 0))
      and (request ->> 'process' is null
           or exists (select 1 from public.mental_process_state p
                       where p.session_id = s.id and p.process_name = request ->> 'process'))
      and (not (request ->> 'opted_out')::boolean or s.opted_out_at is not null)
      and (not (request ->> 'undelivered')::boolean
           or exists (select 1 from public.outbound_messages o
                       where o.session_id = s.id and o.status in ('pending', 'failed', 'undelivered')))
      and (not (request ->> 'due_events')::boolean
           or exists (select 1 from public.scheduled_events e
                       where e.session_id = s.id and e.due_at <= (request ->> 'now')::timestamptz))
    order by s.last_active_at desc, s.id
    limit (request ->> 'limit')::integer
  ) c
$$;

-- Appends one audit entry.
create function public.soul_inspect_record_audit(request jsonb)
returns jsonb
language sql
security invoker
set search_path = ''
as $$
  insert into public.inspector_audit (id, at, actor, action, session_id)
  values (pg_catalog.gen_random_uuid(), (request ->> 'at')::timestamptz, request ->> 'actor',
          request ->> 'action', (request ->> 'session')::uuid);
  select 'null'::jsonb
$$;

-- The latest entries, newest first.
create function public.soul_inspect_audit_log(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'at', a.at, 'actor', a.actor, 'action', a.action, 'session', a.session_id)
      order by a.at desc, a.id desc), '[]'::jsonb)
  from (select * from public.inspector_audit order by at desc, id desc
        limit (request ->> 'limit')::integer) a
$$;

revoke all on function public.soul_inspect_conversations(jsonb) from public, anon, authenticated;
grant execute on function public.soul_inspect_conversations(jsonb) to service_role;
revoke all on function public.soul_inspect_record_audit(jsonb) from public, anon, authenticated;
grant execute on function public.soul_inspect_record_audit(jsonb) to service_role;
revoke all on function public.soul_inspect_audit_log(jsonb) from public, anon, authenticated;
grant execute on function public.soul_inspect_audit_log(jsonb) to service_role;
