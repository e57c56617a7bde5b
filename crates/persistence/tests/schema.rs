//! The schema in one place: `schema/postgres.sql` is what `migrations/` make, and the SQLite
//! schema has the same tables and columns, bar the differences it lists.

use std::collections::BTreeSet;
use std::path::Path;

use similar::TextDiff;
use soul_persistence::SqliteStore;
use soul_testkit::postgres::TestDatabase;
use sqlx::{Connection, PgConnection, SqliteConnection};

/// Where the dump is committed, relative to this crate.
const COMMITTED: &str = "schema/postgres.sql";

/// What the dump says of itself, at its top.
const HEADER: &str = "\
-- The PostgreSQL schema that migrations/ make, read back from the catalog of a freshly migrated
-- database: roles, extensions, types, tables (columns, constraints, options, row-level security,
-- policies, indexes, triggers and grants, table by table) and functions with their grants.
-- Owners are left out (whoever ran the migrations), and so are privileges some server versions
-- add (MAINTAIN, PostgreSQL 17). Nothing applies this file: migrations/ are the source, and
-- crates/persistence/tests/schema.rs fails when this file is not what they make, saying how to
-- regenerate it.
";

/// The schema of the database `conn` is connected to, as `schema/postgres.sql` shows it.
///
/// Read from the catalog through the server's own deparsing functions (`pg_get_functiondef`,
/// `pg_get_indexdef`, `pg_get_constraintdef`, `format_type`) rather than with `pg_dump`, whose
/// output changes with its version (its header, the `SET`s it starts with, the random key of its
/// `\restrict` line) and which needs a binary at least as new as the server. What differs between
/// the server versions we support is left out: owners, PostgreSQL 17's MAINTAIN privilege and
/// PostgreSQL 18's not-null constraints (the columns' `not null` says it).
async fn postgres_dump(conn: &mut PgConnection) -> String {
    // Every name comes out schema-qualified, as migrations/ write them.
    sqlx::raw_sql("set search_path = ''")
        .execute(&mut *conn)
        .await
        .expect("search_path");
    let mut sections = vec![HEADER.trim_end().to_owned()];
    sections.push(lines(conn, ROLES, None).await.join("\n"));
    sections.push(lines(conn, EXTENSIONS, None).await.join("\n"));
    for (oid, create) in rows(conn, TYPES).await {
        let mut text = create;
        for constraint in lines(conn, DOMAIN_CONSTRAINTS, Some(oid)).await {
            text.push_str("\n  ");
            text.push_str(&constraint);
        }
        text.push(';');
        sections.push(text);
    }
    for (oid, head) in rows(conn, TABLES).await {
        let mut body = lines(conn, COLUMNS, Some(oid)).await;
        body.extend(lines(conn, TABLE_CONSTRAINTS, Some(oid)).await);
        let options = lines(conn, TABLE_OPTIONS, Some(oid)).await.concat();
        let mut text = format!("{head} (\n  {}\n){options};", body.join(",\n  "));
        for table_line in [TABLE_SECURITY, POLICIES, INDEXES, TRIGGERS, TABLE_GRANTS] {
            for line in lines(conn, table_line, Some(oid)).await {
                text.push('\n');
                text.push_str(&line);
            }
        }
        sections.push(text);
    }
    sections.extend(lines(conn, OTHER_RELATIONS, None).await);
    for (oid, definition) in rows(conn, FUNCTIONS).await {
        let mut text = format!("{};", definition.trim_end());
        for grant in lines(conn, FUNCTION_GRANTS, Some(oid)).await {
            text.push('\n');
            text.push_str(&grant);
        }
        sections.push(text);
    }
    sections.retain(|section| !section.is_empty());
    let mut dump = sections.join("\n\n");
    dump.push('\n');
    dump
}

