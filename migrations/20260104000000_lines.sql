-- Several souls on one gateway: a conversation is a person's number and the line they texted
-- (the gateway's number or messaging service, `line`; empty for the gateway's default line, which
-- is what every conversation stored before lines existed is on). A person texting two lines has
-- two conversations, each with its own soul, memories and opt-out, as Twilio keeps a STOP per
-- sender number too. The soul a conversation runs is the one assigned at its first contact
-- (`assigned_persona`, chosen by the caller and sent with the first message); a turn's settings
-- carry every deployed soul's processes (`souls`), and the turn started for a conversation is
-- validated against its own soul's. Restates the functions that find a conversation by number
-- or start its turns, and those that read a session or a reply, which now name the line.

alter table public.user_sessions add column line text not null default '';
alter table public.user_sessions drop constraint user_sessions_phone_number_key;
alter table public.user_sessions
  add constraint user_sessions_phone_number_line_key unique (phone_number, line);

-- A session as the stores read it, with its line.
create or replace function public.soul_session_json(s public.user_sessions)
returns jsonb
language sql
stable
security invoker
as $$
  select pg_catalog.jsonb_build_object(
    'id', s.id,
    'address', s.phone_number,
    'line', s.line,
    'persona', s.assigned_persona,
    'first_contact_at', s.first_contact_at,
    'last_active_at', s.last_active_at,
    'total_messages', s.total_messages,
    'metadata', s.metadata,
    'opted_out', s.opted_out_at is not null,
    'version', s.version
  )
$$;

-- A reply as the stores read it, with the line it goes out from.
create or replace function public.soul_outbound_json(o public.outbound_messages, p_address text)
returns jsonb
language sql
stable
security invoker
as $$
  select pg_catalog.jsonb_build_object(
    'id', o.id, 'session_id', o.session_id, 'address', p_address, 'body', o.body,
    'status', o.status, 'provider_id', o.provider_id, 'created_at', o.created_at,
    -- The line a reply goes out from: its conversation's, by the primary key.
    'line', (select s.line from public.user_sessions s where s.id = o.session_id))
$$;

-- Stores an inbound message in the conversation of its number on its line, created at the first
-- contact with the persona the request assigns (the settings' persona when it names none), and
-- starts its turn as before.
create or replace function public.soul_begin_turn(request jsonb)
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
  v_line text := coalesce(request ->> 'line', '');
begin
  -- Every later step holds the session row lock.
  select * into v_s from public.user_sessions
    where phone_number = request ->> 'address' and line = v_line
    for update;
  if not found then
    -- Two first messages from one number at once: one insert wins, the other waits on it and
    -- then locks the row it made.
    insert into public.user_sessions (
        phone_number, line, assigned_persona, first_contact_at, last_active_at, metadata)
      values (
        request ->> 'address', v_line,
        coalesce(request ->> 'persona', v_settings ->> 'persona'), v_now, v_now,
        pg_catalog.jsonb_build_object(
          'session_number', 1,
          'last_session_started_at', coalesce((request ->> 'received_at')::timestamptz, v_now)))
      on conflict (phone_number, line) do nothing
      returning * into v_s;
    if not found then
      select * into v_s from public.user_sessions
        where phone_number = request ->> 'address' and line = v_line
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

-- Starts a conversation's next turn as before, validating its process state against the
-- processes of the conversation's own soul. A turn that begins a new session (the session
-- timeout) is told what the timeout cleared — every process memory, the process state and the
-- snapshot — so that its record holds it and a rewind or a re-run can go back across it.
create or replace function public.soul_start_next(
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
  v_pending bigint := coalesce((p_settings ->> 'pending_limit')::bigint, 20);
  v_history jsonb := '[]'::jsonb;
  v_snapshot jsonb;
  v_cleared jsonb;
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
  -- The conversation's own soul: its processes and subprocesses replace the default soul's. A
  -- soul no longer deployed has none here, so its conversation goes on in the default soul,
  -- from its initial process (the stored one is corrected below, and the caller warned).
  p_settings := p_settings || coalesce(p_settings -> 'souls' -> v_s.assigned_persona, '{}'::jsonb);
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
      -- What the timeout clears, for the turn's record: undoing the turn restores it, so a
      -- rewind can go back across the new session (docs/persistence.md, "The turn log").
      select pg_catalog.jsonb_build_object(
          'pm', (
            select coalesce(pg_catalog.jsonb_object_agg(p.process_name, p.memory), '{}'::jsonb)
              from (select m.process_name, pg_catalog.jsonb_object_agg(m.key, m.value) as memory
                      from public.process_memories m where m.session_id = p_session
                      group by m.process_name) p),
          'p', (
            select pg_catalog.jsonb_build_object('name', p.process_name, 'params', p.params,
                'invocation_count', p.invocation_count, 'previous', p.previous_process)
              from public.mental_process_state p where p.session_id = p_session),
          'wm', (
            select w.snapshot from public.working_memory_snapshots w
              where w.session_id = p_session))
        into v_cleared;
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
    'cleared', v_cleared,
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
    'snapshot', v_snapshot,
    'pending_events', (
      select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
          'id', e.id, 'key', e.key, 'kind', e.kind, 'payload', e.payload, 'due_at', e.due_at)
          order by e.due_at, e.key), '[]'::jsonb)
        from (
          select id, key, kind, payload, due_at from public.scheduled_events
            where session_id = p_session
            order by due_at, key
            limit v_pending
        ) e),
    -- As `inbound` above, each.
    'waiting', (
      select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
          'id', w.id, 'external_id', w.external_id, 'body', w.body,
          'received_at', w.received_at,
          'kind', case when w.kind = 'event'
            then w.event || pg_catalog.jsonb_build_object('type', 'event')
            else pg_catalog.jsonb_build_object('type', 'message') end)
          order by w.seq), '[]'::jsonb)
        from (
          select id, seq, external_id, body, received_at, kind, event
            from public.inbound_messages
            where session_id = p_session and waiting
            order by seq
            limit v_pending
        ) w)
  );
