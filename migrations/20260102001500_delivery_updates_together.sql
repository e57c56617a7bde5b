-- Every reply Twilio took was marked accepted by a call of its own: a round trip, a transaction
-- and a commit record per reply, a third of a gateway turn's round trips. The gateway now marks
-- the replies taken while the previous marks were being stored together, in one call: each
-- update is applied in order exactly as `soul_update_delivery` applies it alone (forward only,
-- by our id or the provider's), and the answer says, per update, whether it moved a status.
-- Asynchronous commit as for one update (20260102001100_delivery_updates_do_not_wait_for_the_disk).
create function public.soul_update_deliveries(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_update jsonb;
  v_applied jsonb := '[]'::jsonb;
begin
  -- Local to this transaction: it outlasts the function, unlike the search_path above.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  for v_update in
    select e from pg_catalog.jsonb_array_elements(request -> 'updates') with ordinality as x(e, n)
      order by n
  loop
    update public.outbound_messages
      set status = v_update ->> 'status',
        provider_id = coalesce(v_update ->> 'provider_id', provider_id),
        error = coalesce(v_update ->> 'error', error),
        updated_at = (v_update ->> 'now')::timestamptz
      where (id = (v_update ->> 'id')::uuid
          or (v_update ->> 'id' is null and provider_id = v_update ->> 'provider_id'))
        and public.soul_delivery_rank(status) < public.soul_delivery_rank(v_update ->> 'status');
    v_applied := v_applied || pg_catalog.to_jsonb(found);
  end loop;
  return pg_catalog.jsonb_build_object('applied', v_applied);
end
$$;

revoke all on function public.soul_update_deliveries(jsonb) from public, anon, authenticated;
grant execute on function public.soul_update_deliveries(jsonb) to service_role;
