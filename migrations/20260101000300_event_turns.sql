-- Due scheduled events run turns through the same inbound queue as messages, so they share the
-- lease, the per-session order and takeover; an event is not a message from the person, so it is
-- not stored in the conversation, not counted and not seen by the session timeout. See
-- docs/persistence.md ("Event turns").

alter table public.inbound_messages
  add column kind text not null default 'message' check (kind in ('message', 'event')),
  -- For an event: {event_id, key, kind, payload}, copied from the completed scheduled event.
  add column event jsonb,
  add constraint inbound_messages_event_matches_kind check ((kind = 'event') = (event is not null));

-- As in 20260101000200, plus event rows: an event starts a turn without touching the
-- conversation, the message count or the session timeout (session metadata is left as it is).
create or replace function public.soul_start_next(
  p_session uuid,
  p_settings jsonb,
  p_now timestamptz,
  p_new_session boolean
)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_in public.inbound_messages;
  v_s public.user_sessions;
  v_last timestamptz;
  v_reset boolean := false;
  v_resumed boolean;
  v_event boolean;
  v_number bigint;
  v_metadata jsonb;
  v_token uuid := pg_catalog.gen_random_uuid();
  v_state public.mental_process_state;
  v_process text;
  v_params jsonb;
  v_corrected text;
  v_limit bigint := coalesce((p_settings ->> 'history_limit')::bigint, 20);
  v_region text := p_settings ->> 'history_region';
  v_history jsonb;
begin
  select * into v_in from public.inbound_messages
    where session_id = p_session and status <> 'done'
    order by seq
    limit 1;
  if not found then
    update public.user_sessions
      set lease_token = null, lease_expires_at = null, lease_inbound_id = null
      where id = p_session;
    return null;
  end if;

  select * into v_s from public.user_sessions where id = p_session;
  v_metadata := v_s.metadata;
  v_resumed := v_in.status = 'started';
  v_event := v_in.kind = 'event';
  if not v_resumed and v_event then
    -- Not the person talking: no user message, and the timeout neither fires nor restarts.
    update public.inbound_messages set status = 'started', started_at = p_now where id = v_in.id;
  elsif not v_resumed then
    select max(created_at) into v_last from public.messages
      where session_id = p_session and role = 'user';
    v_number := public.soul_session_number(v_metadata);
    v_reset := v_last is not null
      and v_in.received_at - v_last >= public.soul_ms(p_settings -> 'session_timeout_ms');
    if v_reset then
      v_number := v_number + 1;
      v_metadata := v_metadata || pg_catalog.jsonb_build_object(
        'session_number', v_number, 'last_session_started_at', v_in.received_at);
      delete from public.process_memories where session_id = p_session;
      delete from public.mental_process_state where session_id = p_session;
      delete from public.working_memory_snapshots where session_id = p_session;
    else
      v_metadata := v_metadata || pg_catalog.jsonb_build_object('session_number', v_number);
    end if;
    -- The stored user message has the inbound message's id, so the turn can tell it apart.
    insert into public.messages (id, session_id, message_sid, role, content, created_at)
      values (v_in.id, p_session, v_in.external_id, 'user', v_in.body, v_in.received_at);
    update public.inbound_messages set status = 'started', started_at = p_now where id = v_in.id;
  end if;

  update public.user_sessions set
      metadata = v_metadata,
      last_active_at = p_now,
      total_messages = total_messages + (case when v_resumed or v_event then 0 else 1 end),
      version = version + 1,
      lease_token = v_token,
      lease_expires_at = p_now + public.soul_ms(p_settings -> 'lease_ms'),
      lease_inbound_id = v_in.id
    where id = p_session
    returning * into v_s;

  select * into v_state from public.mental_process_state where session_id = p_session;
  if found then
    v_params := v_state.params;
    if coalesce(p_settings -> 'known_processes', '[]'::jsonb) ? v_state.process_name then
      v_process := v_state.process_name;
    else
      v_corrected := v_state.process_name;
      v_process := p_settings ->> 'initial_process';
      update public.mental_process_state
        set process_name = v_process, updated_at = p_now
        where session_id = p_session;
    end if;
  else
    v_process := p_settings ->> 'initial_process';
    v_params := '{}'::jsonb;
  end if;

  select coalesce(pg_catalog.jsonb_agg(h.j order by h.seq), '[]'::jsonb) into v_history
    from (
      select m.seq, public.soul_message_json(m) as j
        from public.messages m
        where m.session_id = p_session and (v_region is null or m.region = v_region)
        order by m.seq desc
        limit case when v_limit > 0 then v_limit end
    ) h;

  return pg_catalog.jsonb_build_object(
    'session', public.soul_session_json(v_s),
    'inbound', pg_catalog.jsonb_build_object(
      'id', v_in.id, 'external_id', v_in.external_id, 'body', v_in.body,
      'received_at', v_in.received_at,
      'kind', case when v_event
        then v_in.event || pg_catalog.jsonb_build_object('type', 'event')
        else pg_catalog.jsonb_build_object('type', 'message') end),
    'lease', pg_catalog.jsonb_build_object('token', v_token, 'expires_at', v_s.lease_expires_at),
    'new_session', p_new_session,
    'session_reset', v_reset,
    'resumed', v_resumed,
    'process', pg_catalog.jsonb_build_object(
      'name', v_process, 'params', v_params,
      'invocation_count', coalesce(v_state.invocation_count, 0),
      'previous', v_state.previous_process),
    'corrected_from', v_corrected,
    'soul_memories', (
      select coalesce(pg_catalog.jsonb_object_agg(key, value), '{}'::jsonb)
        from public.soul_memories where session_id = p_session),
    'process_memories', (
      select coalesce(pg_catalog.jsonb_object_agg(key, value), '{}'::jsonb)
        from public.process_memories
        where session_id = p_session and process_name = v_process),
    'history', v_history,
    'snapshot', (
      select snapshot from public.working_memory_snapshots
        where session_id = p_session order by seq desc limit 1)
  );
