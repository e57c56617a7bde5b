-- A reference turn wrote about 41 WAL records (pg_waldump over a run; docs/performance.md, "WAL
-- per turn"), each built, copied into the WAL buffers and flushed before the turn is answered,
-- and most of them were the queue's:
-- - A message that starts at once was inserted as queued and updated to started in the same
--   transaction. Now `soul_begin_turn` inserts it as started when no turn is in flight and none
--   waits, and `soul_start_next` takes it by id (`p_fresh`).
-- - Marking a message done could never be a heap-only update: the queue's index held the
--   messages not done, so its predicate named `status`, and each such update wrote a new version
--   with an entry in every index of the table. The queue's index now holds the messages waiting
--   for a turn, by a flag of their own (`waiting`, which a check ties to `queued`), and no index
--   names the status: a turn's message is marked done in its page. A turn in flight, or whose
--   worker stopped, is found through its session's lease (`lease_inbound_id`), as a resume always
--   found it first. Only a message that waited is updated out of its page, when it starts.
-- - `insert ... on conflict do update` locks the existing row before it updates it, a WAL record
--   of its own. The process state and the snapshot, one row per session after its first turn,
--   are now updated, and inserted only when missing (the insert keeps `on conflict` for a row a
--   concurrent writer inserted first).
--
-- Restated in full (a migration restates what it changes). `soul_start_next` gains a parameter,
-- so the old signature is dropped; callers with four arguments get the default.

-- The messages waiting for a turn, flagged apart from `status`, so that no index names the
-- status (see above). Added without a default first so that existing rows are not rewritten.
alter table public.inbound_messages add column waiting boolean not null default false;
update public.inbound_messages set waiting = true where status = 'queued';
alter table public.inbound_messages alter column waiting set default true;
alter table public.inbound_messages
  add constraint inbound_messages_waiting_is_queued check (waiting = (status = 'queued'));
drop index public.idx_inbound_messages_pending;
create index idx_inbound_messages_waiting on public.inbound_messages (session_id, seq)
  where waiting;

drop function public.soul_start_next(uuid, jsonb, timestamptz, boolean);

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

create or replace function public.soul_commit_turn(request jsonb)
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

  if not exists (
    select 1 from public.inbound_messages where session_id = v_session and waiting
  ) then
    -- What `soul_start_next` does when nothing waits, in the same update as the count.
    update public.user_sessions
      set total_messages = total_messages + v_replies, last_active_at = v_now,
        lease_token = null, lease_expires_at = null, lease_inbound_id = null
      where id = v_session;
    return pg_catalog.jsonb_build_object('outcome', 'committed', 'next', null);
  end if;

  update public.user_sessions
    set total_messages = total_messages + v_replies, last_active_at = v_now
    where id = v_session;
  return pg_catalog.jsonb_build_object(
    'outcome', 'committed',
    'next', public.soul_start_next(v_session, request -> 'settings', v_now, false));
end
$$;

create or replace function public.soul_stalled_sessions(request jsonb)
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

revoke all on function public.soul_start_next(uuid, jsonb, timestamptz, boolean, uuid)
  from public, anon, authenticated;
grant execute on function public.soul_start_next(uuid, jsonb, timestamptz, boolean, uuid)
  to service_role;
