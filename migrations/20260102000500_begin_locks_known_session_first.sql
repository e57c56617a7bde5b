-- A begin for a number already known (every message after a person's first) looked for its
-- session by trying to insert one: an insert that finds a conflict still builds the row (a random
-- id, the metadata object) and probes the unique index before the row lock is taken by a second
-- statement. Now it locks the existing row first and inserts only for a new number. Measured in
-- docs/performance.md.

-- Restated in full (a migration restates what it changes); new: the lookup before the insert.
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
