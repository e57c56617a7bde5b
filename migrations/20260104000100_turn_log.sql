-- The turn log (docs/persistence.md, "The turn log"): one record per turn, written on the row of
-- the message (or due event) it answered by the update of the commit that marks that message
-- done, so that a record costs no row, row header or index entry of its own; the subprocesses'
-- part is added by their commit. A session's records are read through the messages'
-- `(session_id, external_id)` key, and the latest turn's number is kept on the session. A
-- session's whole state is read at once, and restored at once by a rewind. The commit, the
-- subprocess commit, the export and retention are restated in full; the grants they had stay
-- with them (`create or replace` keeps a function's privileges), and the new functions get the
-- others' at the end.

alter table public.inbound_messages
  -- The turn's number in its conversation (none: no turn answered the message yet). A rewind
  -- marks the later turns `rewound` and keeps them; the next turn takes the number after the
  -- rewind's turn again, so numbers repeat across rewound turns and `seq` orders them all.
  add column turn integer,
  add column rewound boolean not null default false,
  -- What the turn did (crates/persistence/src/turn_log.rs), as compact JSON text.
  add column record json;

-- The number of the latest turn not rewound: what the next commit numbers after.
alter table public.user_sessions add column turns integer not null default 0;

-- Commits a turn, as before, and writes its record on the message it answered.
create or replace function public.soul_commit_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_session uuid := (request ->> 'session_id')::uuid;
  v_claimed_until timestamptz :=
    v_now + public.soul_ms(request -> 'settings' -> 'reply_claim_ms');
  v_s public.user_sessions;
  v_replies integer;
  v_earlier_pending boolean;
begin
  select * into v_s from public.user_sessions where id = v_session for update;
  if not found or v_s.lease_token is distinct from (request ->> 'lease_token')::uuid then
    return pg_catalog.jsonb_build_object('outcome', 'lease_lost');
  end if;

  perform public.soul_apply_changes(v_session, request -> 'changes', request -> 'settings', v_now);

  -- The subquery sees the table as it was before this statement: the earlier replies only.
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
    insert into public.outbound_messages
        (id, session_id, body, created_at, updated_at, claimed_until)
      select id, v_session, content, v_now, v_now, v_claimed_until from replies
      returning 1
  )
  select count(*), exists (
      select 1 from public.outbound_messages o
        where o.session_id = v_session and o.status = 'pending')
    into v_replies, v_earlier_pending
    from outbox;

  -- The turn's record goes on the row of the message it answered, numbered after the session's
  -- latest turn not rewound (`user_sessions.turns`). The record arrives as compact JSON text and
  -- is kept as such (`json`): `jsonb` would store it half again as large or more. A commit
  -- without one (a caller of the function other than the store) leaves an empty record.
  update public.inbound_messages
    set status = 'done', finished_at = v_now, turn = v_s.turns + 1,
      record = coalesce((request ->> 'record')::json, '{}'::json)
    where id = v_s.lease_inbound_id;

  if not exists (
    select 1 from public.inbound_messages where session_id = v_session and waiting
  ) then
    -- What `soul_start_next` does when nothing waits, in the same update as the count.
    update public.user_sessions
      set total_messages = total_messages + v_replies, last_active_at = v_now,
        turns = turns + 1, lease_token = null, lease_expires_at = null, lease_inbound_id = null
      where id = v_session;
    return pg_catalog.jsonb_build_object('outcome', 'committed', 'next', null,
      'opted_out', v_s.opted_out_at is not null, 'earlier_pending', v_earlier_pending);
  end if;

  update public.user_sessions
    set total_messages = total_messages + v_replies, last_active_at = v_now,
      turns = turns + 1
    where id = v_session;
  return pg_catalog.jsonb_build_object(
    'outcome', 'committed',
    'next', public.soul_start_next(v_session, request -> 'settings', v_now, false),
    'opted_out', v_s.opted_out_at is not null, 'earlier_pending', v_earlier_pending);
end
$$;

