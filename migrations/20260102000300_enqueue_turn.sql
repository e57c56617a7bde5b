-- The acknowledgement of a webhook as one short insert: `soul_begin_turn` with `defer` stores
-- the message in its session's queue and starts nothing, so a gateway that is behind answers
-- Twilio at once and starts the turn later with `soul_resume_turn`. Measured in
-- docs/performance.md ("Acknowledgement under overload").
--
-- Restated in full (a migration restates what it changes); new: `defer` and the `waiting`
-- outcome, which says no worker holds the session, so nobody will start the message unless the
-- caller resumes the session (or a sweeper finds it through `soul_stalled_sessions`). A turn is
-- `new_session` when it is the session's first (version 0), no longer when its begin created the
-- session: a deferred first message creates the session and a later call starts it.
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
begin
  -- Two first messages from one number at once: one insert wins, the other waits on it and
  -- then locks the row it made. Every later step holds the session row lock.
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

  if request ->> 'external_id' is not null then
    select id into v_inbound_id from public.inbound_messages
      where session_id = v_s.id and external_id = request ->> 'external_id';
    if found then
      return pg_catalog.jsonb_build_object(
        'outcome', 'duplicate', 'inbound_id', v_inbound_id, 'session_id', v_s.id);
    end if;
  end if;

  insert into public.inbound_messages (session_id, external_id, body, received_at)
    values (v_s.id, request ->> 'external_id', request ->> 'body',
      coalesce((request ->> 'received_at')::timestamptz, v_now))
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
    'turn', public.soul_start_next(v_s.id, v_settings, v_now, v_s.version = 0));
end
$$;

-- Restated: the turn that resumes a session no turn has started in yet (version 0, as a deferred
-- first message leaves it) is `new_session`, as in a begin.
create or replace function public.soul_resume_turn(request jsonb)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now timestamptz := (request ->> 'now')::timestamptz;
  v_s public.user_sessions;
begin
  select * into v_s from public.user_sessions
    where id = (request ->> 'session_id')::uuid
    for update;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'idle');
  end if;
  if v_s.lease_token is not null and v_s.lease_expires_at > v_now then
    return pg_catalog.jsonb_build_object('outcome', 'busy');
  end if;
  return pg_catalog.jsonb_build_object(
    'outcome', 'started',
    'turn', public.soul_start_next(v_s.id, request -> 'settings', v_now, v_s.version = 0));
end
$$;
