-- Version 2: the message indexes PostgreSQL dropped in migrations/20260102000200_update_in_place.
-- The session timeout asks for the newest user message of a session: an index of the user
-- messages alone answers it. Histories of one region are rare (a turn loads every region unless
-- a soul says otherwise): the session index, read newest first, answers them.
create index idx_messages_session_user_created on messages (session_id, created_at)
  where role = 'user';
drop index idx_messages_session_role_created;
drop index idx_messages_session_region;

pragma user_version = 2;
