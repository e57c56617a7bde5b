//! The conformance suite on the PostgreSQL store (a fresh database per test, cloned from a
//! migrated template), plus what only PostgreSQL has: round trips per operation, row-level
//! security and the migration runner.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use soul_engine::{Memory, Role};
use soul_persistence::conformance::Harness;
use soul_persistence::{
    Address, BeginOutcome, EventOutcome, Inbound, Inspect, MemoryChange, NewEvent, PgStore,
    ProcessMemoryChange, Processes, Store, StoreFuture, TurnCommit, TurnSettings, migrations,
};
use soul_testkit::cluster::Cluster;
use soul_testkit::postgres::{self, RoundTripCounter, TestDatabase, migration_files};
use sqlx::{Connection, PgConnection};

struct PgHarness {
    database: TestDatabase,
}

impl Harness for PgHarness {
    fn open(&self) -> StoreFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let store = PgStore::connect(&self.database.url(), 8).await?;
            Ok(Arc::new(store) as Arc<dyn Store>)
        })
    }

    fn open_inspect(&self) -> StoreFuture<'_, Arc<dyn Inspect>> {
        Box::pin(async move {
            let store = PgStore::connect(&self.database.url(), 8).await?;
            Ok(Arc::new(store) as Arc<dyn Inspect>)
        })
    }

    fn overwrite_snapshot<'a>(
        &'a self,
        address: &'a Address,
        json: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.database
                .overwrite_snapshot(address.as_str(), json)
                .await;
            Ok(())
        })
    }
}

async fn harness() -> PgHarness {
    PgHarness {
        database: TestDatabase::migrated().await,
    }
}

soul_persistence::conformance_suite!(harness());

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn settings() -> TurnSettings {
    TurnSettings {
        subprocesses: vec!["summary".to_owned()],
        ..TurnSettings::new("aria", Processes::new("initial", ["initial"]))
    }
}

fn inbound(body: &str, at: DateTime<Utc>) -> Inbound {
    Inbound {
        from: Address::new("+15550000001"),
        line: Default::default(),
        persona: None,
        body: body.into(),
        external_id: Some(format!("SM-{body}")),
        received_at: at,
        opt_out: None,
    }
}

fn check_in(due_at: DateTime<Utc>) -> NewEvent {
    NewEvent {
        key: format!("check-in-{}", due_at.timestamp()),
        kind: "perception".into(),
        payload: serde_json::json!({"content": "check in"}),
        due_at,
    }
}

