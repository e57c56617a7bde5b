-- The turn contract in the database: every store operation is one function taking and returning
-- jsonb, so the PostgreSQL store (one statement each) and the Supabase store (one RPC each, with
-- the body `{"request": ...}`) run the same code. See docs/persistence.md.
--
-- Every function is `security invoker`, and only `service_role` may execute it (the grants at
-- the end). Every function with statements of its own fixes an empty search_path and names
-- everything schema-qualified, so nothing a caller puts on its path can stand in for what it
-- calls. The small `language sql` helpers below are the exception, on purpose: see there.
--
-- The shape of these functions was measured statement by statement (docs/performance.md, "Why
-- the SQL is shaped as it is"): a turn is one call to begin and one to commit, each call writes
-- as few rows, index entries and WAL records as it can, and runs no statement it does not need.
--
-- From here on, a change to a function is a new migration that restates it in full
-- (`create or replace function`): a database that applied this file never runs it again.

-- The helpers. They have no fixed search_path so that PostgreSQL inlines them into their
-- callers: a function with a SET clause is never inlined, and every call (one per history row,
-- for `soul_message_json`; two per delivery update, for `soul_delivery_rank`) would go through
-- the function manager with a GUC save and restore, parsing and planning its body again. Turn
-- latency and 8-client throughput both improved by a fifth or more when they lost it. Their
-- bodies are fully schema-qualified, and every caller is one of the functions below with
-- `search_path = ''`, where they are inlined; called directly, they run with the caller's own
-- rights (security invoker), so a search_path the caller controls gains it nothing. (Supabase's
-- linter flags functions without a fixed search_path; for these six that is a false positive.)

-- A duration in milliseconds, as the requests carry them (`lease_ms`, `session_timeout_ms`, ...).
create function public.soul_ms(p_value jsonb)
returns interval
language sql
immutable
security invoker
as $$
  select pg_catalog.make_interval(secs => coalesce((p_value #>> '{}')::double precision, 0) / 1000)
$$;

-- The seed's coerceSessionNumber: a positive number (or digit string) from metadata, else 1.
create function public.soul_session_number(p_metadata jsonb)
returns bigint
language sql
immutable
security invoker
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

-- A session as the stores read it.
create function public.soul_session_json(s public.user_sessions)
returns jsonb
language sql
stable
security invoker
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

-- A message as the stores read it (a memory: the default region reads as none).
create function public.soul_message_json(m public.messages)
returns jsonb
language sql
stable
security invoker
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

-- An outbound message as the stores read it, with the address it goes to.
create function public.soul_outbound_json(o public.outbound_messages, p_address text)
returns jsonb
language sql
stable
security invoker
as $$
  select pg_catalog.jsonb_build_object(
    'id', o.id, 'session_id', o.session_id, 'address', p_address, 'body', o.body,
    'status', o.status, 'provider_id', o.provider_id, 'created_at', o.created_at)
$$;

-- Delivery statuses only move forward: pending → accepted → sent → delivered | undelivered |
-- failed (the three final ones do not replace each other).
create function public.soul_delivery_rank(p_status text)
returns integer
language sql
immutable
security invoker
as $$
  select case p_status
    when 'pending' then 0
    when 'accepted' then 1
    when 'sent' then 2
    else 3
  end
$$;

-- Starts the session's next turn: a turn whose worker stopped first (its message is still the
-- session's `lease_inbound_id`, and started), then the oldest waiting message; or `p_fresh`, a
-- message its begin has just inserted as started because nothing was in flight or waiting (it
-- was written once, there, instead of inserted queued and updated to started in the same
-- transaction). Applies the seed's session timeout, stores the user message, takes the lease,
-- bumps the version, validates the process state and loads everything the turn needs. Releases
-- the lease and returns null when nothing is waiting. The caller holds the session row lock.
--
-- An event row (see soul_begin_event_turn) starts a turn without touching the conversation, the
-- message count or the session timeout (session metadata is left as it is).
--
-- What it reads is kept small: the snapshot first, and the history (the latest messages, each
-- turned into JSON) only without one, since a turn reads the history only to rebuild a working
-- memory it has no snapshot of; a client that cannot read a stored snapshot asks for the
-- history separately (`soul_history`). The timeout's "newest user message" is the newest by
-- `seq`, read from the session index.
--
-- Each message counts the starts of its turn (`attempts`, answered as `attempt`): a re-start
-- after its worker stopped adds one, so that the turn driver gives a turn up past its bound and
-- the next message starts; a first start, and a message handed over from the queue, write
-- nothing for it.
create function public.soul_start_next(
  p_session uuid,
  p_settings jsonb,
  p_now timestamptz,
  p_new_session boolean,
  p_fresh uuid default null
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
  v_attempt integer;
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
  v_history jsonb := '[]'::jsonb;
  v_snapshot jsonb;
begin
  if p_fresh is not null then
    select * into v_in from public.inbound_messages where id = p_fresh;
  else
    -- A turn whose worker stopped comes first: its message is still the session's and started.
    select i.* into v_in
      from public.user_sessions s
      join public.inbound_messages i on i.id = s.lease_inbound_id
      where s.id = p_session and i.status = 'started';
    if not found then
      select * into v_in from public.inbound_messages
        where session_id = p_session and waiting
        order by seq
        limit 1;
    end if;
  end if;
  if not found then
    update public.user_sessions
      set lease_token = null, lease_expires_at = null, lease_inbound_id = null
      where id = p_session;
    return null;
  end if;

  select * into v_s from public.user_sessions where id = p_session;
  v_metadata := v_s.metadata;
  v_resumed := p_fresh is null and v_in.status = 'started';
  v_event := v_in.kind = 'event';
  v_attempt := v_in.attempts;
  if v_resumed then
    -- A re-start: the worker that started it stopped. Counted with the message, so that a turn
    -- that keeps failing can be given up; a first start writes nothing for it.
    update public.inbound_messages set attempts = attempts + 1
      where id = v_in.id
      returning attempts into v_attempt;
  end if;
  if not v_resumed and v_event then
    -- Not the person talking: no user message, and the timeout neither fires nor restarts.
    if p_fresh is null then
      update public.inbound_messages
        set status = 'started', started_at = p_now, waiting = false
        where id = v_in.id;
    end if;
  elsif not v_resumed then
    -- The newest user message by insertion order, as the history orders messages: the session
    -- index read newest first finds it after the replies that followed it.
    select created_at into v_last from public.messages
      where session_id = p_session and role = 'user'
      order by seq desc
      limit 1;
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
    if p_fresh is null then
      update public.inbound_messages
        set status = 'started', started_at = p_now, waiting = false
        where id = v_in.id;
    end if;
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

  -- With a snapshot the working memory already holds the conversation; the history is what a
  -- turn without one rebuilds it from. (A reset above deleted the snapshot.)
  select snapshot into v_snapshot from public.working_memory_snapshots
    where session_id = p_session;
  if v_snapshot is null then
    select coalesce(pg_catalog.jsonb_agg(h.j order by h.seq), '[]'::jsonb) into v_history
      from (
        select m.seq, public.soul_message_json(m) as j
          from public.messages m
          where m.session_id = p_session and (v_region is null or m.region = v_region)
          order by m.seq desc
          limit case when v_limit > 0 then v_limit end
      ) h;
  end if;

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
    'attempt', v_attempt,
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
    'snapshot', v_snapshot
  );
end
$$;

-- Applies a change set (the part of a commit that subprocess commits share). For one key the
-- last operation in the list wins.
--
-- Each statement of a PL/pgSQL function costs its executor's set-up and tear-down (opening the
-- tables and indexes, building the expressions) even when it touches no row, and most change
-- sets hold one or two kinds of change: so each statement runs only when its list holds
-- something for it (a set, a removal, an event, a cancellation).
--
-- `insert ... on conflict do update` locks the existing row before it updates it, a WAL record
-- of its own. The process state and the snapshot, one row per session after its first turn, are
-- updated, and inserted only when missing (the insert keeps `on conflict` for a row a concurrent
-- writer inserted first). The snapshot is updated in place (see its table). The memory keys keep
-- their upsert: updating them first measured slower.
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
  v_params jsonb;
  v_count bigint;
  v_previous text;
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
    v_params := coalesce(p_changes -> 'process_state' -> 'params', '{}'::jsonb);
    v_count := coalesce((p_changes -> 'process_state' ->> 'invocation_count')::bigint, 0);
    v_previous := p_changes -> 'process_state' ->> 'previous';
    update public.mental_process_state
      set process_name = v_name, params = v_params, invocation_count = v_count,
        previous_process = v_previous, updated_at = p_now
      where session_id = p_session;
    if not found then
      insert into public.mental_process_state (
          session_id, process_name, params, invocation_count, previous_process, updated_at)
        values (p_session, v_name, v_params, v_count, v_previous, p_now)
        on conflict (session_id) do update
          set process_name = excluded.process_name, params = excluded.params,
            invocation_count = excluded.invocation_count,
            previous_process = excluded.previous_process, updated_at = excluded.updated_at;
    end if;
  end if;

  if p_changes -> 'snapshot' is not null and p_changes -> 'snapshot' <> 'null'::jsonb then
    update public.working_memory_snapshots
      set snapshot = p_changes -> 'snapshot', created_at = p_now
      where session_id = p_session;
    if not found then
      insert into public.working_memory_snapshots (session_id, snapshot, created_at)
        values (p_session, p_changes -> 'snapshot', p_now)
        on conflict (session_id) do update
          set snapshot = excluded.snapshot, created_at = excluded.created_at;
    end if;
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

-- Begins a turn: one call per inbound message, the message stored durably before the webhook is
-- answered. Returns {outcome: duplicate | queued | waiting | started}.
--
-- - A known number's session (every message after a person's first) is locked first; the
--   insert runs only for a new number. An insert that finds a conflict still builds the row and
--   probes the unique index before a second statement takes the lock.
-- - STOP and START carry their opt-out change in the request (`opt_out`: true for STOP, false
--   for START), applied after the duplicate check and with the message: a replayed keyword
--   changes nothing, and a turn started or queued for the message already reads the change.
-- - With `defer` (enqueue_turn) it stores the message and starts nothing, so a gateway that is
--   behind answers Twilio at once and starts the turn later with `soul_resume_turn`; `waiting`
--   says no worker holds the session, so nobody starts the message unless the caller resumes
--   the session (or a sweeper finds it through `soul_stalled_sessions`).
-- - A message that starts now (no turn in flight or stopped, none waiting) is inserted as
--   started and handed to `soul_start_next` by id.
-- - A turn is `new_session` when it is the session's first (version 0), whichever call created
--   the session: a deferred first message creates it and a later call starts it.
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
  v_inbound_id uuid;
  v_fresh boolean;
begin
  -- Every later step holds the session row lock.
  select * into v_s from public.user_sessions
    where phone_number = request ->> 'address'
    for update;
  if not found then
    -- Two first messages from one number at once: one insert wins, the other waits on it and
    -- then locks the row it made.
    insert into public.user_sessions (
        phone_number, assigned_persona, first_contact_at, last_active_at, metadata)
      values (
        request ->> 'address', v_settings ->> 'persona', v_now, v_now,
        pg_catalog.jsonb_build_object(
          'session_number', 1,
          'last_session_started_at', coalesce((request ->> 'received_at')::timestamptz, v_now)))
      on conflict (phone_number) do nothing
      returning * into v_s;
    if not found then
      select * into v_s from public.user_sessions
        where phone_number = request ->> 'address'
        for update;
    end if;
  end if;

  if request ->> 'external_id' is not null then
    select id into v_inbound_id from public.inbound_messages
      where session_id = v_s.id and external_id = request ->> 'external_id';
    if found then
      return pg_catalog.jsonb_build_object(
        'outcome', 'duplicate', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
    end if;
  end if;

  -- STOP and START change the opt-out here, after the duplicate check and with the message, so
  -- that a replayed keyword changes nothing and a turn started or queued for the message
  -- already reads the change.
  if request ->> 'opt_out' is not null then
    update public.user_sessions
      set opted_out_at = case
        when (request ->> 'opt_out')::boolean then coalesce(opted_out_at, v_now)
        end
      where id = v_s.id;
  end if;

  -- A message that starts now (no turn in flight or stopped, none waiting) is stored as started:
  -- its row is written here and once more, in its page, by the commit.
  v_fresh := not coalesce((request ->> 'defer')::boolean, false)
    and v_s.lease_inbound_id is null
    and not exists (
      select 1 from public.inbound_messages where session_id = v_s.id and waiting);
  insert into public.inbound_messages (
      session_id, external_id, body, received_at, status, started_at, waiting)
    values (v_s.id, request ->> 'external_id', request ->> 'body',
      coalesce((request ->> 'received_at')::timestamptz, v_now),
      case when v_fresh then 'started' else 'queued' end,
      case when v_fresh then v_now end,
      not v_fresh)
    returning id into v_inbound_id;

  if v_s.lease_token is not null and v_s.lease_expires_at > v_now then
    return pg_catalog.jsonb_build_object(
      'outcome', 'queued', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
  end if;

  if coalesce((request ->> 'defer')::boolean, false) then
    return pg_catalog.jsonb_build_object(
      'outcome', 'waiting', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
  end if;

  return pg_catalog.jsonb_build_object(
    'outcome', 'started',
    'turn', public.soul_start_next(
      v_s.id, v_settings, v_now, v_s.version = 0, case when v_fresh then v_inbound_id end));
end
$$;

-- Begins the turn of a due event: one call per claimed event. Completes (deletes) the event in
-- the same transaction that queues its turn, which is what makes firing idempotent: after it the
-- event exists only as a queue row, run by the lease exactly like a message. Returns {outcome:
-- duplicate | gone | opted_out | queued | started}.
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

-- Commits a turn: applies the change set, stores the replies as messages and as pending outbound
-- messages claimed for the committing sender (`settings.reply_claim_ms`, the gateway's
-- OUTBOX_RETRY_AFTER, so that a turn's first send asks nothing more), finishes the inbound
-- message and starts the next waiting one, or releases the lease.
--
-- It also answers what sending the replies needs to know, from the row it holds locked: whether
-- the person opted out, and whether replies of earlier commits were still pending (then the
-- sender asks `soul_claim_session_outbox` for them first); almost always the answer is "no" to
-- both, and asking cost a round trip per reply.
--
-- With nothing waiting (nearly every commit) it counts the replies and releases the lease in
-- one update of the session row, where handing over to `soul_start_next` would update it twice:
-- each update is a new version of the row and a WAL record.
create function public.soul_commit_turn(request jsonb)
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

  update public.inbound_messages set status = 'done', finished_at = v_now
    where id = v_s.lease_inbound_id;

  if not exists (
    select 1 from public.inbound_messages where session_id = v_session and waiting
  ) then
    -- What `soul_start_next` does when nothing waits, in the same update as the count.
    update public.user_sessions
      set total_messages = total_messages + v_replies, last_active_at = v_now,
        lease_token = null, lease_expires_at = null, lease_inbound_id = null
      where id = v_session;
    return pg_catalog.jsonb_build_object('outcome', 'committed', 'next', null,
      'opted_out', v_s.opted_out_at is not null, 'earlier_pending', v_earlier_pending);
  end if;

  update public.user_sessions
    set total_messages = total_messages + v_replies, last_active_at = v_now
    where id = v_session;
  return pg_catalog.jsonb_build_object(
    'outcome', 'committed',
    'next', public.soul_start_next(v_session, request -> 'settings', v_now, false),
    'opted_out', v_s.opted_out_at is not null, 'earlier_pending', v_earlier_pending);
end
$$;

-- Commits subprocess changes, only while no newer turn has begun.
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

-- Extends a running turn's lease; refused once another worker has taken the session over.
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

-- Takes over a session whose lease is free or expired and runs its oldest waiting message.
--
-- It commits without waiting for the disk (`synchronous_commit = off`, for its own transaction
-- only). It starts a turn for messages already stored, each acknowledged only once its own
-- insert was on disk; if the server crashes before the flush, the resume is lost as a whole,
-- the messages are still queued and the turn is started again, as after a worker's crash; a
-- worker that outlived the crash holds a lease the server no longer knows, so its commit is
-- refused and it sends nothing. Any later commit that waits (the turn's commit, whose replies go
-- out only once it is on disk) flushes the resume with it. A begin still waits: it stores the
-- message its caller may acknowledge.
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
  -- Local to this transaction: it outlasts the function, unlike the search_path above.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  return pg_catalog.jsonb_build_object(
    'outcome', 'started',
    'turn', public.soul_start_next(v_s.id, request -> 'settings', v_now, v_s.version = 0));
end
$$;

-- Sessions with waiting messages, or a stopped turn, and no live lease: work a crashed worker
-- left behind, or an enqueued message nobody resumed.
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
          and (s.lease_inbound_id is not null or exists (
            select 1 from public.inbound_messages i where i.session_id = s.id and i.waiting))
        order by s.last_active_at
        limit (request ->> 'limit')::bigint
    ) t
$$;

-- Delivery updates, many in one call (the marks the gateway received while the previous ones were
-- being stored): each applied in order, forward only, by our id or the provider's; the answer
-- says, per update, whether it moved a status.
--
-- It commits without waiting for the disk (`synchronous_commit = off`, for its own transaction
-- only): what it records Twilio already holds. If the server crashes before the flush, a reply
-- reads as still pending, and the outbox's exactly-once path, which already covers a crash
-- between Twilio's answer and this update, finds it in Twilio's list of sent messages and
-- records it instead of sending it again; a lost callback status leaves the reply at the
-- previous one. Opt-outs (soul_set_opt_out, soul_begin_turn) still wait.
create function public.soul_update_deliveries(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_update jsonb;
  v_applied jsonb := '[]'::jsonb;
begin
  -- Local to this transaction: it outlasts the function, unlike the search_path above.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  for v_update in
    select e from pg_catalog.jsonb_array_elements(request -> 'updates') with ordinality as x(e, n)
      order by n
  loop
    update public.outbound_messages
      set status = v_update ->> 'status',
        provider_id = coalesce(v_update ->> 'provider_id', provider_id),
        error = coalesce(v_update ->> 'error', error),
        updated_at = (v_update ->> 'now')::timestamptz
      where (id = (v_update ->> 'id')::uuid
          or (v_update ->> 'id' is null and provider_id = v_update ->> 'provider_id'))
        and public.soul_delivery_rank(status) < public.soul_delivery_rank(v_update ->> 'status');
    v_applied := v_applied || pg_catalog.to_jsonb(found);
  end loop;
  return pg_catalog.jsonb_build_object('applied', v_applied);
end
$$;

-- Claims for the caller, until `claim_until`, up to `limit` pending replies whose claim expired
-- by `now`, oldest first (each session's in commit order), and returns them with their address:
-- replies whose sender died or gave up, for a sweeper to send again. A reply another caller is
-- claiming at the same moment is skipped, not waited for; one it claimed meanwhile fails the
-- claim's test when it is locked. So two sweepers get disjoint sets.
create function public.soul_claim_pending_deliveries(request jsonb)
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
    select o.id from public.outbound_messages o
      where o.status = 'pending' and (o.claimed_until is null or o.claimed_until <= v_now)
      order by o.seq
      limit (request ->> 'limit')::bigint
      for update skip locked
  ), claimed as (
    update public.outbound_messages o
      set claimed_until = (request ->> 'claim_until')::timestamptz
      from due
      where o.id = due.id
      returning o
  )
  select coalesce(pg_catalog.jsonb_agg(public.soul_outbound_json(c.o, s.phone_number)
      order by (c.o).seq), '[]'::jsonb)
    into v_result
    from claimed c
    join public.user_sessions s on s.id = (c.o).session_id;
  return v_result;
end
$$;

-- What a sender asks before sending the reply `through` when earlier replies of its session may
-- still be pending: whether the person opted out, and the session's replies pending up to and
-- including `through`, oldest first; those of them whose claim expired by `now` are claimed for
-- the caller until `claim_until`, and named in `claimed` (the sender sends those it holds and
-- waits for the others). A reply being claimed or marked by another transaction is waited for
-- and then tested again, so a claim taken or a status moved meanwhile counts. Null for an
-- unknown session.
create function public.soul_claim_session_outbox(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_session uuid := (request ->> 'session_id')::uuid;
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_s public.user_sessions;
  v_through bigint;
  v_claimed jsonb;
begin
  select * into v_s from public.user_sessions where id = v_session;
  if not found then
    return null;
  end if;
  select o.seq into v_through from public.outbound_messages o
    where o.id = (request ->> 'through')::uuid;

  with claimed as (
    update public.outbound_messages o
      set claimed_until = (request ->> 'claim_until')::timestamptz
      where o.session_id = v_session and o.status = 'pending' and o.seq <= v_through
        and (o.claimed_until is null or o.claimed_until <= v_now)
      returning o.id
  )
  select coalesce(pg_catalog.jsonb_agg(c.id), '[]'::jsonb) into v_claimed from claimed c;

  return pg_catalog.jsonb_build_object(
    'opted_out', v_s.opted_out_at is not null,
    'claimed', v_claimed,
    'pending', coalesce((
      select pg_catalog.jsonb_agg(public.soul_outbound_json(o, v_s.phone_number) order by o.seq)
        from public.outbound_messages o
        where o.session_id = v_session and o.status = 'pending' and o.seq <= v_through),
      '[]'::jsonb));
end
$$;

-- Sets or clears the opt-out (the first opt-out time is kept).
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

-- Completes (deletes) a claimed event, unless it was rescheduled meanwhile.
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

-- A session by address, or null.
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

-- Retention: deletes messages older than `before`, for one address or everyone.
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

-- Erases one person: every table cascades from user_sessions.
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