end
$$;

-- As in 20260101000200, plus each inbound row's kind and event.
create or replace function public.soul_export_user(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'session', public.soul_session_json(s),
    'messages', (select coalesce(pg_catalog.jsonb_agg(public.soul_message_json(m) order by m.seq), '[]'::jsonb)
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
        'external_id', t.external_id, 'body', t.body, 'received_at', t.received_at,
        'status', t.status, 'kind', t.kind, 'event', t.event) order by t.seq), '[]'::jsonb)
      from public.inbound_messages t where t.session_id = s.id),
    'outbound_messages', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'id', t.id, 'body', t.body, 'status', t.status, 'provider_id', t.provider_id,
        'created_at', t.created_at) order by t.seq), '[]'::jsonb)
      from public.outbound_messages t where t.session_id = s.id),
    'scheduled_events', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'key', t.key, 'kind', t.kind, 'payload', t.payload, 'due_at', t.due_at)
        order by t.key), '[]'::jsonb)
      from public.scheduled_events t where t.session_id = s.id)
  )
  from public.user_sessions s
  where s.phone_number = request ->> 'address'
$$;

-- Begin the turn of a due event: one call per claimed event. Completes (deletes) the event in the
-- same transaction that queues its turn. Returns {outcome: duplicate | gone | opted_out | queued |
-- started}.
create function public.soul_begin_event_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_external text := 'event:' || (request ->> 'event_id');
  v_s public.user_sessions;
  v_e public.scheduled_events;
  v_inbound_id uuid;
begin
  -- The same lock as begin and commit: the event's turn is ordered with the session's messages.
  select * into v_s from public.user_sessions
    where id = (request ->> 'session_id')::uuid
    for update;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'gone');
  end if;

  select id into v_inbound_id from public.inbound_messages
    where session_id = v_s.id and external_id = v_external;
  if found then
    return pg_catalog.jsonb_build_object(
      'outcome', 'duplicate', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
  end if;

  -- Matching due_at, as soul_complete_event does: a reschedule since the claim fires later.
  delete from public.scheduled_events
    where id = (request ->> 'event_id')::uuid and session_id = v_s.id
      and due_at = (request ->> 'due_at')::timestamptz
    returning * into v_e;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'gone');
  end if;
  if v_s.opted_out_at is not null then
    return pg_catalog.jsonb_build_object('outcome', 'opted_out', 'session_id', v_s.id);
  end if;

  insert into public.inbound_messages (session_id, external_id, body, received_at, kind, event)
    values (v_s.id, v_external, '', v_e.due_at, 'event', pg_catalog.jsonb_build_object(
      'event_id', v_e.id, 'key', v_e.key, 'kind', v_e.kind, 'payload', v_e.payload))
    returning id into v_inbound_id;

  if v_s.lease_token is not null and v_s.lease_expires_at > v_now then
    return pg_catalog.jsonb_build_object(
      'outcome', 'queued', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
  end if;

  return pg_catalog.jsonb_build_object(
    'outcome', 'started',
    'turn', public.soul_start_next(v_s.id, request -> 'settings', v_now, false));
end
$$;

-- Only the service role executes these (PostgreSQL grants EXECUTE to PUBLIC by default and
-- Supabase to anon and authenticated).
do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure
      from pg_catalog.pg_proc p
      join pg_catalog.pg_namespace n on n.oid = p.pronamespace
      where n.nspname = 'public' and p.proname like 'soul\_%'
  loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated', f);
    execute pg_catalog.format('grant execute on function %s to service_role', f);
  end loop;
end
$$;
