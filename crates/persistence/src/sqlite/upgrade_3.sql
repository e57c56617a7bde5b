-- Version 3: the session timeout's newest user message is the newest by insertion order, read
-- from the session index, as in migrations/20260102000700_start_reads_less; the index of user
-- messages by time goes, as in 20260102000800_fewer_index_entries_per_turn.
drop index idx_messages_session_user_created;

pragma user_version = 3;