/// Begin and commit are one round trip each (a `Sync` or simple `Query` per operation, counted
/// on the wire by a proxy), including a commit that starts the next queued turn and the begin of
/// a due event's turn.
#[tokio::test]
async fn begin_and_commit_are_one_round_trip_each() {
    let database = TestDatabase::migrated().await;
    let counter = RoundTripCounter::start(&database.options()).await;
    // One connection, so that every statement after the first use is already prepared there.
    let store = PgStore::connect(&postgres::url(&counter.route(database.options())), 1)
        .await
        .expect("connect");
    let settings = settings();

    // Warm-up: the first use of each statement on a connection also prepares it (one extra
    // round trip, once per connection lifetime).
    let BeginOutcome::Started(turn) = store
        .begin_turn(&inbound("warm", t0()), &settings, t0())
        .await
        .expect("begin")
    else {
        panic!("expected a started turn")
    };
    let mut commit = TurnCommit::new(&turn);
    commit.changes.schedule = vec![check_in(t0())];
    // A subprocess memory, so that the begins below load one along with everything else.
    commit.changes.process_memory = vec![ProcessMemoryChange {
        process: "summary".into(),
        change: MemoryChange::Set {
            key: "since".into(),
            value: serde_json::json!(1),
        },
    }];
    store
        .commit_turn(&commit, &settings, t0())
        .await
        .expect("commit");
    let due = store
        .claim_due_events(t0(), 1, Duration::minutes(1))
        .await
        .expect("claim");
    let EventOutcome::Started(turn) = store
        .begin_event_turn(&due[0], &settings, t0())
        .await
        .expect("begin event")
    else {
        panic!("expected a started event turn")
    };
    store
        .commit_turn(&TurnCommit::new(&turn), &settings, t0())
        .await
        .expect("commit");

    let at = t0() + Duration::minutes(1);
    let before = counter.count();
    let BeginOutcome::Started(turn) = store
        .begin_turn(&inbound("one", at), &settings, at)
        .await
        .expect("begin")
    else {
        panic!("expected a started turn")
    };
    assert_eq!(counter.count() - before, 1, "begin");
    assert_eq!(
        turn.subprocess_memories["summary"]["since"],
        serde_json::json!(1)
    );

    let before = counter.count();
    let queued = store
        .begin_turn(&inbound("two", at), &settings, at)
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }));
    assert_eq!(counter.count() - before, 1, "a queued begin");

    let mut commit = TurnCommit::new(&turn);
    commit.replies = vec![
        Memory::new(Role::Assistant, "a", at),
        Memory::new(Role::Assistant, "b", at),
    ];
    commit.changes.soul_memory = vec![
        MemoryChange::Set {
            key: "k".into(),
            value: serde_json::json!(1),
        },
        MemoryChange::Set {
            key: "j".into(),
            value: serde_json::json!(2),
        },
    ];
    let before = counter.count();
    let next = store
        .commit_turn(&commit, &settings, at)
        .await
        .expect("commit");
    assert_eq!(
        counter.count() - before,
        1,
        "commit (with replies, memories and the next turn)"
    );
    let next = next.next.expect("the queued message");

    let mut commit = TurnCommit::new(&next);
    commit.changes.schedule = vec![check_in(at)];
    let before = counter.count();
    store
        .commit_turn(&commit, &settings, at)
        .await
        .expect("commit");
    assert_eq!(counter.count() - before, 1, "commit");

    let due = store
        .claim_due_events(at, 1, Duration::minutes(1))
        .await
        .expect("claim");
    let before = counter.count();
    let EventOutcome::Started(turn) = store
        .begin_event_turn(&due[0], &settings, at)
        .await
        .expect("begin event")
    else {
        panic!("expected a started event turn")
    };
    assert_eq!(counter.count() - before, 1, "an event's begin");
    store
        .commit_turn(&TurnCommit::new(&turn), &settings, at)
        .await
        .expect("commit");
}

/// Roles without the service role's rights see no rows and change none: `anon` and
/// `authenticated` have no privileges at all, and a role holding table privileges (as Supabase
/// grants them by default) still meets row-level security with no policy.
#[tokio::test]
async fn row_level_security_shuts_out_other_roles() {
    let database = TestDatabase::migrated().await;
    let store = PgStore::connect(&database.url(), 2).await.expect("connect");
    let settings = settings();
    store
        .begin_turn(&inbound("secret", t0()), &settings, t0())
        .await
        .expect("begin");

    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let probe = format!("rls_probe_{}", database.name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create role {probe} nologin;
         grant usage on schema public to {probe};
         grant select, insert, update, delete on all tables in schema public to {probe};"
    )))
    .execute(&mut conn)
    .await
    .expect("probe role");

    let tables = [
        "user_sessions",
        "messages",
        "soul_memories",
        "process_memories",
        "mental_process_state",
        "working_memory_snapshots",
        "inbound_messages",
        "outbound_messages",
        "scheduled_events",
    ];
    for role in ["anon", "authenticated", probe.as_str()] {
        for table in tables {
            let mut tx = conn.begin().await.expect("transaction");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set local role {role}")))
                .execute(&mut *tx)
                .await
                .expect("set role");
            let read = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "select count(*) from public.{table}"
            )))
            .fetch_one(&mut *tx)
            .await;
            // Either no privilege at all, or no visible row.
            assert!(
                !matches!(read, Ok(n) if n > 0),
                "{role} read {table}: {read:?}"
            );
            tx.rollback().await.expect("rollback");

            for statement in [
                format!("delete from public.{table}"),
                format!("update public.{table} set session_id = session_id"),
            ] {
                if table == "user_sessions" && statement.starts_with("update") {
                    continue;
                }
                let mut tx = conn.begin().await.expect("transaction");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set local role {role}")))
                    .execute(&mut *tx)
                    .await
                    .expect("set role");
                let changed = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                    .execute(&mut *tx)
                    .await;
                assert!(
                    !matches!(&changed, Ok(done) if done.rows_affected() > 0),
                    "{role}: {statement}: {changed:?}"
                );
                tx.rollback().await.expect("rollback");
            }
        }
        let mut tx = conn.begin().await.expect("transaction");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set local role {role}")))
            .execute(&mut *tx)
            .await
            .expect("set role");
        let insert = sqlx::query(
            "insert into public.user_sessions (phone_number, assigned_persona) values ('+1', 'x')",
        )
        .execute(&mut *tx)
        .await;
        assert!(insert.is_err(), "{role} inserted a session");
        tx.rollback().await.expect("rollback");

        // The turn functions are not theirs to call either.
        let mut tx = conn.begin().await.expect("transaction");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set local role {role}")))
            .execute(&mut *tx)
            .await
            .expect("set role");
        let call = sqlx::query("select public.soul_export_user('{\"address\": \"+15550000001\"}')")
            .execute(&mut *tx)
            .await;
        // EXECUTE was revoked from PUBLIC, so even the probe role with table rights is refused.
        assert!(call.is_err(), "{role} called a turn function");
        tx.rollback().await.expect("rollback");
    }

    // The service role reads everything.
    let mut tx = conn.begin().await.expect("transaction");
    sqlx::raw_sql("set local role service_role")
        .execute(&mut *tx)
        .await
        .expect("set role");
    let sessions: i64 = sqlx::query_scalar("select count(*) from public.user_sessions")
        .fetch_one(&mut *tx)
        .await
        .expect("service role reads");
    assert_eq!(sessions, 1);
    tx.rollback().await.expect("rollback");

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop owned by {probe}; drop role {probe};"
    )))
    .execute(&mut conn)
    .await
    .expect("drop probe role");
}