/// The first column of `sql`'s rows, bound to `oid` when given.
async fn lines(conn: &mut PgConnection, sql: &'static str, oid: Option<u32>) -> Vec<String> {
    let query = sqlx::query_scalar::<_, String>(sql);
    let query = match oid {
        Some(oid) => query.bind(sqlx::postgres::types::Oid(oid)),
        None => query,
    };
    query
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// `(oid, text)` rows of `sql`.
async fn rows(conn: &mut PgConnection, sql: &'static str) -> Vec<(u32, String)> {
    let found: Vec<(sqlx::postgres::types::Oid, String)> = sqlx::query_as(sql)
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    found.into_iter().map(|(oid, text)| (oid.0, text)).collect()
}

/// The roles migrations/ create where they are missing.
const ROLES: &str = "
select pg_catalog.format('create role %I %s %s%s;', rolname,
    case when rolcanlogin then 'login' else 'nologin' end,
    case when rolinherit then 'inherit' else 'noinherit' end,
    case when rolbypassrls then ' bypassrls' else '' end)
  from pg_catalog.pg_roles
  where rolname in ('anon', 'authenticated', 'service_role')
  order by rolname";

const EXTENSIONS: &str = "
select pg_catalog.format('create extension %I;', extname)
  from pg_catalog.pg_extension
  where extname <> 'plpgsql'
  order by extname";

/// Domains and enums of `public`; a domain's constraints follow it (`DOMAIN_CONSTRAINTS`).
const TYPES: &str = "
select t.oid, case t.typtype
    when 'd' then pg_catalog.format('create domain %s as %s%s%s', t.oid::pg_catalog.regtype,
      pg_catalog.format_type(t.typbasetype, t.typtypmod),
      case when t.typnotnull then ' not null' else '' end,
      coalesce(' default ' || t.typdefault, ''))
    else pg_catalog.format('create type %s as enum (%s)', t.oid::pg_catalog.regtype,
      (select pg_catalog.string_agg(pg_catalog.quote_literal(e.enumlabel), ', '
          order by e.enumsortorder)
        from pg_catalog.pg_enum e where e.enumtypid = t.oid))
  end
  from pg_catalog.pg_type t
  join pg_catalog.pg_namespace n on n.oid = t.typnamespace
  where n.nspname = 'public' and t.typtype in ('d', 'e')
  order by t.typname";

const DOMAIN_CONSTRAINTS: &str = "
select pg_catalog.format('constraint %I %s', conname, pg_catalog.pg_get_constraintdef(oid))
  from pg_catalog.pg_constraint
  where contypid = $1 and contype = 'c'
  order by conname";

const TABLES: &str = "
select c.oid, pg_catalog.format('create table %s', c.oid::pg_catalog.regclass)
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  where n.nspname = 'public' and c.relkind in ('r', 'p')
  order by c.relname";

const COLUMNS: &str = "
select pg_catalog.format('%I %s%s%s%s%s', a.attname,
    pg_catalog.format_type(a.atttypid, a.atttypmod),
    case a.attcompression when 'l' then ' compression lz4' when 'p' then ' compression pglz'
      else '' end,
    case when a.attnotnull then ' not null' else '' end,
    case when a.attgenerated = 's'
      then ' generated always as (' || pg_catalog.pg_get_expr(d.adbin, d.adrelid) || ') stored'
      else coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') end,
    case a.attidentity when 'a' then ' generated always as identity'
      when 'd' then ' generated by default as identity' else '' end)
  from pg_catalog.pg_attribute a
  left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
  where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
  order by a.attnum";

/// Not-null constraints (`n`, PostgreSQL 18) are the columns' `not null` already.
const TABLE_CONSTRAINTS: &str = "
select pg_catalog.format('constraint %I %s', conname, pg_catalog.pg_get_constraintdef(oid))
  from pg_catalog.pg_constraint
  where conrelid = $1 and contype in ('p', 'u', 'c', 'x', 'f')
  order by pg_catalog.array_position(array['p', 'u', 'c', 'x', 'f']::\"char\"[], contype), conname";

const TABLE_OPTIONS: &str = "
select ' with (' || pg_catalog.array_to_string(reloptions, ', ') || ')'
  from pg_catalog.pg_class
  where oid = $1 and reloptions is not null";

const TABLE_SECURITY: &str = "
select pg_catalog.format('alter table %s %s row level security;', oid::pg_catalog.regclass, s)
  from pg_catalog.pg_class,
    lateral (values (1, case when relrowsecurity then 'enable' end),
      (2, case when relforcerowsecurity then 'force' end)) v(n, s)
  where oid = $1 and s is not null
  order by n";

const POLICIES: &str = "
select pg_catalog.format('create policy %I on %s as %s for %s to %s%s%s;', p.polname,
    p.polrelid::pg_catalog.regclass,
    case when p.polpermissive then 'permissive' else 'restrictive' end,
    case p.polcmd when 'r' then 'select' when 'a' then 'insert' when 'w' then 'update'
      when 'd' then 'delete' else 'all' end,
    (select pg_catalog.string_agg(case when r = 0 then 'public'
        else pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r)) end, ', ' order by 1)
      from pg_catalog.unnest(p.polroles) r),
    coalesce(' using (' || pg_catalog.pg_get_expr(p.polqual, p.polrelid) || ')', ''),
    coalesce(' with check (' || pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) || ')', ''))
  from pg_catalog.pg_policy p
  where p.polrelid = $1
  order by p.polname";

