-- Version 5: how many times each message's turn was started, as in
-- migrations/20260102001800_turn_attempts: 1 when stored, one more at each re-start after its
-- worker stopped, so that a turn that keeps failing is given up instead of re-run for good.
alter table inbound_messages add column attempts integer not null default 1;

pragma user_version = 5;
