-- The PostgreSQL schema that migrations/ make, read back from the catalog of a freshly migrated
-- database: roles, extensions, types, tables (columns, constraints, options, row-level security,
-- policies, indexes, triggers and grants, table by table) and functions with their grants.
-- Owners are left out (whoever ran the migrations), and so are privileges some server versions
-- add (MAINTAIN, PostgreSQL 17). Nothing applies this file: migrations/ are the source, and
-- crates/persistence/tests/schema.rs fails when this file is not what they make, saying how to
-- regenerate it.

create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;

create domain public.soul_inbound_kind as text
  constraint soul_inbound_kind_check CHECK ((VALUE = ANY (ARRAY['message'::text, 'event'::text])));

create domain public.soul_inbound_status as text
  constraint soul_inbound_status_check CHECK ((VALUE = ANY (ARRAY['queued'::text, 'started'::text, 'done'::text])));

create domain public.soul_message_role as text
  constraint soul_message_role_check CHECK ((VALUE = ANY (ARRAY['system'::text, 'user'::text, 'assistant'::text])));

create domain public.soul_outbound_status as text
  constraint soul_outbound_status_check CHECK ((VALUE = ANY (ARRAY['pending'::text, 'accepted'::text, 'sent'::text, 'delivered'::text, 'undelivered'::text, 'failed'::text])));

create table public.inbound_messages (
  id uuid not null default gen_random_uuid(),
  seq bigint not null generated always as identity,
  session_id uuid not null,
  external_id text,
  body text not null,
  received_at timestamp with time zone not null,
  status public.soul_inbound_status not null default 'queued'::text,
  waiting boolean not null default true,
  attempts integer not null default 1,
  started_at timestamp with time zone,
  finished_at timestamp with time zone,
  kind public.soul_inbound_kind not null default 'message'::text,
  event jsonb,
  turn integer,
  rewound boolean not null default false,
  record json,
  constraint inbound_messages_pkey PRIMARY KEY (id),
  constraint inbound_messages_session_id_external_id_key UNIQUE (session_id, external_id),
  constraint inbound_messages_event_matches_kind CHECK ((((kind)::text = 'event'::text) = (event IS NOT NULL))),
  constraint inbound_messages_waiting_is_queued CHECK ((waiting = ((status)::text = 'queued'::text))),
  constraint inbound_messages_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.user_sessions(id) ON DELETE CASCADE
);
alter table public.inbound_messages enable row level security;
CREATE INDEX idx_inbound_messages_received ON public.inbound_messages USING brin (received_at);
CREATE INDEX idx_inbound_messages_waiting ON public.inbound_messages USING btree (session_id, seq) WHERE waiting;
grant delete, insert, references, select, trigger, truncate, update on table public.inbound_messages to service_role;

create table public.inspector_audit (
  id uuid not null,
  at timestamp with time zone not null,
  actor text not null,
  action text not null,
  session_id uuid not null,
  constraint inspector_audit_pkey PRIMARY KEY (id),
  constraint inspector_audit_action_check CHECK ((action = ANY (ARRAY['reveal'::text, 'export'::text, 'erase'::text, 'rewind'::text, 'rerun'::text])))
);
alter table public.inspector_audit enable row level security;
CREATE INDEX idx_inspector_audit_at ON public.inspector_audit USING btree (at);
grant delete, insert, references, select, trigger, truncate, update on table public.inspector_audit to service_role;

create table public.mental_process_state (
  id uuid not null default gen_random_uuid(),
  session_id uuid not null,
  process_name text not null,
  params jsonb not null default '{}'::jsonb,
  invocation_count bigint not null default 0,
  previous_process text,
  updated_at timestamp with time zone not null default now(),
  constraint mental_process_state_pkey PRIMARY KEY (id),
  constraint mental_process_state_session_id_key UNIQUE (session_id),
  constraint mental_process_state_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.user_sessions(id) ON DELETE CASCADE
);
alter table public.mental_process_state enable row level security;
grant delete, insert, references, select, trigger, truncate, update on table public.mental_process_state to service_role;

create table public.messages (
  id uuid not null default gen_random_uuid(),
  seq bigint not null generated always as identity,
  session_id uuid not null,
  message_sid text,
  role public.soul_message_role not null,
  content text not null,
  region text not null default 'default'::text,
  name text,
  metadata jsonb not null default '{}'::jsonb,
  created_at timestamp with time zone not null default now(),
  constraint messages_pkey PRIMARY KEY (id),
  constraint messages_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.user_sessions(id) ON DELETE CASCADE
);
alter table public.messages enable row level security;
CREATE INDEX idx_messages_created ON public.messages USING brin (created_at);
CREATE INDEX idx_messages_session ON public.messages USING btree (session_id, seq);
grant delete, insert, references, select, trigger, truncate, update on table public.messages to service_role;

