-- The tables: the seed's (user_sessions, messages, the memories, the process state and the
-- working-memory snapshot), plus what the turn contract needs: the turn lease and the session
-- version (on user_sessions), the inbound queue, the outbound delivery log with its send claims,
-- scheduled events and the opt-out. Every table hangs off user_sessions with `on delete cascade`,
-- so erasing a person is one delete. The functions that read and write them are in
-- 20260101000200_functions.sql; docs/persistence.md describes the design, and
-- crates/persistence/schema/postgres.sql shows the schema these files make.
--
-- Shaped by measurement (docs/performance.md, "Why the SQL is shaped as it is"): every index
-- entry a turn inserts is written, logged and kept until vacuum, and every column an index names
-- keeps an update of it from being heap-only. So each index here answers a question a turn, the
-- sweeper or retention asks, and no other index answers it.

-- The one-column checks are domains over text. An insert or update of a table with CHECK
-- constraints reads each constraint's expression back from its stored text before testing it,
-- and a statement in a PL/pgSQL function is a new statement at every call: a turn paid that
-- about eleven times, some 8 % of PostgreSQL's instructions for it (callgrind). A domain's
-- constraints are read once per connection and kept. The values allowed and the error
-- (SQLSTATE 23514, check_violation) are the same as a table check's, and text goes into a domain
-- over text without a cast. The checks that compare two columns stay on their tables.
create domain public.soul_message_role as text
  constraint soul_message_role_check check (value in ('system', 'user', 'assistant'));
create domain public.soul_inbound_status as text
  constraint soul_inbound_status_check check (value in ('queued', 'started', 'done'));
create domain public.soul_inbound_kind as text
  constraint soul_inbound_kind_check check (value in ('message', 'event'));
create domain public.soul_outbound_status as text
  constraint soul_outbound_status_check check (
    value in ('pending', 'accepted', 'sent', 'delivered', 'undelivered', 'failed'));

-- One row per phone number: the seed's session, and the turn lease that serialises its turns.
create table public.user_sessions (
  id uuid primary key default gen_random_uuid(),
  phone_number text not null unique,
  assigned_persona text not null,
  first_contact_at timestamptz not null default now(),
  last_active_at timestamptz not null default now(),
  -- The conversation's length (user messages and replies), kept by the functions.
  total_messages bigint not null default 0,
  -- `session_number` and `last_session_started_at`, as the seed keeps them.
  metadata jsonb not null default '{}'::jsonb,
  -- Bumped whenever a turn starts; subprocess commits are refused when it moved on.
  version bigint not null default 0,
  -- The turn lease: whoever holds an unexpired token runs this number's turns. The message of
  -- the turn in flight (or whose worker stopped) is found through `lease_inbound_id`, so the
  -- queue's index needs to hold only the messages that wait.
  lease_token uuid,
  lease_expires_at timestamptz,
  lease_inbound_id uuid,
  opted_out_at timestamptz
);

