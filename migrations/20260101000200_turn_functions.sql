-- The turn contract in the database: every store operation is one function taking and returning
-- jsonb, so the PostgreSQL store (one statement each) and the Supabase store (one RPC each) run the
-- same code. All functions are `security invoker` with an empty search_path (every name below is
-- schema-qualified) and only `service_role` may execute them. See docs/persistence.md.

-- The seed's coerceSessionNumber: a positive number (or digit string) from metadata, else 1.
create function public.soul_session_number(p_metadata jsonb)
returns bigint
language sql
immutable
security invoker
set search_path = ''
as $$
  select case
    when pg_catalog.jsonb_typeof(p_metadata -> 'session_number') = 'number'
      and (p_metadata ->> 'session_number')::numeric >= 1
      then pg_catalog.floor((p_metadata ->> 'session_number')::numeric)::bigint
    when pg_catalog.jsonb_typeof(p_metadata -> 'session_number') = 'string'
      and (p_metadata ->> 'session_number') ~ '^[0-9]{1,18}$'
      then greatest((p_metadata ->> 'session_number')::bigint, 1)
    else 1
  end
$$;

create function public.soul_session_json(s public.user_sessions)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'id', s.id,
    'address', s.phone_number,
    'persona', s.assigned_persona,
    'first_contact_at', s.first_contact_at,
    'last_active_at', s.last_active_at,
    'total_messages', s.total_messages,
    'metadata', s.metadata,
    'opted_out', s.opted_out_at is not null,
    'version', s.version
  )
$$;

create function public.soul_message_json(m public.messages)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'id', m.id,
    'role', m.role,
    'content', m.content,
    'name', m.name,
    'region', nullif(m.region, 'default'),
    'metadata', m.metadata,
    'timestamp', m.created_at
  )
$$;

