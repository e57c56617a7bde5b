-- A turn reads its session's working-memory snapshot (kilobytes of JSON, compressed once it
-- passes about 2 kB) and writes it back changed: it is compressed on every commit. lz4 compresses
-- and decompresses several times faster than PostgreSQL's default, pglz, for about the same size
-- here (docs/performance.md). Only a server built with lz4 offers it (PostgreSQL 14 and later,
-- `--with-lz4`: Debian's and Supabase's are); elsewhere the column keeps the default. Values
-- stored before keep their compression until rewritten, which a commit does.
do $$
begin
  if exists (
    select from pg_catalog.pg_settings
      where name = 'default_toast_compression' and 'lz4' = any(enumvals)
  ) then
    alter table public.working_memory_snapshots alter column snapshot set compression lz4;
  end if;
end
$$;