end
$$;

-- The conversation of a number on a line (the default line unless named), or null.
create or replace function public.soul_session(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select public.soul_session_json(s)
    from public.user_sessions s
    where s.phone_number = request ->> 'address' and s.line = coalesce(request ->> 'line', '')
$$;

-- The history of a number's conversation on the default line.
create or replace function public.soul_history(request jsonb)
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
        where s.phone_number = request ->> 'address' and s.line = ''
          and (request ->> 'region' is null or m.region = request ->> 'region')
        order by m.seq desc
        limit case when (request ->> 'limit')::bigint > 0 then (request ->> 'limit')::bigint end
    ) h
$$;

-- Everything stored about one person: one entry per conversation (per line), ordered by line,
-- each as before; null when the number is unknown.
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
  ) order by s.line)
  from public.user_sessions s
  where s.phone_number = request ->> 'address'
  having pg_catalog.count(*) > 0
$$;

-- Erases one person: every conversation of the number, on every line. Refused while a turn of
-- any of them runs. Each conversation the person opted out of keeps its opt-out row (number,
-- line, the time they opted out, the persona the columns require), under a new id and at
-- version 0, as before.
create or replace function public.soul_erase_user(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_sessions public.user_sessions[];
  v_s public.user_sessions;
  v_kept boolean := false;
begin
  perform 1 from public.user_sessions
    where phone_number = request ->> 'address'
    for update;
  select pg_catalog.array_agg(u order by u.line) into v_sessions
    from public.user_sessions u
    where u.phone_number = request ->> 'address';
  if v_sessions is null then
    return pg_catalog.jsonb_build_object('outcome', 'unknown');
  end if;
  foreach v_s in array v_sessions loop
    if v_s.lease_token is not null
      and v_s.lease_expires_at > (request ->> 'now')::timestamptz then
      return pg_catalog.jsonb_build_object(
        'outcome', 'turn_running', 'lease_expires_at', v_s.lease_expires_at);
    end if;
  end loop;
  delete from public.user_sessions where phone_number = request ->> 'address';
  foreach v_s in array v_sessions loop
    if v_s.opted_out_at is not null then
      insert into public.user_sessions (
          phone_number, line, assigned_persona, first_contact_at, last_active_at, opted_out_at)
        values (v_s.phone_number, v_s.line, v_s.assigned_persona, v_s.opted_out_at,
          v_s.opted_out_at, v_s.opted_out_at);
      v_kept := true;
    end if;
  end loop;
  return pg_catalog.jsonb_build_object('outcome', 'erased', 'opt_out_kept', v_kept);
end
$$;