create function public.soul_ms(p_value jsonb)
returns interval
language sql
immutable
security invoker
set search_path = ''
as $$
  select pg_catalog.make_interval(secs => coalesce((p_value #>> '{}')::double precision, 0) / 1000)
$$;

-- Starts the session's next turn: the oldest inbound message not yet done (a dead worker's
-- started turn first, then the queue). Applies the seed's timeout, stores the user message, takes
-- the lease, bumps the version, validates the process state and loads everything the turn needs.
-- Releases the lease and returns null when nothing is waiting. The caller holds the session row
-- lock. An event row (see soul_begin_event_turn) starts a turn without touching the conversation,
-- the message count or the session timeout (session metadata is left as it is).
create function public.soul_start_next(
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
    -- Subprocesses run after every turn whatever the current process is, so their memories are
    -- loaded too: those named in the settings that hold any.
    'subprocess_memories', (
      select coalesce(pg_catalog.jsonb_object_agg(p.process_name, p.memories), '{}'::jsonb)
        from (
          select m.process_name, pg_catalog.jsonb_object_agg(m.key, m.value) as memories
            from public.process_memories m
            where m.session_id = p_session
              and coalesce(p_settings -> 'subprocesses', '[]'::jsonb) ? m.process_name
            group by m.process_name
        ) p),
    'history', v_history,
    'snapshot', (
      select snapshot from public.working_memory_snapshots
        where session_id = p_session order by seq desc limit 1)
  );
end
$$;

-- Applies a change set (the part of a commit that subprocess commits share). For one key the
-- last operation in the list wins.
create function public.soul_apply_changes(
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
    -- Only the latest snapshot is ever read; older ones are dropped so the table stays small.
    delete from public.working_memory_snapshots where session_id = p_session;
    insert into public.working_memory_snapshots (session_id, snapshot, created_at)
      values (p_session, p_changes -> 'snapshot', p_now);
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

-- Begin a turn: one call per inbound message. Returns {outcome: duplicate | queued | started}.
create function public.soul_begin_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_settings jsonb := request -> 'settings';
  v_s public.user_sessions;
  v_new boolean := false;
  v_inbound_id uuid;
begin
  -- Two first messages from one number at once: one insert wins, the other waits on it and
  -- then locks the row it made. Every later step holds the session row lock.
  insert into public.user_sessions (
      phone_number, assigned_persona, first_contact_at, last_active_at, metadata)
    values (
      request ->> 'address', v_settings ->> 'persona', v_now, v_now,
      pg_catalog.jsonb_build_object(
        'session_number', 1,
        'last_session_started_at', coalesce((request ->> 'received_at')::timestamptz, v_now)))
    on conflict (phone_number) do nothing
    returning * into v_s;
  if found then
    v_new := true;
  else
    select * into v_s from public.user_sessions
      where phone_number = request ->> 'address'
      for update;
  end if;

  if request ->> 'external_id' is not null then
    select id into v_inbound_id from public.inbound_messages
      where session_id = v_s.id and external_id = request ->> 'external_id';
    if found then
      return pg_catalog.jsonb_build_object(
        'outcome', 'duplicate', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
    end if;
  end if;

  insert into public.inbound_messages (session_id, external_id, body, received_at)
    values (v_s.id, request ->> 'external_id', request ->> 'body',
      coalesce((request ->> 'received_at')::timestamptz, v_now))
    returning id into v_inbound_id;

  if v_s.lease_token is not null and v_s.lease_expires_at > v_now then
    return pg_catalog.jsonb_build_object(
      'outcome', 'queued', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
  end if;

  return pg_catalog.jsonb_build_object(
    'outcome', 'started',
    'turn', public.soul_start_next(v_s.id, v_settings, v_now, v_new));
end
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

-- Commit a turn: applies the change set, stores the replies as pending outbound messages,
-- finishes the inbound message and starts the next queued one (or releases the lease).
create function public.soul_commit_turn(request jsonb)
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
  update public.user_sessions
    set total_messages = total_messages + v_replies, last_active_at = v_now
    where id = v_session;

  return pg_catalog.jsonb_build_object(
    'outcome', 'committed',
    'next', public.soul_start_next(v_session, request -> 'settings', v_now, false));
end
$$;

-- Commit subprocess changes, only while no newer turn has begun.
create function public.soul_commit_subprocess(request jsonb)
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
  return pg_catalog.jsonb_build_object('outcome', 'applied');
end
$$;

-- Extend a running turn's lease; refused once another worker has taken the session over.
create function public.soul_renew_lease(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_until timestamptz;
begin
  update public.user_sessions
    set lease_expires_at = (request ->> 'now')::timestamptz + public.soul_ms(request -> 'lease_ms')
    where id = (request ->> 'session_id')::uuid
      and lease_token = (request ->> 'lease_token')::uuid
    returning lease_expires_at into v_until;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'lease_lost');
  end if;
  return pg_catalog.jsonb_build_object('outcome', 'renewed', 'expires_at', v_until);
end
$$;

-- Take over a session whose lease is free or expired and run its oldest waiting message.
create function public.soul_resume_turn(request jsonb)
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
  return pg_catalog.jsonb_build_object(
    'outcome', 'started',
    'turn', public.soul_start_next(v_s.id, request -> 'settings', v_now, false));
end
$$;

-- Sessions with waiting messages and no live lease: work a crashed worker left behind.
create function public.soul_stalled_sessions(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_agg(t.id), '[]'::jsonb)
    from (
      select s.id
        from public.user_sessions s
        where (s.lease_token is null or s.lease_expires_at <= (request ->> 'now')::timestamptz)
          and exists (
            select 1 from public.inbound_messages i
              where i.session_id = s.id and i.status <> 'done')
        order by s.last_active_at
        limit (request ->> 'limit')::bigint
    ) t
$$;

create function public.soul_delivery_rank(p_status text)
returns integer
language sql
immutable
security invoker
set search_path = ''
as $$
  select case p_status
    when 'pending' then 0
    when 'accepted' then 1
    when 'sent' then 2
    else 3
  end
$$;

-- Delivery statuses only move forward; a late or repeated callback changes nothing.
create function public.soul_update_delivery(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
begin
  update public.outbound_messages
    set status = request ->> 'status',
      provider_id = coalesce(request ->> 'provider_id', provider_id),
      error = coalesce(request ->> 'error', error),
      updated_at = (request ->> 'now')::timestamptz
    where (id = (request ->> 'id')::uuid
        or (request ->> 'id' is null and provider_id = request ->> 'provider_id'))
      and public.soul_delivery_rank(status) < public.soul_delivery_rank(request ->> 'status');
  return pg_catalog.jsonb_build_object('applied', found);
end
$$;

create function public.soul_pending_deliveries(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'id', t.id, 'session_id', t.session_id, 'address', t.phone_number, 'body', t.body,
      'status', t.status, 'provider_id', t.provider_id, 'created_at', t.created_at)
      order by t.seq), '[]'::jsonb)
    from (
      select o.*, s.phone_number
        from public.outbound_messages o
        join public.user_sessions s on s.id = o.session_id
        where o.status = 'pending' and o.created_at <= (request ->> 'older_than')::timestamptz
        order by o.seq
        limit (request ->> 'limit')::bigint
    ) t
$$;

create function public.soul_set_opt_out(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
begin
  update public.user_sessions
    set opted_out_at = case
      when (request ->> 'opted_out')::boolean
        then coalesce(opted_out_at, (request ->> 'now')::timestamptz)
      end
    where phone_number = request ->> 'address';
  return pg_catalog.jsonb_build_object('found', found);
end
$$;

-- Claims due events for `claim_ms`; an event not completed by then is handed out again.
create function public.soul_claim_due_events(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_result jsonb;
begin
  with due as (
    select id from public.scheduled_events
      where due_at <= v_now and (claimed_until is null or claimed_until <= v_now)
      order by due_at, id
      limit (request ->> 'limit')::bigint
      for update skip locked
  ), claimed as (
    update public.scheduled_events e
      set claimed_until = v_now + public.soul_ms(request -> 'claim_ms')
      from due
      where e.id = due.id
      returning e.*
  )
  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'id', c.id, 'session_id', c.session_id, 'address', s.phone_number, 'key', c.key,
      'kind', c.kind, 'payload', c.payload, 'due_at', c.due_at) order by c.due_at, c.id),
      '[]'::jsonb)
    into v_result
    from claimed c
    join public.user_sessions s on s.id = c.session_id;
  return v_result;
end
$$;

create function public.soul_complete_event(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
begin
  -- Matching due_at too: a turn that rescheduled the same key meanwhile keeps its new event.
  delete from public.scheduled_events
    where id = (request ->> 'id')::uuid and due_at = (request ->> 'due_at')::timestamptz;
  return pg_catalog.jsonb_build_object('found', found);
end
$$;

create function public.soul_session(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select public.soul_session_json(s)
    from public.user_sessions s
    where s.phone_number = request ->> 'address'
$$;

-- History as the seed loads it: optionally one region, the latest `limit` (0: all), oldest first.
create function public.soul_history(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_agg(h.j order by h.seq), '[]'::jsonb)
    from (
      select m.seq, public.soul_message_json(m) as j
        from public.messages m
        join public.user_sessions s on s.id = m.session_id
        where s.phone_number = request ->> 'address'
          and (request ->> 'region' is null or m.region = request ->> 'region')
        order by m.seq desc
        limit case when (request ->> 'limit')::bigint > 0 then (request ->> 'limit')::bigint end
    ) h
$$;

create function public.soul_delete_old_messages(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_count bigint;
begin
  delete from public.messages m
    using public.user_sessions s
    where s.id = m.session_id
      and (request ->> 'address' is null or s.phone_number = request ->> 'address')
      and m.created_at < (request ->> 'before')::timestamptz;
  get diagnostics v_count = row_count;
  return pg_catalog.jsonb_build_object('deleted', v_count);
end
$$;

-- Everything stored about one person, for a data subject access request.
create function public.soul_export_user(request jsonb)
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

-- Erase one person: every table cascades from user_sessions.
create function public.soul_erase_user(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
begin
  delete from public.user_sessions where phone_number = request ->> 'address';
  return pg_catalog.jsonb_build_object('found', found);
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
