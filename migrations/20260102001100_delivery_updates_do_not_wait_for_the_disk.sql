-- A delivery update records what Twilio already holds: that it accepted a reply (with its
-- message SID), or a later status from its callback. Waiting for that commit to reach the disk
-- (one WAL flush per reply sent) protects little: if the server crashes before the flush, the
-- reply reads as still pending, and the outbox's exactly-once path, which already covers a
-- crash between Twilio's answer and this update, finds it in Twilio's list of sent messages and
-- records it instead of sending it again; a lost callback status leaves the reply at the
-- previous one (Twilio keeps the delivered status either way). So the update commits
-- asynchronously (`synchronous_commit = off` for its own transaction only). Opt-outs, stored by
-- `soul_set_opt_out`, still wait. Measured in docs/performance.md.
--
-- Restated in full (a migration restates what it changes); new: the `set_config`.
create or replace function public.soul_update_delivery(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
begin
  -- Local to this transaction: it outlasts the function, unlike the search_path above.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  update public.outbound_messages
    set status = request ->> 'status',
      provider_id = coalesce(request ->> 'provider_id', provider_id),
      error = coalesce(request ->> 'error', error),
      updated_at = (request ->> 'now')::timestamptz
    where (id = (request ->> 'id')::uuid
        or (request ->> 'id' is null and provider_id = request ->> 'provider_id'))
      and public.soul_delivery_rank(status) < public.soul_delivery_rank(request ->> 'status');
  return pg_catalog.jsonb_build_object('applied', found);
end
$$;
