-- A turn that begins a new session (the session timeout) is told what the timeout cleared —
-- every process memory, the process state and the working-memory snapshot — so that its record
-- holds it and a rewind or a re-run can go back across the new session. `soul_start_next` is
-- restated in full for it (`create or replace` keeps its grants); nothing else changes.

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