-- Commits subprocess changes, only while no newer turn has begun, and adds their part to the
-- turn's record.
create or replace function public.soul_commit_subprocess(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_session uuid := (request ->> 'session_id')::uuid;
  v_version bigint;
begin
  select version into v_version from public.user_sessions where id = v_session for update;
  if not found or v_version <> (request ->> 'version')::bigint then
    return pg_catalog.jsonb_build_object('outcome', 'stale');
  end if;
  perform public.soul_apply_changes(
    v_session, request -> 'changes', request -> 'settings', (request ->> 'now')::timestamptz);
  -- Their part of the record of the turn they ran after (the message it answered, named by the
  -- request), appended to its compact text as the `sub` field.
  update public.inbound_messages i
    set record = (pg_catalog.left(i.record::text, -1)
      || case when i.record::text = '{}' then '' else ',' end
      || '"sub":' || coalesce(request ->> 'record', '{}') || '}')::json
    where i.id = (request ->> 'inbound_id')::uuid and i.session_id = v_session
      and i.record is not null;
  return pg_catalog.jsonb_build_object('outcome', 'applied');
end
$$;

-- The export, as before, with each turn's record on the message it answered.
create or replace function public.soul_export_user(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
    'session', public.soul_session_json(s)
      || pg_catalog.jsonb_build_object('opted_out_at', s.opted_out_at),
    'messages', (select coalesce(pg_catalog.jsonb_agg(public.soul_message_json(m)
        || pg_catalog.jsonb_build_object('message_sid', m.message_sid) order by m.seq), '[]'::jsonb)
      from public.messages m where m.session_id = s.id),
    'soul_memories', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'key', t.key, 'value', t.value, 'updated_at', t.updated_at) order by t.key), '[]'::jsonb)
      from public.soul_memories t where t.session_id = s.id),
    'process_memories', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'process', t.process_name, 'key', t.key, 'value', t.value, 'updated_at', t.updated_at)
        order by t.process_name, t.key), '[]'::jsonb)
      from public.process_memories t where t.session_id = s.id),
    'mental_process_state', (select pg_catalog.jsonb_build_object(
        'name', t.process_name, 'params', t.params, 'invocation_count', t.invocation_count,
        'previous', t.previous_process, 'updated_at', t.updated_at)
      from public.mental_process_state t where t.session_id = s.id),
    'working_memory_snapshots', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'snapshot', t.snapshot, 'created_at', t.created_at) order by t.seq), '[]'::jsonb)
      from public.working_memory_snapshots t where t.session_id = s.id),
    'inbound_messages', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'id', t.id, 'external_id', t.external_id, 'body', t.body, 'received_at', t.received_at,
        'status', t.status, 'attempts', t.attempts, 'started_at', t.started_at,
        'finished_at', t.finished_at, 'kind', t.kind, 'event', t.event, 'turn', t.turn,
        'rewound', t.rewound, 'record', t.record) order by t.seq), '[]'::jsonb)
      from public.inbound_messages t where t.session_id = s.id),
    'outbound_messages', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'id', t.id, 'body', t.body, 'status', t.status, 'claimed_until', t.claimed_until,
        'provider_id', t.provider_id, 'error', t.error, 'created_at', t.created_at,
        'updated_at', t.updated_at) order by t.seq), '[]'::jsonb)
      from public.outbound_messages t where t.session_id = s.id),
    'scheduled_events', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'id', t.id, 'key', t.key, 'kind', t.kind, 'payload', t.payload, 'due_at', t.due_at,
        'claimed_until', t.claimed_until, 'created_at', t.created_at)
        order by t.key), '[]'::jsonb)
      from public.scheduled_events t where t.session_id = s.id)
  ) order by s.line)
  from public.user_sessions s
  where s.phone_number = request ->> 'address'
  having pg_catalog.count(*) > 0
$$;

-- Retention, as before: a turn's record goes with the message it answered.
create or replace function public.soul_delete_old_messages(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_before timestamptz := (request ->> 'before')::timestamptz;
  v_address text := request ->> 'address';
  v_count bigint;
begin
  delete from public.messages m
    using public.user_sessions s
    where s.id = m.session_id
      and (v_address is null or s.phone_number = v_address)
      and m.created_at < v_before;
  get diagnostics v_count = row_count;
  delete from public.inbound_messages i
    using public.user_sessions s
    where s.id = i.session_id
      and (v_address is null or s.phone_number = v_address)
      and i.received_at < v_before and i.status = 'done';
  delete from public.outbound_messages o
    using public.user_sessions s
    where s.id = o.session_id
      and (v_address is null or s.phone_number = v_address)
      and o.created_at < v_before and o.status <> 'pending';
  delete from public.working_memory_snapshots w
    using public.user_sessions s
    where s.id = w.session_id
      and (v_address is null or s.phone_number = v_address)
      and s.last_active_at < v_before;
  delete from public.mental_process_state p
    using public.user_sessions s
    where s.id = p.session_id
      and (v_address is null or s.phone_number = v_address)
      and s.last_active_at < v_before;
  delete from public.process_memories p
    using public.user_sessions s
    where s.id = p.session_id
      and (v_address is null or s.phone_number = v_address)
      and s.last_active_at < v_before;
  return pg_catalog.jsonb_build_object('deleted', v_count);
end
$$;

-- A session's turn log, in commit order: the records of turns `from` to `to` (inclusive; none:
-- the latest), rewound ones included, each with the message it answered (as a turn's `inbound`)
-- and its replies with their delivery.
create function public.soul_turn_log(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'turn', t.turn, 'committed_at', t.finished_at,
      'rewound', t.rewound, 'record', t.record,
      'perception', pg_catalog.jsonb_build_object(
          'id', t.id, 'external_id', t.external_id, 'body', t.body,
          'received_at', t.received_at,
          'kind', case when t.kind = 'event'
            then t.event || pg_catalog.jsonb_build_object('type', 'event')
            else pg_catalog.jsonb_build_object('type', 'message') end),
      'replies', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
          'id', o.id, 'body', o.body, 'status', o.status, 'error', o.error) order by r.n),
          '[]'::jsonb)
        from pg_catalog.json_array_elements_text(coalesce(t.record -> 'r', '[]'::json))
          with ordinality as r(id, n)
        join public.outbound_messages o on o.id = r.id::uuid))
      order by t.seq), '[]'::jsonb)
  from public.inbound_messages t
  where t.session_id = (request ->> 'session_id')::uuid
    and t.turn >= (request ->> 'from')::integer
    and (request ->> 'to' is null or t.turn <= (request ->> 'to')::integer)
