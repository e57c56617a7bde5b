-- The seed's tables and keys, plus what the turn contract needs: the turn lease and session
-- version (on user_sessions), the inbound queue, the outbound delivery log, scheduled events and
-- the opt-out flag. See docs/persistence.md.

create table public.user_sessions (
  id uuid primary key default gen_random_uuid(),
  phone_number text not null unique,
  assigned_persona text not null,
  first_contact_at timestamptz not null default now(),
  last_active_at timestamptz not null default now(),
  total_messages bigint not null default 0,
  -- `session_number` and `last_session_started_at`, as the seed keeps them.
  metadata jsonb not null default '{}'::jsonb,
  -- Bumped whenever a turn starts; subprocess commits are refused when it moved on.
  version bigint not null default 0,
  -- The turn lease: whoever holds an unexpired token runs this number's turns.
  lease_token uuid,
  lease_expires_at timestamptz,
  lease_inbound_id uuid,
  opted_out_at timestamptz
);

create table public.messages (
  id uuid primary key default gen_random_uuid(),
  -- Insertion order: the conversation's order, independent of the writers' clocks.
  seq bigint generated always as identity,
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  message_sid text,
  role text not null check (role in ('system', 'user', 'assistant')),
  content text not null,
  region text not null default 'default',
  name text,
  metadata jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now()
);

create index idx_messages_session on public.messages (session_id, seq);
create index idx_messages_session_region on public.messages (session_id, region, seq);
create index idx_messages_session_role_created on public.messages (session_id, role, created_at);
create index idx_messages_created on public.messages (created_at);

create table public.soul_memories (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  key text not null,
  value jsonb not null,
  updated_at timestamptz not null default now(),
  unique (session_id, key)
);

create index idx_soul_memories_session on public.soul_memories (session_id);

create table public.process_memories (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  process_name text not null,
  key text not null,
  value jsonb not null,
  updated_at timestamptz not null default now(),
  unique (session_id, process_name, key)
);

create index idx_process_memories_session on public.process_memories (session_id);
create index idx_process_memories_process on public.process_memories (session_id, process_name);

create table public.mental_process_state (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null unique references public.user_sessions (id) on delete cascade,
  process_name text not null,
  params jsonb not null default '{}'::jsonb,
  -- The engine's bookkeeping: runs since the process was entered, and the process before it.
  invocation_count bigint not null default 0,
  previous_process text,
  updated_at timestamptz not null default now()
);

create table public.working_memory_snapshots (
  id uuid primary key default gen_random_uuid(),
  seq bigint generated always as identity,
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  snapshot jsonb not null,
  created_at timestamptz not null default now()
);

create index idx_working_memory_snapshots_session on public.working_memory_snapshots (session_id, seq);

-- Every inbound message, stored before the webhook is answered. `queued` waits for the lease,
-- `started` is the turn in flight (re-run if its worker dies), `done` is committed. A started
-- message is also in `messages`, as the user message with the same id. A due scheduled event runs
-- its turn through this queue too (kind `event`), sharing the lease, the per-session order and
-- takeover; it is not a message from the person, so it is not stored in the conversation, not
-- counted and not seen by the session timeout. See docs/persistence.md ("Event turns").
create table public.inbound_messages (
  id uuid primary key default gen_random_uuid(),
  seq bigint generated always as identity,
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  external_id text,
  body text not null,
  received_at timestamptz not null,
  status text not null default 'queued' check (status in ('queued', 'started', 'done')),
  started_at timestamptz,
  finished_at timestamptz,
  kind text not null default 'message' check (kind in ('message', 'event')),
  -- For an event: {event_id, key, kind, payload}, copied from the completed scheduled event.
  event jsonb,
  unique (session_id, external_id),
  constraint inbound_messages_event_matches_kind check ((kind = 'event') = (event is not null))
);

create index idx_inbound_messages_pending on public.inbound_messages (session_id, seq)
  where status <> 'done';

-- Replies, written by the commit that produced them, then moved forward by delivery updates.
create table public.outbound_messages (
  id uuid primary key,
  seq bigint generated always as identity,
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  body text not null,
  status text not null default 'pending'
    check (status in ('pending', 'accepted', 'sent', 'delivered', 'undelivered', 'failed')),
  provider_id text unique,
  error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index idx_outbound_messages_session on public.outbound_messages (session_id, seq);
create index idx_outbound_messages_pending on public.outbound_messages (created_at)
  where status = 'pending';

create table public.scheduled_events (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  key text not null,
  kind text not null,
  payload jsonb not null default '{}'::jsonb,
  due_at timestamptz not null,
  claimed_until timestamptz,
  created_at timestamptz not null default now(),
  unique (session_id, key)
);

create index idx_scheduled_events_due on public.scheduled_events (due_at);

-- Only the service role reads or writes: row-level security on, no policy for anyone, and no
-- table privileges for the roles PostgREST uses without the service key (Supabase grants them by
-- default; taking them back is the second lock on the same door).
do $$
declare
  t text;
begin
  foreach t in array array[
    'user_sessions', 'messages', 'soul_memories', 'process_memories', 'mental_process_state',
    'working_memory_snapshots', 'inbound_messages', 'outbound_messages', 'scheduled_events'
  ] loop
    execute pg_catalog.format('alter table public.%I enable row level security', t);
    execute pg_catalog.format('revoke all on table public.%I from public, anon, authenticated', t);
    execute pg_catalog.format('grant all on table public.%I to service_role', t);
  end loop;
end
$$;
