-- A pending reply was sent by whichever process found it stale (stored longer ago than the
-- gateway's OUTBOX_RETRY_AFTER): two gateways sweeping at once both picked up the same stale
-- reply, both asked Twilio whether it had been sent while neither send had arrived, and both
-- sent it. Nothing in the store said who was sending a reply.
--
-- Now each reply carries a send claim: `claimed_until`, until when the process that claimed it
-- alone may send it (none: any process may claim it). The commit stores its replies already
-- claimed for its own sender (`settings.reply_claim_ms`, the gateway's OUTBOX_RETRY_AFTER), so a
-- turn's first send asks nothing more. A sweeper claims the replies whose claim expired
-- (`soul_claim_pending_deliveries`, `for update skip locked`: two sweepers get disjoint sets),
-- and a sender that finds earlier replies of its session pending claims those of them whose
-- claim expired before it sends them (`soul_claim_session_outbox`). A claim that expires, its
-- process dead, passes to the next process that asks.
--
-- The claim is no index's column and no index's predicate names it, so taking one is a
-- heap-only update. The sweeper reads the index of unsent replies (all of it: the pending
-- replies alone) and the session's claim reads the session's part of it.

alter table public.outbound_messages add column claimed_until timestamptz;
-- Replies pending at the upgrade keep the rule they were stored under: stale a minute (the
-- default OUTBOX_RETRY_AFTER) after they were stored, so that one a gateway of the previous build
-- is still sending is not claimed by another at once.
update public.outbound_messages set claimed_until = created_at + interval '1 minute'
  where status = 'pending';

-- Restated in full from 20260102001400_commit_reads_the_outbox; what changed is the insert of the
-- outbound rows, which claims them. A request without a claim duration (a gateway of the previous
-- build, while a rolling upgrade runs) claims them for the minute that build waited.
create or replace function public.soul_commit_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_session uuid := (request ->> 'session_id')::uuid;
  v_claimed_until timestamptz := v_now + case
    when request -> 'settings' ? 'reply_claim_ms'
      then public.soul_ms(request -> 'settings' -> 'reply_claim_ms')
    else interval '1 minute'
  end;
  v_s public.user_sessions;
  v_replies integer;
  v_earlier_pending boolean;
begin
  select * into v_s from public.user_sessions where id = v_session for update;
  if not found or v_s.lease_token is distinct from (request ->> 'lease_token')::uuid then
    return pg_catalog.jsonb_build_object('outcome', 'lease_lost');
  end if;

  perform public.soul_apply_changes(v_session, request -> 'changes', request -> 'settings', v_now);

  -- The subquery sees the table as it was before this statement: the earlier replies only.
  with replies as (
    insert into public.messages (id, session_id, role, content, region, name, metadata, created_at)
      select (e ->> 'id')::uuid, v_session, 'assistant', e ->> 'content',
          coalesce(e ->> 'region', 'default'), e ->> 'name',
          coalesce(e -> 'metadata', '{}'::jsonb), coalesce((e ->> 'timestamp')::timestamptz, v_now)
        from pg_catalog.jsonb_array_elements(coalesce(request -> 'replies', '[]'::jsonb))
          with ordinality as x(e, n)
        order by n
      returning id, content
  ), outbox as (
    insert into public.outbound_messages
        (id, session_id, body, created_at, updated_at, claimed_until)
      select id, v_session, content, v_now, v_now, v_claimed_until from replies
      returning 1
  )
  select count(*), exists (
      select 1 from public.outbound_messages o
        where o.session_id = v_session and o.status = 'pending')
    into v_replies, v_earlier_pending
    from outbox;

  update public.inbound_messages set status = 'done', finished_at = v_now
    where id = v_s.lease_inbound_id;

  if not exists (
    select 1 from public.inbound_messages where session_id = v_session and waiting
  ) then
    -- What `soul_start_next` does when nothing waits, in the same update as the count.
    update public.user_sessions
      set total_messages = total_messages + v_replies, last_active_at = v_now,
        lease_token = null, lease_expires_at = null, lease_inbound_id = null
      where id = v_session;
    return pg_catalog.jsonb_build_object('outcome', 'committed', 'next', null,
      'opted_out', v_s.opted_out_at is not null, 'earlier_pending', v_earlier_pending);
  end if;

  update public.user_sessions
    set total_messages = total_messages + v_replies, last_active_at = v_now
    where id = v_session;
  return pg_catalog.jsonb_build_object(
    'outcome', 'committed',
    'next', public.soul_start_next(v_session, request -> 'settings', v_now, false),
    'opted_out', v_s.opted_out_at is not null, 'earlier_pending', v_earlier_pending);
end
$$;

-- Claims for the caller, until `claim_until`, up to `limit` pending replies whose claim expired
-- by `now`, oldest first (each session's in commit order), and returns them with their address.
-- A reply another caller is claiming at the same moment is skipped, not waited for; one it
-- claimed meanwhile fails the claim's test when it is locked. Replaces soul_pending_deliveries,
-- which stays for gateways of the previous build while a rolling upgrade runs.
create function public.soul_claim_pending_deliveries(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_result jsonb;
begin
  with due as (
    select o.id from public.outbound_messages o
      where o.status = 'pending' and (o.claimed_until is null or o.claimed_until <= v_now)
      order by o.seq
      limit (request ->> 'limit')::bigint
      for update skip locked
  ), claimed as (
    update public.outbound_messages o
      set claimed_until = (request ->> 'claim_until')::timestamptz
      from due
      where o.id = due.id
      returning o
  )
  select coalesce(pg_catalog.jsonb_agg(public.soul_outbound_json(c.o, s.phone_number)
      order by (c.o).seq), '[]'::jsonb)
    into v_result
    from claimed c
    join public.user_sessions s on s.id = (c.o).session_id;
  return v_result;
end
$$;

-- What a sender asks before sending the reply `through` when earlier replies of its session may
-- still be pending: whether the person opted out, and the session's replies pending up to and
-- including `through`, oldest first; those of them whose claim expired by `now` are claimed for
-- the caller until `claim_until`, and named in `claimed`. A reply being claimed or marked by
-- another transaction is waited for and then tested again, so a claim taken or a status moved
-- meanwhile counts. Null for an unknown session. Replaces soul_session_outbox, which stays for
-- gateways of the previous build while a rolling upgrade runs.
create function public.soul_claim_session_outbox(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_session uuid := (request ->> 'session_id')::uuid;
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_s public.user_sessions;
  v_through bigint;
  v_claimed jsonb;
begin
  select * into v_s from public.user_sessions where id = v_session;
  if not found then
    return null;
  end if;
  select o.seq into v_through from public.outbound_messages o
    where o.id = (request ->> 'through')::uuid;

  with claimed as (
    update public.outbound_messages o
      set claimed_until = (request ->> 'claim_until')::timestamptz
      where o.session_id = v_session and o.status = 'pending' and o.seq <= v_through
        and (o.claimed_until is null or o.claimed_until <= v_now)
      returning o.id
  )
  select coalesce(pg_catalog.jsonb_agg(c.id), '[]'::jsonb) into v_claimed from claimed c;

  return pg_catalog.jsonb_build_object(
    'opted_out', v_s.opted_out_at is not null,
    'claimed', v_claimed,
    'pending', coalesce((
      select pg_catalog.jsonb_agg(public.soul_outbound_json(o, v_s.phone_number) order by o.seq)
        from public.outbound_messages o
        where o.session_id = v_session and o.status = 'pending' and o.seq <= v_through),
      '[]'::jsonb));
end
$$;

-- Only the service role executes them, as every other soul_ function.
revoke all on function public.soul_claim_pending_deliveries(jsonb)
  from public, anon, authenticated;
grant execute on function public.soul_claim_pending_deliveries(jsonb) to service_role;
revoke all on function public.soul_claim_session_outbox(jsonb) from public, anon, authenticated;
grant execute on function public.soul_claim_session_outbox(jsonb) to service_role;
