-- Sending a commit's replies asked the store first whether the person had opted out and whether
-- replies of earlier commits were still pending (`soul_session_outbox`): a round trip and a
-- statement of its own for every reply, and almost always the answer was "no" to both. The
-- commit holds the session's row locked already, so it answers both itself: `opted_out` from the
-- row it locked, `earlier_pending` from the replies pending before its own were stored (the
-- statement that inserts them does not see them). A sender asks `soul_session_outbox` only when
-- earlier replies were pending.
--
-- The index of unsent replies held their creation times, for the sweeper; it now holds them by
-- session, so that the commit's question, and `soul_session_outbox`'s, read the session's pending
-- replies alone instead of all its replies (a long conversation has thousands). The sweeper reads
-- the whole index, which holds the pending replies only, as it did.
drop index public.idx_outbound_messages_pending;
create index idx_outbound_messages_pending on public.outbound_messages (session_id, seq)
  where status = 'pending';

-- Restated in full from 20260102001200_fewer_wal_records_per_turn; what changed is the count of
-- the replies, which also looks for earlier pending ones, and the two fields of the answer.
create or replace function public.soul_commit_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_session uuid := (request ->> 'session_id')::uuid;
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
    insert into public.outbound_messages (id, session_id, body, created_at, updated_at)
      select id, v_session, content, v_now, v_now from replies
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