/// Indexes other than those of the table's primary key, unique and exclusion constraints.
const INDEXES: &str = "
select pg_catalog.pg_get_indexdef(i.indexrelid) || ';'
  from pg_catalog.pg_index i
  join pg_catalog.pg_class c on c.oid = i.indexrelid
  where i.indrelid = $1
    and not exists (
      select from pg_catalog.pg_constraint k
        where k.conindid = i.indexrelid and k.conrelid = i.indrelid
          and k.contype in ('p', 'u', 'x'))
  order by c.relname";

const TRIGGERS: &str = "
select pg_catalog.pg_get_triggerdef(oid) || ';'
  from pg_catalog.pg_trigger
  where tgrelid = $1 and not tgisinternal
  order by tgname";

const TABLE_GRANTS: &str = "
select pg_catalog.format('grant %s on table %s to %s%s;',
    pg_catalog.string_agg(pg_catalog.lower(a.privilege_type), ', ' order by a.privilege_type),
    c.oid::pg_catalog.regclass,
    case when a.grantee = 0 then 'public'
      else pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) end,
    case when a.is_grantable then ' with grant option' else '' end)
  from pg_catalog.pg_class c,
    lateral pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
  where c.oid = $1 and a.grantee <> c.relowner and a.privilege_type <> 'MAINTAIN'
  group by c.oid, a.grantee, a.is_grantable
  order by 1";

/// Views and sequences of their own (identity columns' sequences are their columns').
const OTHER_RELATIONS: &str = "
select case c.relkind
    when 'S' then pg_catalog.format('create sequence %s;', c.oid::pg_catalog.regclass)
    when 'm' then pg_catalog.format('create materialized view %s as\n%s',
      c.oid::pg_catalog.regclass, pg_catalog.pg_get_viewdef(c.oid))
    else pg_catalog.format('create view %s as\n%s', c.oid::pg_catalog.regclass,
      pg_catalog.pg_get_viewdef(c.oid))
  end
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  where n.nspname = 'public' and c.relkind in ('v', 'm', 'S')
    and not exists (
      select from pg_catalog.pg_depend d
        where d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass and d.objid = c.oid
          and d.deptype = 'i')
  order by c.relname";

const FUNCTIONS: &str = "
select p.oid, pg_catalog.pg_get_functiondef(p.oid)
  from pg_catalog.pg_proc p
  join pg_catalog.pg_namespace n on n.oid = p.pronamespace
  where n.nspname = 'public' and p.prokind in ('f', 'p')
  order by p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)";

const FUNCTION_GRANTS: &str = "
select pg_catalog.format('grant %s on function %s to %s%s;',
    pg_catalog.string_agg(pg_catalog.lower(a.privilege_type), ', ' order by a.privilege_type),
    p.oid::pg_catalog.regprocedure,
    case when a.grantee = 0 then 'public'
      else pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) end,
    case when a.is_grantable then ' with grant option' else '' end)
  from pg_catalog.pg_proc p,
    lateral pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
  where p.oid = $1 and a.grantee <> p.proowner
  group by p.oid, a.grantee, a.is_grantable
  order by 1";

