-- Version 2: due scheduled events run turns through the inbound queue (as
-- migrations/20260101000300_event_turns.sql does in PostgreSQL).
alter table inbound_messages
  add column kind text not null default 'message' check (kind in ('message', 'event'));
-- For an event: {event_id, key, kind, payload}, copied from the completed scheduled event.
alter table inbound_messages
  add column event text check ((kind = 'event') = (event is not null));

pragma user_version = 2;
