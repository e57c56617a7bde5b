-- What the outbox asks before sending a session's replies, in one call: whether the person opted
-- out, and the session's pending replies, oldest first (it sends earlier ones first, or waits for
-- the process sending them). It replaces a scan of every session's pending replies and a second
-- call for the opt-out. Null for an unknown session.
create function public.soul_session_outbox(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
      'opted_out', s.opted_out_at is not null,
      'pending', coalesce((
        select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'id', o.id, 'session_id', o.session_id, 'address', s.phone_number, 'body', o.body,
            'status', o.status, 'provider_id', o.provider_id, 'created_at', o.created_at)
            order by o.seq)
          from public.outbound_messages o
          where o.session_id = s.id and o.status = 'pending'), '[]'::jsonb))
    from public.user_sessions s
    where s.id = (request ->> 'session_id')::uuid
$$;

-- Only the service role executes it, as every other soul_ function.
revoke all on function public.soul_session_outbox(jsonb) from public, anon, authenticated;
grant execute on function public.soul_session_outbox(jsonb) to service_role;
