-- An insert or update of a table with CHECK constraints reads each constraint's expression back
-- from its stored text before testing it: the executor prepares the constraints per statement,
-- and a statement in a PL/pgSQL function is a new statement at every call. A reference turn paid
-- that eleven times, about 8 % of PostgreSQL's instructions for the turn (callgrind;
-- docs/performance.md, "Constraints read back per statement"). A domain's constraints are read
-- once per connection and kept, so the checks of one column become domains over text: the same
-- values allowed, the same error (SQLSTATE 23514, check_violation), and nothing to change in the
-- functions (text goes into a domain over text without a cast). The two checks that compare two
-- columns stay on their table.
--
-- The columns change type while their domains have no constraint yet, which rewrites no table
-- (only the index of unsent replies, whose predicate names the status, is rebuilt: it holds the
-- pending ones alone); adding the constraints then scans each table once.
create domain public.soul_message_role as text;
create domain public.soul_inbound_status as text;
create domain public.soul_inbound_kind as text;
create domain public.soul_outbound_status as text;

alter table public.messages
  drop constraint messages_role_check,
  alter column role type public.soul_message_role;
alter table public.inbound_messages
  drop constraint inbound_messages_status_check,
  drop constraint inbound_messages_kind_check,
  alter column status type public.soul_inbound_status,
  alter column kind type public.soul_inbound_kind;
alter table public.outbound_messages
  drop constraint outbound_messages_status_check,
  alter column status type public.soul_outbound_status;

alter domain public.soul_message_role
  add constraint soul_message_role_check check (value in ('system', 'user', 'assistant'));
alter domain public.soul_inbound_status
  add constraint soul_inbound_status_check check (value in ('queued', 'started', 'done'));
alter domain public.soul_inbound_kind
  add constraint soul_inbound_kind_check check (value in ('message', 'event'));
alter domain public.soul_outbound_status
  add constraint soul_outbound_status_check check (
    value in ('pending', 'accepted', 'sent', 'delivered', 'undelivered', 'failed'));
