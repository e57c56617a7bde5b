-- Data requests: a person's export holds every column stored about them, erasure keeps a STOP
-- honoured and waits for a running turn, and retention deletes every copy of an old message's
-- text. The three functions are restated in full; the grants they had stay with them (`create or
-- replace` keeps a function's privileges).

-- Retention finds old inbound messages and settled replies by time, as it finds old
-- conversation messages (`idx_messages_created`): both tables are appended to in time order, so
-- a BRIN index is a few pages, costs a turn nothing measurable, and spares the hourly retention
-- a scan of the whole table.
create index idx_inbound_messages_received on public.inbound_messages using brin (received_at);
create index idx_outbound_messages_created on public.outbound_messages using brin (created_at);

-- Everything stored about one person, read in one snapshot: every column of every table, under
-- the names the store's readers use, except what only ties rows together (`session_id`, `seq`,
-- the surrogate `id` of keyed rows), the `waiting` flag (it mirrors `status = 'queued'`) and the
-- session's lease (a worker's hold while a turn runs). The conformance case
-- `export_holds_every_column_of_the_schema` checks this against schema/postgres.sql.
create or replace function public.soul_export_user(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
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
        'finished_at', t.finished_at, 'kind', t.kind, 'event', t.event) order by t.seq), '[]'::jsonb)
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
  )
  from public.user_sessions s
  where s.phone_number = request ->> 'address'
$$;

-- Erases one person: every table cascades from user_sessions. Refused while a turn of theirs
-- runs (a live lease): its commit, replies and subprocesses would write again what was erased.
-- A person who opted out keeps a session row holding nothing but the number, the time they
-- opted out (first contact and last activity are set to it, so no other time of theirs is kept)
-- and the persona the columns require, under a new id (no log line's session id leads to it)
-- and at version 0, so that a later message is a first contact again, stored and not answered
-- until they opt back in. Without it a STOP would be forgotten with the rest.
create or replace function public.soul_erase_user(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_s public.user_sessions;
begin
  select * into v_s from public.user_sessions
    where phone_number = request ->> 'address'
    for update;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'unknown');
  end if;
  if v_s.lease_token is not null and v_s.lease_expires_at > (request ->> 'now')::timestamptz then
    return pg_catalog.jsonb_build_object(
      'outcome', 'turn_running', 'lease_expires_at', v_s.lease_expires_at);
  end if;
  delete from public.user_sessions where id = v_s.id;
  if v_s.opted_out_at is not null then
    insert into public.user_sessions (
        phone_number, assigned_persona, first_contact_at, last_active_at, opted_out_at)
      values (v_s.phone_number, v_s.assigned_persona, v_s.opted_out_at, v_s.opted_out_at,
        v_s.opted_out_at);
  end if;
  return pg_catalog.jsonb_build_object(
    'outcome', 'erased', 'opt_out_kept', v_s.opted_out_at is not null);
end
$$;

-- Retention: the messages older than `before` (of one person, or of everyone), counted, and the
-- other copies of their text. An inbound message goes once its turn is done (a waiting one is
-- still to be answered), a reply once it is no longer pending (a pending one is still to be
-- sent). A session with no turn since `before` loses its snapshot, process state and process
-- memories: the snapshot holds old messages, and the session timeout, which clears the other two
-- at the next message, finds no message left to measure the silence from. Soul memories stay.
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