create table public.outbound_messages (
  id uuid not null,
  seq bigint not null generated always as identity,
  session_id uuid not null,
  body text not null,
  status public.soul_outbound_status not null default 'pending'::text,
  claimed_until timestamp with time zone,
  provider_id text,
  error text,
  created_at timestamp with time zone not null default now(),
  updated_at timestamp with time zone not null default now(),
  constraint outbound_messages_pkey PRIMARY KEY (id),
  constraint outbound_messages_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.user_sessions(id) ON DELETE CASCADE
);
alter table public.outbound_messages enable row level security;
CREATE INDEX idx_outbound_messages_created ON public.outbound_messages USING brin (created_at);
CREATE INDEX idx_outbound_messages_pending ON public.outbound_messages USING btree (session_id, seq) WHERE ((status)::text = 'pending'::text);
CREATE INDEX idx_outbound_messages_session ON public.outbound_messages USING btree (session_id, seq);
CREATE UNIQUE INDEX outbound_messages_provider_id_key ON public.outbound_messages USING btree (provider_id) WHERE (provider_id IS NOT NULL);
grant delete, insert, references, select, trigger, truncate, update on table public.outbound_messages to service_role;

create table public.process_memories (
  id uuid not null default gen_random_uuid(),
  session_id uuid not null,
  process_name text not null,
  key text not null,
  value jsonb not null,
  updated_at timestamp with time zone not null default now(),
  constraint process_memories_pkey PRIMARY KEY (id),
  constraint process_memories_session_id_process_name_key_key UNIQUE (session_id, process_name, key),
  constraint process_memories_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.user_sessions(id) ON DELETE CASCADE
);
alter table public.process_memories enable row level security;
grant delete, insert, references, select, trigger, truncate, update on table public.process_memories to service_role;

create table public.scheduled_events (
  id uuid not null default gen_random_uuid(),
  session_id uuid not null,
  key text not null,
  kind text not null,
  payload jsonb not null default '{}'::jsonb,
  due_at timestamp with time zone not null,
  claimed_until timestamp with time zone,
  created_at timestamp with time zone not null default now(),
  constraint scheduled_events_pkey PRIMARY KEY (id),
  constraint scheduled_events_session_id_key_key UNIQUE (session_id, key),
  constraint scheduled_events_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.user_sessions(id) ON DELETE CASCADE
);
alter table public.scheduled_events enable row level security;
CREATE INDEX idx_scheduled_events_due ON public.scheduled_events USING btree (due_at);
grant delete, insert, references, select, trigger, truncate, update on table public.scheduled_events to service_role;

create table public.soul_memories (
  id uuid not null default gen_random_uuid(),
  session_id uuid not null,
  key text not null,
  value jsonb not null,
  updated_at timestamp with time zone not null default now(),
  constraint soul_memories_pkey PRIMARY KEY (id),
  constraint soul_memories_session_id_key_key UNIQUE (session_id, key),
  constraint soul_memories_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.user_sessions(id) ON DELETE CASCADE
);
alter table public.soul_memories enable row level security;
grant delete, insert, references, select, trigger, truncate, update on table public.soul_memories to service_role;

create table public.user_sessions (
  id uuid not null default gen_random_uuid(),
  phone_number text not null,
  assigned_persona text not null,
  first_contact_at timestamp with time zone not null default now(),
  last_active_at timestamp with time zone not null default now(),
  total_messages bigint not null default 0,
  metadata jsonb not null default '{}'::jsonb,
  version bigint not null default 0,
  lease_token uuid,
  lease_expires_at timestamp with time zone,
  lease_inbound_id uuid,
  opted_out_at timestamp with time zone,
  line text not null default ''::text,
  turns integer not null default 0,
  constraint user_sessions_pkey PRIMARY KEY (id),
  constraint user_sessions_phone_number_line_key UNIQUE (phone_number, line)
);
alter table public.user_sessions enable row level security;
grant delete, insert, references, select, trigger, truncate, update on table public.user_sessions to service_role;

create table public.working_memory_snapshots (
  id uuid not null default gen_random_uuid(),
  seq bigint not null generated always as identity,
  session_id uuid not null,
  snapshot jsonb compression lz4 not null,
  created_at timestamp with time zone not null default now(),
  constraint working_memory_snapshots_pkey PRIMARY KEY (id),
  constraint working_memory_snapshots_session_id_key UNIQUE (session_id),
  constraint working_memory_snapshots_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.user_sessions(id) ON DELETE CASCADE
) with (fillfactor=50);
alter table public.working_memory_snapshots enable row level security;
grant delete, insert, references, select, trigger, truncate, update on table public.working_memory_snapshots to service_role;