/// `schema/postgres.sql` is what the migrations make. When it is not, the test shows the
/// difference and the command that brings the file up to date (the dump it just made).
#[tokio::test]
async fn the_committed_schema_is_what_the_migrations_make() {
    let database = TestDatabase::migrated().await;
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let dump = postgres_dump(&mut conn).await;
    drop(conn.close().await);

    let fresh = Path::new(env!("CARGO_TARGET_TMPDIR")).join("postgres.sql");
    std::fs::write(&fresh, &dump).expect("writing the fresh dump");
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if committed != dump {
        let diff = TextDiff::from_lines(&committed, &dump)
            .unified_diff()
            .context_radius(3)
            .header(COMMITTED, "what migrations/ make")
            .to_string();
        panic!(
            "crates/persistence/{COMMITTED} is not the schema migrations/ make:\n\n{diff}\n\
             If the change is the one you meant, bring the file up to date with\n\n    \
             cp {} {}\n",
            fresh.display(),
            committed_path.display()
        );
    }
}

/// Columns PostgreSQL has and SQLite has not, each for its reason (`src/sqlite/schema.sql`).
const ONLY_IN_POSTGRES: &[(&str, &str)] = &[
    // The queue's flag for its partial index: a PostgreSQL saving (heap-only updates).
    ("inbound_messages", "waiting"),
    // Surrogate keys from the seed; SQLite keys these tables by their unique keys.
    ("mental_process_state", "id"),
    ("process_memories", "id"),
    ("soul_memories", "id"),
    ("working_memory_snapshots", "id"),
];

/// A table, a column, and whether the column may be null.
type Column = (String, String, bool);

/// The SQLite schema has the PostgreSQL schema's tables and columns, nullable alike, except the
/// columns `ONLY_IN_POSTGRES` names: a column added to one store and not the other fails here.
#[tokio::test]
async fn sqlite_has_the_tables_and_columns_of_postgres() {
    let database = TestDatabase::migrated().await;
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let postgres: Vec<Column> = sqlx::query_as(
        "select c.relname::text, a.attname::text, not a.attnotnull
           from pg_catalog.pg_attribute a
           join pg_catalog.pg_class c on c.oid = a.attrelid
           join pg_catalog.pg_namespace n on n.oid = c.relnamespace
           where n.nspname = 'public' and c.relkind = 'r' and a.attnum > 0
             and not a.attisdropped",
    )
    .fetch_all(&mut conn)
    .await
    .expect("PostgreSQL's columns");
    drop(conn.close().await);

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("souls.db");
    drop(SqliteStore::open(&path).await.expect("open"));
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    // A primary key column is not null whatever SQLite's `notnull` says (a rowid alias never
    // is; SQLite lets other primary keys be null, but the store never writes one).
    let sqlite: Vec<Column> = sqlx::query_as(
        "select m.name, p.name, p.\"notnull\" = 0 and p.pk = 0
           from sqlite_master m join pragma_table_info(m.name) p
           where m.type = 'table' and m.name not like 'sqlite\\_%' escape '\\'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("SQLite's columns");
    drop(conn.close().await);

    let postgres: BTreeSet<Column> = postgres.into_iter().collect();
    let sqlite: BTreeSet<Column> = sqlite.into_iter().collect();
    let only_in_postgres: Vec<(&str, &str, bool)> = postgres
        .difference(&sqlite)
        .map(|(table, column, null)| (table.as_str(), column.as_str(), *null))
        .collect();
    let only_in_sqlite: Vec<&Column> = sqlite.difference(&postgres).collect();
    assert_eq!(
        only_in_sqlite,
        Vec::<&Column>::new(),
        "SQLite columns PostgreSQL has not, or nullable otherwise (table, column, nullable)"
    );
    assert_eq!(
        only_in_postgres
            .iter()
            .map(|(table, column, _)| (*table, *column))
            .collect::<Vec<_>>(),
        ONLY_IN_POSTGRES,
        "PostgreSQL columns SQLite has not, or nullable otherwise: {only_in_postgres:?}"
    );
}
