-- The SQLite form of migrations/: the same tables, keys and cascades, with text for uuids,
-- timestamps and JSON. Timestamps are UTC RFC 3339 with six fractional digits, so text order is
-- time order. Its checks are table checks: SQLite has no domains.
--
-- Where it differs from PostgreSQL, on purpose (the columns it lacks are listed again in
-- tests/schema.rs, whose `sqlite_has_the_tables_and_columns_of_postgres` fails on any other
-- difference of tables, columns or nullability, so the two cannot drift apart silently):
-- - The memory tables and the process state are keyed by their unique keys alone, without the
--   surrogate `id` PostgreSQL keeps from the seed; the snapshot table has no `id` either.
-- - `inbound_messages` has no `waiting` flag, and the queue's index holds every message not
--   done; `outbound_messages`' index of pending replies is by time. PostgreSQL's shapes there
--   save WAL records and heap-only updates, which SQLite does not have.
-- - Snapshots are replaced by delete and insert (SQLite reuses the freed space at once), so the
--   snapshot table keeps its session index instead of a unique key.
-- One row per conversation: a number and the line it texted ('' for the default line).
create table user_sessions (
  id text primary key,
  phone_number text not null,
  line text not null default '',
  assigned_persona text not null,
  first_contact_at text not null,
  last_active_at text not null,
  total_messages integer not null default 0,
  metadata text not null default '{}',
  version integer not null default 0,
  lease_token text,
  lease_expires_at text,
  lease_inbound_id text,
  opted_out_at text,
  -- The number of the latest turn not rewound: what the next commit numbers after.
  turns integer not null default 0,
  unique (phone_number, line)
);

create table messages (
  seq integer primary key autoincrement,
  id text not null unique,
  session_id text not null references user_sessions (id) on delete cascade,
  message_sid text,
  role text not null check (role in ('system', 'user', 'assistant')),
  content text not null,
  region text not null default 'default',
  name text,
  metadata text not null default '{}',
  created_at text not null
);

-- The history, one region's too, and the session timeout's newest user message (by `seq`) all
-- read the session index; retention deletes by time.
create index idx_messages_session on messages (session_id, seq);
create index idx_messages_created on messages (created_at);

create table soul_memories (
  session_id text not null references user_sessions (id) on delete cascade,
  key text not null,
  value text not null,
  updated_at text not null,
  primary key (session_id, key)
);

create table process_memories (
  session_id text not null references user_sessions (id) on delete cascade,
  process_name text not null,
  key text not null,
  value text not null,
  updated_at text not null,
  primary key (session_id, process_name, key)
);

create table mental_process_state (
  session_id text primary key references user_sessions (id) on delete cascade,
  process_name text not null,
  params text not null default '{}',
  invocation_count integer not null default 0,
  previous_process text,
  updated_at text not null
);

create table working_memory_snapshots (
  seq integer primary key autoincrement,
  session_id text not null references user_sessions (id) on delete cascade,
  snapshot text not null,
  created_at text not null
);

create index idx_working_memory_snapshots_session on working_memory_snapshots (session_id, seq);

create table inbound_messages (
  seq integer primary key autoincrement,
  id text not null unique,
  session_id text not null references user_sessions (id) on delete cascade,
  external_id text,
  body text not null,
  received_at text not null,
  status text not null default 'queued' check (status in ('queued', 'started', 'done')),
  -- The starts of this message's turn: 1 when stored, one more at each re-start after its worker
  -- stopped, so that a turn that keeps failing is given up instead of re-run for good.
  attempts integer not null default 1,
  started_at text,
  finished_at text,
  -- A due scheduled event runs its turn through this queue too (see docs/persistence.md).
  kind text not null default 'message' check (kind in ('message', 'event')),
  -- For an event: {event_id, key, kind, payload}, copied from the completed scheduled event.
  event text check ((kind = 'event') = (event is not null)),
  -- The turn log (migrations/20260104000100_turn_log.sql): the number of the turn
  -- that answered this message, whether a rewind went back before it, and its record.
  turn integer,
  rewound integer not null default 0,
  record text,
  unique (session_id, external_id)
);

create index idx_inbound_messages_pending on inbound_messages (session_id, seq)
  where status <> 'done';

create table outbound_messages (
  seq integer primary key autoincrement,
  id text not null unique,
  session_id text not null references user_sessions (id) on delete cascade,
  body text not null,
  status text not null default 'pending',
  -- The send claim: until when the process that claimed this reply alone may send it (none: any
  -- process may claim it).
  claimed_until text,
  provider_id text unique,
  error text,
  created_at text not null,
  updated_at text not null
);

create index idx_outbound_messages_pending on outbound_messages (created_at)
  where status = 'pending';

create table scheduled_events (
  id text primary key,
  session_id text not null references user_sessions (id) on delete cascade,
  key text not null,
  kind text not null,
  payload text not null default '{}',
  due_at text not null,
  claimed_until text,
  created_at text not null,
  unique (session_id, key)
);

create index idx_scheduled_events_due on scheduled_events (due_at);

-- The inspector's audit (migrations/20260104000200_inspector.sql): who revealed,
-- exported, erased or rewound which conversation, and when. No foreign key: an entry outlives the
-- erasure it records.
create table inspector_audit (
  id text primary key,
  at text not null,
  actor text not null,
  action text not null check (action in ('reveal', 'export', 'erase', 'rewind', 'rerun')),
  session_id text not null
);

create index idx_inspector_audit_at on inspector_audit (at);

pragma user_version = 3;
