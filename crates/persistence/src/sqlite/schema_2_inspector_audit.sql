-- Step 2: the inspector's audit (migrations/20260104000200_inspector.sql): who revealed,
-- exported or erased which conversation, and when. No foreign key: an entry outlives the
-- erasure it records.
create table inspector_audit (
  id text primary key,
  at text not null,
  actor text not null,
  action text not null check (action in ('reveal', 'export', 'erase')),
  session_id text not null
);

create index idx_inspector_audit_at on inspector_audit (at);

pragma user_version = 2;
