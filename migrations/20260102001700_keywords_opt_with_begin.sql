-- A keyword changed the opt-out before its message was stored (`soul_set_opt_out`, then
-- `soul_begin_turn`), so a replayed START re-opted in a number that had said STOP since, and the
-- message that followed was answered. The change now travels with the message (`opt_out` in the
-- request: true for STOP, false for START) and `soul_begin_turn` applies it in the transaction
-- that stores the message, after the duplicate check: a duplicate changes nothing. STOP also
-- costs one round trip instead of two or three.
--
-- Restated in full (a migration restates what it changes): `soul_begin_turn`.

create or replace function public.soul_begin_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_settings jsonb := request -> 'settings';
  v_s public.user_sessions;
  v_inbound_id uuid;
  v_fresh boolean;
begin
  -- Every later step holds the session row lock.
  select * into v_s from public.user_sessions
    where phone_number = request ->> 'address'
    for update;
  if not found then
    -- Two first messages from one number at once: one insert wins, the other waits on it and
    -- then locks the row it made.
    insert into public.user_sessions (
        phone_number, assigned_persona, first_contact_at, last_active_at, metadata)
      values (
        request ->> 'address', v_settings ->> 'persona', v_now, v_now,
        pg_catalog.jsonb_build_object(
          'session_number', 1,
          'last_session_started_at', coalesce((request ->> 'received_at')::timestamptz, v_now)))
      on conflict (phone_number) do nothing
      returning * into v_s;
    if not found then
      select * into v_s from public.user_sessions
        where phone_number = request ->> 'address'
        for update;
    end if;
  end if;

  if request ->> 'external_id' is not null then
    select id into v_inbound_id from public.inbound_messages
      where session_id = v_s.id and external_id = request ->> 'external_id';
    if found then
      return pg_catalog.jsonb_build_object(
        'outcome', 'duplicate', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
    end if;
  end if;

  -- STOP and START change the opt-out here, after the duplicate check and with the message, so
  -- that a replayed keyword changes nothing and a turn started or queued for the message
  -- already reads the change.
  if request ->> 'opt_out' is not null then
    update public.user_sessions
      set opted_out_at = case
        when (request ->> 'opt_out')::boolean then coalesce(opted_out_at, v_now)
        end
      where id = v_s.id;
  end if;

  -- A message that starts now (no turn in flight or stopped, none waiting) is stored as started:
  -- its row is written here and once more, in its page, by the commit.
  v_fresh := not coalesce((request ->> 'defer')::boolean, false)
    and v_s.lease_inbound_id is null
    and not exists (
      select 1 from public.inbound_messages where session_id = v_s.id and waiting);
  insert into public.inbound_messages (
      session_id, external_id, body, received_at, status, started_at, waiting)
    values (v_s.id, request ->> 'external_id', request ->> 'body',
      coalesce((request ->> 'received_at')::timestamptz, v_now),
      case when v_fresh then 'started' else 'queued' end,
      case when v_fresh then v_now end,
      not v_fresh)
    returning id into v_inbound_id;

  if v_s.lease_token is not null and v_s.lease_expires_at > v_now then
    return pg_catalog.jsonb_build_object(
      'outcome', 'queued', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
  end if;

  if coalesce((request ->> 'defer')::boolean, false) then
    return pg_catalog.jsonb_build_object(
      'outcome', 'waiting', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
  end if;

  return pg_catalog.jsonb_build_object(
    'outcome', 'started',
    'turn', public.soul_start_next(
      v_s.id, v_settings, v_now, v_s.version = 0, case when v_fresh then v_inbound_id end));
end
$$;
