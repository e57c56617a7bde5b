-- The roles Supabase provides. On Supabase they exist already and this does nothing; on a bare
-- PostgreSQL it creates them so that the same grants and row-level security apply everywhere.
-- `service_role` bypasses row-level security, as on Supabase; `anon` and `authenticated` are the
-- roles PostgREST uses for requests without the service key.
do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;