/// Snapshots are compressed with lz4 wherever the server offers it, and the schema that says so
/// applies on a server without it too, leaving the default
/// (`migrations/20260101000100_schema.sql`).
#[tokio::test]
async fn snapshots_are_compressed_with_lz4_where_the_server_has_it() {
    let database = TestDatabase::migrated().await;
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let offered: bool = sqlx::query_scalar(
        "select 'lz4' = any(enumvals) from pg_catalog.pg_settings
           where name = 'default_toast_compression'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("the server's compression methods");
    let method: String = sqlx::query_scalar(
        "select attcompression::text from pg_catalog.pg_attribute
           where attrelid = 'public.working_memory_snapshots'::regclass and attname = 'snapshot'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("the column's compression");
    assert_eq!(method, if offered { "l" } else { "" });
}

/// Two operations commit without waiting for the disk, each recording what is safe elsewhere: a
/// resume (its messages are on disk already, and a lost resume is started again) and delivery
/// updates (Twilio holds what they record, and the outbox finds a reply it took in its list).
/// The rest wait: a begin stores what its caller acknowledges, an opt-out must not be forgotten.
/// The setting ends with its transaction instead of staying on the connection
/// (`soul_resume_turn` and `soul_update_deliveries` in `migrations/20260101000200_functions.sql`).
#[tokio::test]
async fn only_resumes_and_delivery_updates_commit_without_waiting_for_the_disk() {
    /// Calls `sql` in a transaction: the answer and `synchronous_commit` before the commit.
    async fn call(
        conn: &mut PgConnection,
        sql: &'static str,
        request: serde_json::Value,
    ) -> (serde_json::Value, String) {
        let mut tx = conn.begin().await.expect("begin");
        let answer: serde_json::Value = sqlx::query_scalar(sql)
            .bind(request)
            .fetch_one(&mut *tx)
            .await
            .expect("call");
        let setting: String = sqlx::query_scalar("show synchronous_commit")
            .fetch_one(&mut *tx)
            .await
            .expect("show");
        tx.commit().await.expect("commit");
        (answer, setting)
    }
    let database = TestDatabase::migrated().await;
    let store = PgStore::connect(&database.url(), 2).await.expect("connect");
    let BeginOutcome::Waiting { session, .. } = store
        .enqueue_turn(&inbound("queued", t0()), &settings(), t0())
        .await
        .expect("enqueue")
    else {
        panic!("expected a message waiting for its resume")
    };
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    // The tests' server runs without waiting for its disk at all (scripts/test): this connection
    // starts from the default a real server has.
    sqlx::raw_sql("set synchronous_commit = on")
        .execute(&mut conn)
        .await
        .expect("set");
    let settings = serde_json::json!({
        "persona": "aria", "known_processes": ["initial"], "initial_process": "initial",
        "subprocesses": [], "session_timeout_ms": 3_600_000, "lease_ms": 120_000,
        "history_limit": 20, "history_region": null,
    });

    let resume = serde_json::json!({"session_id": session.0, "now": t0(), "settings": settings});
    let (answer, setting) = call(&mut conn, "select public.soul_resume_turn($1)", resume).await;
    assert_eq!(
        (answer["outcome"].as_str(), setting.as_str()),
        (Some("started"), "off")
    );
    let after: String = sqlx::query_scalar("show synchronous_commit")
        .fetch_one(&mut conn)
        .await
        .expect("show");
    assert_eq!(after, "on");

    let delivery = serde_json::json!({
        "id": null, "provider_id": "SM-nobody", "status": "delivered", "error": null, "now": t0(),
    });
    let deliveries = serde_json::json!({"updates": [delivery]});
    let (answer, setting) = call(
        &mut conn,
        "select public.soul_update_deliveries($1)",
        deliveries,
    )
    .await;
    assert_eq!(
        (answer["applied"].clone(), setting.as_str()),
        (serde_json::json!([false]), "off")
    );

    let begin = serde_json::json!({
        "address": "+15550000002", "body": "hello", "external_id": "SM-begin",
        "received_at": t0(), "now": t0(), "settings": settings,
    });
    let (answer, setting) = call(&mut conn, "select public.soul_begin_turn($1)", begin).await;
    assert_eq!(
        (answer["outcome"].as_str(), setting.as_str()),
        (Some("started"), "on")
    );

    let opt_out = serde_json::json!({"address": "+15550000002", "opted_out": true, "now": t0()});
    let (_, setting) = call(&mut conn, "select public.soul_set_opt_out($1)", opt_out).await;
    assert_eq!(setting, "on");
}

/// A message that starts at once is inserted as started, and its commit marks it done in its
/// page without a new index entry (heap-only): one insert and one heap-only update per turn on
/// `inbound_messages` (the `waiting` flag, `migrations/20260101000100_schema.sql`). A message
/// sent during a turn waits in the queue behind it and is started by that turn's commit, and one
/// sent after both are done starts at once again.
#[tokio::test]
async fn a_message_is_inserted_started_and_marked_done_in_place() {
    /// Calls `sql` in a transaction: the answer, and the queue's rows inserted, updated and
    /// updated heap-only by it.
    async fn call(
        conn: &mut PgConnection,
        sql: &'static str,
        request: serde_json::Value,
    ) -> (serde_json::Value, (i64, i64, i64)) {
        // The backend's counts since its statistics were last reported, earlier transactions'
        // included: the call's are the difference.
        const COUNTS: &str = "select pg_stat_get_xact_tuples_inserted(t),
                pg_stat_get_xact_tuples_updated(t), pg_stat_get_xact_tuples_hot_updated(t)
              from (select 'public.inbound_messages'::regclass::oid as t) q";
        let mut tx = conn.begin().await.expect("begin");
        let before: (i64, i64, i64) = sqlx::query_as(COUNTS)
            .fetch_one(&mut *tx)
            .await
            .expect("statistics");
        let answer: serde_json::Value = sqlx::query_scalar(sql)
            .bind(request)
            .fetch_one(&mut *tx)
            .await
            .expect("call");
        let after: (i64, i64, i64) = sqlx::query_as(COUNTS)
            .fetch_one(&mut *tx)
            .await
            .expect("statistics");
        tx.commit().await.expect("commit");
        let writes = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        (answer, writes)
    }
    let database = TestDatabase::migrated().await;
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let settings = serde_json::json!({
        "persona": "aria", "known_processes": ["initial"], "initial_process": "initial",
        "subprocesses": [], "session_timeout_ms": 3_600_000, "lease_ms": 120_000,
        "history_limit": 20, "history_region": null,
    });
    let begin = |sid: &str| {
        serde_json::json!({
            "address": "+15550000003", "body": "hello", "external_id": sid,
            "received_at": t0(), "now": t0(), "settings": settings,
        })
    };
    let commit = |turn: &serde_json::Value| {
        serde_json::json!({
            "session_id": turn["session"]["id"], "lease_token": turn["lease"]["token"],
            "replies": [], "now": t0(), "settings": settings,
            "changes": {
                "memories": [], "soul_memory": [], "process_memory": [], "process_state": null,
                "snapshot": null, "schedule": [], "cancel_events": [],
            },
        })
    };

    let (first, writes) = call(
        &mut conn,
        "select public.soul_begin_turn($1)",
        begin("SM-1"),
    )
    .await;
    assert_eq!(
        (first["outcome"].as_str(), writes),
        (Some("started"), (1, 0, 0))
    );
    let (second, writes) = call(
        &mut conn,
        "select public.soul_begin_turn($1)",
        begin("SM-2"),
    )
    .await;
    assert_eq!(
        (second["outcome"].as_str(), writes),
        (Some("queued"), (1, 0, 0))
    );

    let (answer, writes) = call(
        &mut conn,
        "select public.soul_commit_turn($1)",
        commit(&first["turn"]),
    )
    .await;
    let next = &answer["next"];
    assert_eq!(
        (
            next["inbound"]["id"].as_str(),
            next["resumed"].as_bool(),
            writes
        ),
        (second["inbound_id"].as_str(), Some(false), (0, 2, 1)),
        "the first done in place, the second taken from the queue: {answer}"
    );
    let (answer, writes) = call(
        &mut conn,
        "select public.soul_commit_turn($1)",
        commit(next),
    )
    .await;
    assert_eq!((answer["next"].is_null(), writes), (true, (0, 1, 1)));

    let (third, writes) = call(
        &mut conn,
        "select public.soul_begin_turn($1)",
        begin("SM-3"),
    )
    .await;
    assert_eq!(
        (third["outcome"].as_str(), writes),
        (Some("started"), (1, 0, 0))
    );
    let states: Vec<String> =
        sqlx::query_scalar("select status from public.inbound_messages order by seq")
            .fetch_all(&mut conn)
            .await
            .expect("statuses");
    assert_eq!(states, ["done", "done", "started"]);
}

/// A role, status or kind outside its list is refused with `check_violation` on every column that
/// has one, and the listed values go in: the lists are domains, not table checks
/// (`migrations/20260101000100_schema.sql`).
#[tokio::test]
async fn roles_statuses_and_kinds_outside_their_lists_are_refused() {
    let database = TestDatabase::migrated().await;
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    sqlx::raw_sql(
        "insert into public.user_sessions (id, phone_number, assigned_persona)
           values ('00000000-0000-0000-0000-000000000001', '+15550000009', 'aria')",
    )
    .execute(&mut conn)
    .await
    .expect("session");
    let refused = [
        "insert into public.messages (session_id, role, content)
           values ('00000000-0000-0000-0000-000000000001', 'robot', 'x')",
        "insert into public.inbound_messages (session_id, body, received_at, status, waiting)
           values ('00000000-0000-0000-0000-000000000001', 'x', now(), 'lost', false)",
        "insert into public.inbound_messages (session_id, body, received_at, kind)
           values ('00000000-0000-0000-0000-000000000001', 'x', now(), 'call')",
        "insert into public.outbound_messages (id, session_id, body, status)
           values (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'x', 'read')",
    ];
    for sql in refused {
        let error = sqlx::raw_sql(sql).execute(&mut conn).await.expect_err(sql);
        let code = error
            .as_database_error()
            .and_then(|error| error.code())
            .map(|code| code.into_owned());
        assert_eq!(code.as_deref(), Some("23514"), "{sql}: {error}");
    }
    sqlx::raw_sql(
        "insert into public.messages (session_id, role, content)
           values ('00000000-0000-0000-0000-000000000001', 'assistant', 'x');
         insert into public.inbound_messages (session_id, body, received_at, status, waiting)
           values ('00000000-0000-0000-0000-000000000001', 'x', now(), 'done', false);
         insert into public.outbound_messages (id, session_id, body, status)
           values (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'x', 'delivered')",
    )
    .execute(&mut conn)
    .await
    .expect("listed values");
}

/// Every function of ours runs with a fixed, empty search_path (nothing a caller puts on the path
/// can stand in for what it calls), except the small SQL helpers, which must have none so that
/// PostgreSQL inlines them (`migrations/20260101000200_functions.sql`).
#[tokio::test]
async fn functions_fix_their_search_path_except_the_inlined_helpers() {
    let database = TestDatabase::migrated().await;
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let functions: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
        "select p.proname::text, p.proconfig from pg_proc p \
         join pg_namespace n on n.oid = p.pronamespace \
         where n.nspname = 'public' and p.proname like 'soul\\_%' order by 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("functions");
    let inlined = [
        "soul_delivery_rank",
        "soul_message_json",
        "soul_ms",
        "soul_outbound_json",
        "soul_session_json",
        "soul_session_number",
    ];
    assert!(functions.len() > inlined.len(), "{functions:?}");
    for (name, config) in &functions {
        if inlined.contains(&name.as_str()) {
            assert_eq!(config, &None, "{name} must stay inlinable");
        } else {
            assert_eq!(
                config.as_deref(),
                Some(&["search_path=\"\""[..].to_owned()][..]),
                "{name}"
            );
        }
    }
    for name in inlined {
        assert!(functions.iter().any(|(n, _)| n == name), "{name} exists");
    }
}

/// The runner applies every migration to an empty database, records them where the Supabase CLI
/// does, and is idempotent; its embedded list matches `migrations/`.
#[tokio::test]
async fn migration_runner_applies_each_file_once() {
    let files: Vec<String> = migration_files()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let embedded: Vec<String> = migrations::MIGRATIONS
        .iter()
        .map(|m| format!("{}_{}.sql", m.version, m.name))
        .collect();
    assert_eq!(embedded, files);
    for (migration, (_, sql)) in migrations::MIGRATIONS.iter().zip(migration_files()) {
        assert_eq!(migration.sql, sql);
    }

    let database = TestDatabase::empty().await;
    let store = PgStore::connect(&database.url(), 2).await.expect("connect");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate again");
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let versions: Vec<String> = sqlx::query_scalar(
        "select version from supabase_migrations.schema_migrations order by version",
    )
    .fetch_all(&mut conn)
    .await
    .expect("versions");
    let expected: Vec<&str> = migrations::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, expected);
    let BeginOutcome::Started(_) = store
        .begin_turn(&inbound("hi", t0()), &settings(), t0())
        .await
        .expect("begin")
    else {
        panic!("expected a started turn")
    };
}

/// A session's working-memory snapshot is one row, which each turn's commit updates where it lies
/// (`migrations/20260101000100_schema.sql`): deleting and inserting it again left a dead kilobyte
/// per turn.
#[tokio::test]
async fn a_sessions_snapshot_is_one_row_updated_in_place() {
    let database = TestDatabase::migrated().await;
    let store = PgStore::connect(&database.url(), 2).await.expect("connect");
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let mut rows = Vec::new();
    for (n, body) in ["one", "two", "three"].into_iter().enumerate() {
        let at = t0() + Duration::seconds(i64::try_from(n).expect("small"));
        let BeginOutcome::Started(turn) = store
            .begin_turn(&inbound(body, at), &settings(), at)
            .await
            .expect("begin")
        else {
            panic!("expected a started turn")
        };
        if n > 0 {
            let loaded = turn
                .snapshot
                .as_ref()
                .expect("the previous turn's snapshot");
            assert_eq!(loaded.len(), n, "the newest snapshot is loaded");
        }
        let mut commit = TurnCommit::new(&turn);
        let mut memory = soul_engine::WorkingMemory::new("aria");
        for said in 0..=n {
            memory = memory.with_memory(Memory::new(Role::User, format!("{said}"), at));
        }
        commit.changes.snapshot = Some(memory);
        store
            .commit_turn(&commit, &settings(), at)
            .await
            .expect("commit");
        let row: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as("select id, seq from public.working_memory_snapshots")
                .fetch_all(&mut conn)
                .await
                .expect("snapshot rows");
        rows.push(row);
    }
    assert_eq!(rows[0].len(), 1, "{rows:?}");
    assert!(rows.iter().all(|row| *row == rows[0]), "{rows:?}");
}

/// A server that stops answering (hung, or cut off by the network) fails each operation after
/// the operation time-out, as retryable, instead of holding its caller for ever; once it answers
/// again, so does the store, on fresh connections. On a cluster of the test's own, since the
/// server is frozen.
#[tokio::test]
async fn a_hung_server_times_out_and_the_store_recovers() {
    let cluster = Cluster::start();
    let store = PgStore::connect(&cluster.url(), 4)
        .await
        .unwrap()
        .with_operation_timeout(std::time::Duration::from_millis(500));
    store.migrate().await.unwrap();
    let address = Address::new("+14155550123");
    assert!(store.session(&address).await.unwrap().is_none());

    cluster.freeze();
    for _ in 0..2 {
        // Twice: once on the idle connection, once on a new one the kernel accepts for the
        // frozen server.
        let outcome =
            tokio::time::timeout(std::time::Duration::from_secs(30), store.session(&address))
                .await
                .expect("the store gives up by itself");
        let error = outcome.unwrap_err();
        assert!(error.is_retryable(), "{error}");
    }
    cluster.thaw();
    assert!(store.session(&address).await.unwrap().is_none());
}

/// Regression: the reserved intake connections were a ceiling. With all of them held by
/// acknowledgements waiting on one session's row lock, every other person's acknowledgement
/// waited too, although the shared connections were free.
#[tokio::test]
async fn an_acknowledgement_borrows_a_shared_connection_when_the_intake_ones_are_busy() {
    let database = TestDatabase::migrated().await;
    let store = Arc::new(PgStore::connect(&database.url(), 4).await.unwrap());
    let settings = settings();
    let busy = Address::new("+15550000101");
    let first = Inbound {
        from: busy.clone(),
        line: Default::default(),
        persona: None,
        ..inbound("first", t0())
    };
    store.enqueue_turn(&first, &settings, t0()).await.unwrap();

    // Another process holds the busy session's row: its enqueues wait for the lock.
    let mut holder = PgConnection::connect_with(&database.options())
        .await
        .unwrap();
    sqlx::query("begin").execute(&mut holder).await.unwrap();
    sqlx::query("select 1 from public.user_sessions where phone_number = $1 for update")
        .bind(busy.as_str())
        .execute(&mut holder)
        .await
        .unwrap();
    let mut blocked = Vec::new();
    for i in 0..soul_persistence::INTAKE_CONNECTIONS {
        let store = store.clone();
        let settings = settings.clone();
        let message = Inbound {
            from: busy.clone(),
            line: Default::default(),
            persona: None,
            ..inbound(&format!("blocked {i}"), t0())
        };
        blocked.push(tokio::spawn(async move {
            store.enqueue_turn(&message, &settings, t0()).await
        }));
    }
    // Until every intake connection waits on the lock (seen from outside the holder's
    // transaction, which keeps one snapshot of pg_stat_activity).
    let mut observer = PgConnection::connect_with(&database.options())
        .await
        .unwrap();
    let waiting = "select count(*) from pg_catalog.pg_stat_activity
                   where wait_event_type = 'Lock' and query like '%soul_begin_turn%'";
    let all_waiting = async {
        while sqlx::query_scalar::<_, i64>(waiting)
            .fetch_one(&mut observer)
            .await
            .unwrap()
            < i64::try_from(soul_persistence::INTAKE_CONNECTIONS).unwrap()
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), all_waiting)
        .await
        .expect("the intake connections wait on the lock");

    let other = Inbound {
        from: Address::new("+15550000102"),
        line: Default::default(),
        persona: None,
        ..inbound("unrelated", t0())
    };
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.enqueue_turn(&other, &settings, t0()),
    )
    .await
    .expect("acknowledged while the intake connections wait on the lock")
    .unwrap();
    assert!(
        matches!(outcome, BeginOutcome::Waiting { .. }),
        "{outcome:?}"
    );

    sqlx::query("rollback").execute(&mut holder).await.unwrap();
    for handle in blocked {
        let outcome = handle.await.unwrap().unwrap();
        assert!(
            matches!(outcome, BeginOutcome::Waiting { .. }),
            "{outcome:?}"
        );
    }
}
