-- Every index entry a turn inserts is written, logged and kept until vacuum; a reference turn
-- inserted about twenty. These indexes answer nothing another index does not, or nothing a turn
-- asks often enough to pay for an entry per row:
-- - The session timeout reads the session index since 20260102000700.
drop index public.idx_messages_session_user_created;
-- - Retention deletes by age once in a while. Messages are appended in time order, so a block
--   range index (a few pages for the whole table, no entry per row) narrows that delete to the
--   old part of the table as well.
drop index public.idx_messages_created;
create index idx_messages_created on public.messages using brin (created_at);
-- - Outbound messages get their provider id once sent: the ones not yet sent need no entry.
alter table public.outbound_messages drop constraint outbound_messages_provider_id_key;
create unique index outbound_messages_provider_id_key on public.outbound_messages (provider_id)
  where provider_id is not null;
-- - Memories are looked up by their unique keys, whose leading columns these repeat.
drop index public.idx_soul_memories_session;
drop index public.idx_process_memories_session;
drop index public.idx_process_memories_process;