-- The conversation: what the person said (stored when the turn starts, with the inbound
-- message's id) and what the soul replied or noted.
create table public.messages (
  id uuid primary key default gen_random_uuid(),
  -- Insertion order: the conversation's order, independent of the writers' clocks.
  seq bigint generated always as identity,
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  message_sid text,
  role public.soul_message_role not null,
  content text not null,
  region text not null default 'default',
  name text,
  metadata jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now()
);

-- The one index a turn reads messages by. It answers the history (newest first; one region's
-- history too, filtering as it goes: a turn loads every region unless a soul says otherwise) and
-- the session timeout's "newest user message", the newest by `seq`, read past the replies that
-- followed it. No index of user messages by time, and none per region.
create index idx_messages_session on public.messages (session_id, seq);
-- Retention deletes by age once in a while. Messages are appended in time order, so a block
-- range index (a few pages for the whole table, no entry per row) narrows that delete to the
-- old part of the table.
create index idx_messages_created on public.messages using brin (created_at);

-- Memories are looked up by their unique keys alone: no index repeats their leading columns.
create table public.soul_memories (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  key text not null,
  value jsonb not null,
  updated_at timestamptz not null default now(),
  unique (session_id, key)
);

create table public.process_memories (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  process_name text not null,
  key text not null,
  value jsonb not null,
  updated_at timestamptz not null default now(),
  unique (session_id, process_name, key)
);

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

-- One snapshot per session (only the latest is ever read), updated in place by every commit.
-- Deleting and inserting it again left a dead row of a kilobyte or more and two index entries
-- per turn, in space reused only after a vacuum. Its indexed columns never change, so the
-- update is heap-only (HOT): the new version goes into the same page and the next visitor of
-- that page reclaims the old one. A HOT update needs room in the page for the new version; a
-- full page sends it elsewhere, with new index entries: hence fillfactor 50.
create table public.working_memory_snapshots (
  id uuid primary key default gen_random_uuid(),
  seq bigint generated always as identity,
  session_id uuid not null unique references public.user_sessions (id) on delete cascade,
  snapshot jsonb not null,
  created_at timestamptz not null default now()
) with (fillfactor = 50);

-- A turn reads its snapshot (kilobytes of JSON, compressed once it passes about 2 kB) and writes
-- it back changed, so it is compressed on every commit. lz4 compresses and decompresses several
-- times faster than PostgreSQL's default, pglz, for about the same size here. Only a server
-- built with lz4 offers it (`--with-lz4`: Debian's and Supabase's are); elsewhere the column
-- keeps the default.
do $$
begin
  if exists (
    select from pg_catalog.pg_settings
      where name = 'default_toast_compression' and 'lz4' = any(enumvals)
  ) then
    alter table public.working_memory_snapshots alter column snapshot set compression lz4;
  end if;
end
$$;

-- Every inbound message, stored before the webhook is answered: the session's queue. `queued`
-- waits for the lease, `started` is the turn in flight (re-run if its worker dies), `done` is
-- committed. A started message is also in `messages`, as the user message with the same id. A
-- due scheduled event runs its turn through this queue too (kind `event`), sharing the lease,
-- the per-session order and takeover; it is not a message from the person, so it is not stored
-- in the conversation, not counted and not seen by the session timeout. See docs/persistence.md
-- ("Event turns").
create table public.inbound_messages (
  id uuid primary key default gen_random_uuid(),
  seq bigint generated always as identity,
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  external_id text,
  body text not null,
  received_at timestamptz not null,
  status public.soul_inbound_status not null default 'queued',
  -- Waiting for a turn: exactly the queued messages (the check below), flagged apart from
  -- `status` so that no index names the status. The queue's index holds these alone, and a
  -- turn's message is marked done in its page (a heap-only update, no new index entry); only a
  -- message that waited is updated out of its page, when it starts. A message that starts at
  -- once is inserted started.
  waiting boolean not null default true,
  -- The starts of this message's turn: 1 when it is stored, one more at each re-start after its
  -- worker stopped, so that a turn that keeps failing is given up instead of re-run for good.
  attempts integer not null default 1,
  started_at timestamptz,
  finished_at timestamptz,
  kind public.soul_inbound_kind not null default 'message',
  -- For an event: {event_id, key, kind, payload}, copied from the completed scheduled event.
  event jsonb,
  unique (session_id, external_id),
  constraint inbound_messages_event_matches_kind check ((kind = 'event') = (event is not null)),
  constraint inbound_messages_waiting_is_queued check (waiting = (status = 'queued'))
);

create index idx_inbound_messages_waiting on public.inbound_messages (session_id, seq)
  where waiting;

-- Replies, written by the commit that produced them, then moved forward by delivery updates.
create table public.outbound_messages (
  id uuid primary key,
  seq bigint generated always as identity,
  session_id uuid not null references public.user_sessions (id) on delete cascade,
  body text not null,
  status public.soul_outbound_status not null default 'pending',
  -- The send claim: until when the process that claimed this reply alone may send it (none, or
  -- a time past: any process may claim it). The commit claims its replies for its own sender;
  -- the sweeper and a sender with earlier replies pending claim the expired ones. No index names
  -- it, so taking a claim is a heap-only update.
  claimed_until timestamptz,
  provider_id text,
  error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index idx_outbound_messages_session on public.outbound_messages (session_id, seq);
-- The unsent replies, by session: the commit's "were earlier replies pending?" and a session's
-- claim read the session's pending replies alone instead of all its replies (a long
-- conversation has thousands), and the sweeper reads the whole index, the pending replies only.
create index idx_outbound_messages_pending on public.outbound_messages (session_id, seq)
  where status = 'pending';
-- Replies get their provider id once sent: the ones not yet sent need no entry.
create unique index outbound_messages_provider_id_key on public.outbound_messages (provider_id)
  where provider_id is not null;

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
