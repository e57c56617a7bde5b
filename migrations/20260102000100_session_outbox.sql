-- What the outbox asks before sending a session's replies, in one call: whether the person opted
-- out, and the session's pending replies, oldest first (it sends earlier ones first, or waits for
-- the process sending them). It replaces a scan of every session's pending replies and a second
-- call for the opt-out. Null for an unknown session.

-- One outbound message as the stores read it; shared with soul_pending_deliveries. Inlinable:
-- fully schema-qualified and without a fixed search_path (see 20260102000000).
create function public.soul_outbound_json(o public.outbound_messages, p_address text)
returns jsonb
language sql
stable
security invoker
as $$
  select pg_catalog.jsonb_build_object(
    'id', o.id, 'session_id', o.session_id, 'address', p_address, 'body', o.body,
    'status', o.status, 'provider_id', o.provider_id, 'created_at', o.created_at)
$$;

create or replace function public.soul_pending_deliveries(request jsonb)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_agg(public.soul_outbound_json(t.o, t.phone_number)
      order by (t.o).seq), '[]'::jsonb)
    from (
      select o, s.phone_number
        from public.outbound_messages o
        join public.user_sessions s on s.id = o.session_id
        where o.status = 'pending' and o.created_at <= (request ->> 'older_than')::timestamptz
        order by o.seq
        limit (request ->> 'limit')::bigint
    ) t
$$;

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
        select pg_catalog.jsonb_agg(public.soul_outbound_json(o, s.phone_number) order by o.seq)
          from public.outbound_messages o
          where o.session_id = s.id and o.status = 'pending'), '[]'::jsonb))
    from public.user_sessions s
    where s.id = (request ->> 'session_id')::uuid
$$;

-- Only the service role executes them, as every other soul_ function.
revoke all on function public.soul_outbound_json(public.outbound_messages, text)
  from public, anon, authenticated;
grant execute on function public.soul_outbound_json(public.outbound_messages, text) to service_role;
revoke all on function public.soul_session_outbox(jsonb) from public, anon, authenticated;
grant execute on function public.soul_session_outbox(jsonb) to service_role;
