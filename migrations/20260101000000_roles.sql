-- The roles Supabase provides. On Supabase they exist already and this does nothing; on a bare
-- PostgreSQL it creates them so that the same grants and row-level security apply everywhere.
-- `service_role` bypasses row-level security, as on Supabase; `anon` and `authenticated` are the
-- roles PostgREST uses for requests without the service key.
--
-- Roles belong to the whole cluster, not to one database: two databases being migrated at once
-- can both find a role missing and both create it. The loser's error means the role is there,
-- which is all this migration wants, so it is caught rather than checked for beforehand.
do $$
declare
  wanted record;
begin
  for wanted in
    select * from (values
      ('anon', 'create role anon nologin noinherit'),
      ('authenticated', 'create role authenticated nologin noinherit'),
      ('service_role', 'create role service_role nologin noinherit bypassrls')
    ) as roles(name, statement)
  loop
    if not exists (select 1 from pg_catalog.pg_roles where rolname = wanted.name) then
      begin
        execute wanted.statement;
      exception when duplicate_object or unique_violation then
        null;
      end;
    end if;
  end loop;
end
$$;