CREATE OR REPLACE FUNCTION public.soul_apply_changes(p_session uuid, p_changes jsonb, p_settings jsonb, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_apply_changes(uuid,jsonb,jsonb,timestamp with time zone) to service_role;

CREATE OR REPLACE FUNCTION public.soul_begin_event_turn(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_begin_event_turn(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_begin_turn(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_begin_turn(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_claim_due_events(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_claim_due_events(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_claim_pending_deliveries(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_claim_pending_deliveries(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_claim_session_outbox(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_claim_session_outbox(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_commit_subprocess(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_commit_subprocess(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_commit_turn(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_commit_turn(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_complete_event(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  -- Matching due_at too: a turn that rescheduled the same key meanwhile keeps its new event.
  delete from public.scheduled_events
    where id = (request ->> 'id')::uuid and due_at = (request ->> 'due_at')::timestamptz;
  return pg_catalog.jsonb_build_object('found', found);
end
$function$;
grant execute on function public.soul_complete_event(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_delete_old_messages(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_delete_old_messages(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_delivery_rank(p_status text)
 RETURNS integer
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select case p_status
    when 'pending' then 0
    when 'accepted' then 1
    when 'sent' then 2
    else 3
  end
$function$;
grant execute on function public.soul_delivery_rank(text) to service_role;

CREATE OR REPLACE FUNCTION public.soul_erase_user(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_erase_user(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_export_user(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_export_user(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_history(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_history(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_inspect_audit_log(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'at', a.at, 'actor', a.actor, 'action', a.action, 'session', a.session_id)
      order by a.at desc, a.id desc), '[]'::jsonb)
  from (select * from public.inspector_audit order by at desc, id desc
        limit (request ->> 'limit')::integer) a
$function$;
grant execute on function public.soul_inspect_audit_log(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_inspect_conversations(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_inspect_conversations(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_inspect_record_audit(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 SET search_path TO ''
AS $function$
  insert into public.inspector_audit (id, at, actor, action, session_id)
  values (pg_catalog.gen_random_uuid(), (request ->> 'at')::timestamptz, request ->> 'actor',
          request ->> 'action', (request ->> 'session')::uuid);
  select 'null'::jsonb
$function$;
grant execute on function public.soul_inspect_record_audit(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_message_json(m public.messages)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select pg_catalog.jsonb_build_object(
    'id', m.id,
    'role', m.role,
    'content', m.content,
    'name', m.name,
    'region', nullif(m.region, 'default'),
    'metadata', m.metadata,
    'timestamp', m.created_at
  )
$function$;
grant execute on function public.soul_message_json(public.messages) to service_role;

CREATE OR REPLACE FUNCTION public.soul_ms(p_value jsonb)
 RETURNS interval
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select pg_catalog.make_interval(secs => coalesce((p_value #>> '{}')::double precision, 0) / 1000)
$function$;
grant execute on function public.soul_ms(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_outbound_json(o public.outbound_messages, p_address text)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select pg_catalog.jsonb_build_object(
    'id', o.id, 'session_id', o.session_id, 'address', p_address, 'body', o.body,
    'status', o.status, 'provider_id', o.provider_id, 'created_at', o.created_at,
    -- The line a reply goes out from: its conversation's, by the primary key.
    'line', (select s.line from public.user_sessions s where s.id = o.session_id))
$function$;
grant execute on function public.soul_outbound_json(public.outbound_messages,text) to service_role;

CREATE OR REPLACE FUNCTION public.soul_renew_lease(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_renew_lease(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_restore_session(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_restore_session(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_resume_turn(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_resume_turn(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_session(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  select public.soul_session_json(s)
    from public.user_sessions s
    where s.phone_number = request ->> 'address' and s.line = coalesce(request ->> 'line', '')
$function$;
grant execute on function public.soul_session(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_session_json(s public.user_sessions)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
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
$function$;
grant execute on function public.soul_session_json(public.user_sessions) to service_role;

CREATE OR REPLACE FUNCTION public.soul_session_number(p_metadata jsonb)
 RETURNS bigint
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select case
    when pg_catalog.jsonb_typeof(p_metadata -> 'session_number') = 'number'
      and (p_metadata ->> 'session_number')::numeric >= 1
      then pg_catalog.floor((p_metadata ->> 'session_number')::numeric)::bigint
    when pg_catalog.jsonb_typeof(p_metadata -> 'session_number') = 'string'
      and (p_metadata ->> 'session_number') ~ '^[0-9]{1,18}$'
      then greatest((p_metadata ->> 'session_number')::bigint, 1)
    else 1
  end
$function$;
grant execute on function public.soul_session_number(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_session_state(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_session_state(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_set_opt_out(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  update public.user_sessions
    set opted_out_at = case
      when (request ->> 'opted_out')::boolean
        then coalesce(opted_out_at, (request ->> 'now')::timestamptz)
      end
    where phone_number = request ->> 'address';
  return pg_catalog.jsonb_build_object('found', found);
end
$function$;
grant execute on function public.soul_set_opt_out(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_stalled_sessions(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_stalled_sessions(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_start_next(p_session uuid, p_settings jsonb, p_now timestamp with time zone, p_new_session boolean, p_fresh uuid DEFAULT NULL::uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_start_next(uuid,jsonb,timestamp with time zone,boolean,uuid) to service_role;

CREATE OR REPLACE FUNCTION public.soul_turn_log(request jsonb)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_turn_log(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.soul_update_deliveries(request jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.soul_update_deliveries(jsonb) to service_role;
