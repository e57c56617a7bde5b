-- Version 4: each reply's send claim, as in migrations/20260102001600_reply_claims: until when the
-- process that claimed it alone may send it (none: any process may claim it). Replies pending at
-- the upgrade keep the rule they were stored under, a minute from when they were stored, so that
-- one still being sent is not claimed by another process at once. The minute is added to the
-- time's minutes part: its seconds and fraction are kept as they are, six digits.
alter table outbound_messages add column claimed_until text;
update outbound_messages
  set claimed_until = strftime('%Y-%m-%dT%H:%M:', created_at, '+1 minute') || substr(created_at, 18)
  where status = 'pending';

pragma user_version = 4;