$$;

-- A session's whole state between turns, read in one snapshot: what a rewind starts from, and
-- the soul the conversation is assigned to (a re-run runs the turn with it).
create function public.soul_session_state(request jsonb)
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

-- A rewind's write: the session's state replaced by the one given (its memories, process state,
-- snapshot and scheduled events), the turns after `after_turn` marked rewound, the session's
-- latest turn set to it and the version bumped (so that the subprocesses of an earlier turn
-- cannot commit over it), in one transaction. Refused while a turn runs (a live lease), and when
-- the version moved since the caller read the state it rebuilt this one from.
create function public.soul_restore_session(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_session uuid := (request ->> 'session_id')::uuid;
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_state jsonb := request -> 'state';
  v_s public.user_sessions;
  v_rewound integer;
begin
  select * into v_s from public.user_sessions where id = v_session for update;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'unknown_turn');
  end if;
  if v_s.lease_token is not null and v_s.lease_expires_at > v_now then
    return pg_catalog.jsonb_build_object(
      'outcome', 'turn_running', 'lease_expires_at', v_s.lease_expires_at);
  end if;
  if v_s.version <> (request ->> 'version')::bigint then
    return pg_catalog.jsonb_build_object('outcome', 'changed');
  end if;

  delete from public.soul_memories where session_id = v_session;
  insert into public.soul_memories (session_id, key, value, updated_at)
    select v_session, e.key, e.value, v_now
      from pg_catalog.jsonb_each(coalesce(v_state -> 'soul_memories', '{}'::jsonb)) e;
  delete from public.process_memories where session_id = v_session;
  insert into public.process_memories (session_id, process_name, key, value, updated_at)
    select v_session, p.key, e.key, e.value, v_now
      from pg_catalog.jsonb_each(coalesce(v_state -> 'process_memories', '{}'::jsonb)) p,
        pg_catalog.jsonb_each(p.value) e;
  delete from public.mental_process_state where session_id = v_session;
  if pg_catalog.jsonb_typeof(v_state -> 'process') = 'object' then
    insert into public.mental_process_state (
        session_id, process_name, params, invocation_count, previous_process, updated_at)
      values (v_session, v_state -> 'process' ->> 'name',
        coalesce(v_state -> 'process' -> 'params', '{}'::jsonb),
        coalesce((v_state -> 'process' ->> 'invocation_count')::bigint, 0),
        v_state -> 'process' ->> 'previous', v_now);
  end if;
  delete from public.working_memory_snapshots where session_id = v_session;
  if pg_catalog.jsonb_typeof(v_state -> 'snapshot') = 'object' then
    insert into public.working_memory_snapshots (session_id, snapshot, created_at)
      values (v_session, v_state -> 'snapshot', v_now);
  end if;
  delete from public.scheduled_events where session_id = v_session;
  insert into public.scheduled_events (id, session_id, key, kind, payload, due_at, created_at)
    select (e ->> 'id')::uuid, v_session, e ->> 'key', e ->> 'k',
        coalesce(e -> 'p', '{}'::jsonb), (e ->> 'd')::timestamptz, v_now
      from pg_catalog.jsonb_array_elements(coalesce(v_state -> 'events', '[]'::jsonb)) e;

  update public.inbound_messages set rewound = true
    where session_id = v_session and turn > (request ->> 'after_turn')::integer and not rewound;
  get diagnostics v_rewound = row_count;
  update public.user_sessions
    set version = version + 1, turns = (request ->> 'after_turn')::integer
    where id = v_session;
  return pg_catalog.jsonb_build_object('outcome', 'rewound', 'rewound', v_rewound);
end
$$;

-- Only the service role executes the new functions, as the others.
do $$
declare
  f text;
begin
  foreach f in array array[
    'public.soul_turn_log(jsonb)', 'public.soul_session_state(jsonb)',
    'public.soul_restore_session(jsonb)'
  ] loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated', f);
    execute pg_catalog.format('grant execute on function %s to service_role', f);
  end loop;
end
$$;
