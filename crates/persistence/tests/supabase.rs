//! The conformance suite on the Supabase store, through a real PostgREST-compatible server
//! (`postrust`, see `soul_testkit::postrest`) on a fresh database per test, plus what only the
//! REST API has: requests per operation, what the anon role gets, and typed errors.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use postgrest::Postgrest;
use soul_engine::{Memory, Role};
use soul_persistence::conformance::Harness;
use soul_persistence::{
    Address, BeginOutcome, Erasure, EventOutcome, Inbound, Inspect, MemoryChange, NewEvent,
    ProcessMemoryChange, Processes, RestProblem, Store, StoreError, StoreFuture, SupabaseConfig,
    SupabaseStore, TurnCommit, TurnSettings,
};
use soul_testkit::postgres::TestDatabase;
use soul_testkit::postrest::{PostgrestServer, RequestCounter, token};
use sqlx::{Connection, PgConnection};

/// One test's database and the server in front of it. The server is declared first so that it
/// stops before the database is dropped.
struct SupabaseHarness {
    server: PostgrestServer,
    database: TestDatabase,
}

impl Harness for SupabaseHarness {
    fn open(&self) -> StoreFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let config = SupabaseConfig::new(self.server.url(), token("service_role"))?;
            Ok(Arc::new(SupabaseStore::new(config)) as Arc<dyn Store>)
        })
    }

    fn open_inspect(&self) -> StoreFuture<'_, Arc<dyn Inspect>> {
        Box::pin(async move {
            let config = SupabaseConfig::new(self.server.url(), token("service_role"))?;
            Ok(Arc::new(SupabaseStore::new(config)) as Arc<dyn Inspect>)
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

async fn harness() -> SupabaseHarness {
    let database = TestDatabase::migrated().await;
    SupabaseHarness {
        server: PostgrestServer::start(&database).await,
        database,
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

/// The requests `counter` saw since `before` requests.
fn since(counter: &RequestCounter, before: usize) -> Vec<String> {
    counter.requests().split_off(before)
}

/// A store whose requests pass through a [`RequestCounter`] on their way to `harness`'s server.
async fn counted(harness: &SupabaseHarness) -> (RequestCounter, SupabaseStore) {
    let counter = RequestCounter::start(&harness.server.url()).await;
    let config = SupabaseConfig::new(counter.url(), token("service_role")).expect("config");
    (counter, SupabaseStore::new(config))
}

/// Begin and commit are one HTTP request each, counted by a proxy between the store and the
/// server: a started begin, a queued begin, a commit that starts the next queued turn, a plain
/// commit, and the begin of a due event's turn.
#[tokio::test]
async fn begin_and_commit_are_one_request_each() {
    let harness = harness().await;
    let (counter, store) = counted(&harness).await;
    let settings = settings();
    let begin = vec!["POST /rpc/soul_begin_turn".to_owned()];
    let commit_request = vec!["POST /rpc/soul_commit_turn".to_owned()];

    let before = counter.count();
    let BeginOutcome::Started(turn) = store
        .begin_turn(&inbound("one", t0()), &settings, t0())
        .await
        .expect("begin")
    else {
        panic!("expected a started turn")
    };
    assert_eq!(since(&counter, before), begin, "a started begin");

    let before = counter.count();
    let queued = store
        .begin_turn(&inbound("two", t0()), &settings, t0())
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }));
    assert_eq!(since(&counter, before), begin, "a queued begin");

    let mut commit = TurnCommit::new(&turn);
    commit.replies = vec![
        Memory::new(Role::Assistant, "a", t0()),
        Memory::new(Role::Assistant, "b", t0()),
    ];
    commit.changes.soul_memory = vec![MemoryChange::Set {
        key: "k".into(),
        value: serde_json::json!(1),
    }];
    commit.changes.process_memory = vec![ProcessMemoryChange {
        process: "summary".into(),
        change: MemoryChange::Set {
            key: "since".into(),
            value: serde_json::json!(1),
        },
    }];
    let before = counter.count();
    let next = store
        .commit_turn(&commit, &settings, t0())
        .await
        .expect("commit");
    assert_eq!(
        since(&counter, before),
        commit_request,
        "a commit with replies, memories and the next turn"
    );
    let next = next.next.expect("the queued message");
    assert_eq!(next.subprocess_memories["summary"]["since"], 1);

    let mut commit = TurnCommit::new(&next);
    commit.changes.schedule = vec![check_in(t0())];
    let before = counter.count();
    store
        .commit_turn(&commit, &settings, t0())
        .await
        .expect("commit");
    assert_eq!(since(&counter, before), commit_request, "a plain commit");

    let due = store
        .claim_due_events(t0(), 1, Duration::minutes(1))
        .await
        .expect("claim");
    let before = counter.count();
    let EventOutcome::Started(turn) = store
        .begin_event_turn(&due[0], &settings, t0())
        .await
        .expect("begin event")
    else {
        panic!("expected a started event turn")
    };
    assert_eq!(
        since(&counter, before),
        ["POST /rpc/soul_begin_event_turn"],
        "an event's begin"
    );
    let before = counter.count();
    store
        .commit_turn(&TurnCommit::new(&turn), &settings, t0())
        .await
        .expect("commit");
    assert_eq!(since(&counter, before), commit_request, "an event's commit");
}

/// The tables and `soul_*` functions of the public schema, from the catalog, so that a table or
/// function added later is checked too.
async fn exposed(
    database: &TestDatabase,
) -> (
    Vec<(String, String)>,
    Vec<(String, Vec<String>, Vec<String>)>,
) {
    let mut conn = PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    // Each table with its first column, which a filtered update or delete names.
    let tables: Vec<(String, String)> = sqlx::query_as(
        "select t.tablename::text, a.attname::text
           from pg_catalog.pg_tables t
           join pg_catalog.pg_attribute a
             on a.attrelid = ('public.' || t.tablename)::regclass and a.attnum = 1
          where t.schemaname = 'public' order by 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("tables");
    // Each function with its argument names and a well-formed value of each argument's type:
    // a value that does not parse is refused before the privilege check, which would hide it.
    let functions: Vec<(String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "select p.proname::text, coalesce(p.proargnames, '{}')::text[],
           array(
             select case
                 when ty.typtype = 'c' then '(' || repeat(',', (
                   select count(*)::int - 1 from pg_catalog.pg_attribute a
                    where a.attrelid = ty.typrelid and a.attnum > 0 and not a.attisdropped)) || ')'
                 when ty.typname = 'uuid' then '00000000-0000-0000-0000-000000000000'
                 when ty.typname = 'timestamptz' then '2026-01-01T00:00:00Z'
                 when ty.typname = 'bool' then 'false'
                 when ty.typname in ('int2', 'int4', 'int8', 'numeric', 'float8') then '0'
                 when ty.typname in ('json', 'jsonb') then '{}'
                 else 'x'
               end
               from unnest(p.proargtypes) with ordinality as u(t, n)
               join pg_catalog.pg_type ty on ty.oid = u.t
              order by u.n)::text[]
           from pg_catalog.pg_proc p
           join pg_catalog.pg_namespace n on n.oid = p.pronamespace
          where n.nspname = 'public' and p.proname like 'soul\\_%'
          order by 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("functions");
    drop(conn.close().await);
    (tables, functions)
}

/// A token for the anon role (and no token at all, which PostgREST runs as anon) gets nothing
/// from any table or function, while the data is there: reads and writes of every table are
/// refused for want of privileges (401, code 42501), and so is every `soul_*` function (EXECUTE
/// was revoked). On Supabase, where anon holds table privileges by default, row-level security
/// with no policy makes the same reads empty; an empty answer would pass this test as well.
#[tokio::test]
async fn anon_gets_nothing_from_any_table_or_function() {
    let harness = harness().await;
    let service = harness.open().await.expect("open");
    let BeginOutcome::Started(turn) = service
        .begin_turn(&inbound("secret", t0()), &settings(), t0())
        .await
        .expect("begin")
    else {
        panic!("expected a started turn")
    };
    let mut commit = TurnCommit::new(&turn);
    commit.replies = vec![Memory::new(Role::Assistant, "reply", t0())];
    commit.changes.schedule = vec![check_in(t0() + Duration::hours(1))];
    service
        .commit_turn(&commit, &settings(), t0())
        .await
        .expect("commit");

    let (tables, functions) = exposed(&harness.database).await;
    assert!(tables.len() >= 9 && functions.len() >= 20, "{tables:?}");
    let anon = token("anon");
    let clients = [
        (
            "anon token",
            Postgrest::new(harness.server.url()).insert_header("apikey", &anon),
            Some(anon.as_str()),
        ),
        ("no token", Postgrest::new(harness.server.url()), None),
    ];
    for (who, client, bearer) in &clients {
        let auth = |builder: postgrest::Builder| match bearer {
            Some(bearer) => builder.auth(bearer),
            None => builder,
        };
        for (table, column) in &tables {
            let reads = auth(client.from(table).select("*"));
            let writes = [
                auth(client.from(table).insert("{}")),
                auth(client.from(table).not("is", column, "null").update("{}")),
                auth(client.from(table).not("is", column, "null").delete()),
            ];
            let response = reads.execute().await.expect("request");
            let status = response.status().as_u16();
            let body = response.text().await.expect("body");
            assert!(
                (matches!(status, 401 | 403) && body.contains("42501"))
                    || ((200..300).contains(&status) && body.trim() == "[]"),
                "{who} read {table}: {status} {body}"
            );
            for write in writes {
                let response = write.execute().await.expect("request");
                let status = response.status().as_u16();
                let body = response.text().await.expect("body");
                assert!(
                    matches!(status, 401 | 403) && body.contains("42501"),
                    "{who} wrote {table}: {status} {body}"
                );
            }
        }
        for (function, names, samples) in &functions {
            // Every argument named: enough for the server to find the function and for the
            // database to refuse EXECUTE before running anything.
            let body: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(samples)
                .map(|(name, sample)| {
                    let value = match sample.as_str() {
                        "{}" => serde_json::json!({}),
                        other => serde_json::json!(other),
                    };
                    (name.clone(), value)
                })
                .collect();
            let call = auth(client.rpc(function, serde_json::Value::Object(body).to_string()));
            let response = call.execute().await.expect("request");
            let status = response.status().as_u16();
            let body = response.text().await.expect("body");
            assert!(
                matches!(status, 401 | 403) && body.contains("42501"),
                "{who} called {function}: {status} {body}"
            );
        }
    }

    // Through the store, the refusal is a typed error naming the key as the problem.
    let config = SupabaseConfig::new(harness.server.url(), anon.as_str()).expect("config");
    let refused = SupabaseStore::new(config)
        .session(&Address::new("+15550000001"))
        .await;
    let Err(StoreError::Rest { source: api, .. }) = &refused else {
        panic!("expected a refusal: {refused:?}")
    };
    assert_eq!(api.problem(), RestProblem::Unauthorized);
    assert!(!refused.is_err_and(|error| error.is_retryable()));
    // And the data is still there for the service role.
    assert!(
        service
            .session(&Address::new("+15550000001"))
            .await
            .expect("session")
            .is_some()
    );
}

/// A database without the migrations answers PGRST202 (no such function) and PGRST205 (no such
/// table), which the store reports as the schema missing, not as a bad request.
#[tokio::test]
async fn missing_migrations_are_named_as_such() {
    let database = TestDatabase::empty().await;
    let server = PostgrestServer::start(&database).await;
    let store = SupabaseStore::new(
        SupabaseConfig::new(server.url(), token("service_role")).expect("config"),
    );
    let begin = store
        .begin_turn(&inbound("hi", t0()), &settings(), t0())
        .await;
    let session = store.session(&Address::new("+15550000001")).await;
    for outcome in [begin.map(|_| ()), session.map(|_| ())] {
        let Err(StoreError::Rest { source: api, .. }) = &outcome else {
            panic!("expected a refusal: {outcome:?}")
        };
        assert_eq!(api.problem(), RestProblem::SchemaMissing, "{api}");
        assert!(api.to_string().contains("reload schema"), "{api}");
    }
}

/// The service key appears in no `Debug` output, and a server that cannot be reached is a
/// retryable error for a read and not for a begin (which may have been applied).
#[tokio::test]
async fn key_stays_secret_and_unreachable_is_typed() {
    let key = token("service_role");
    let config = SupabaseConfig::from_project_url("http://127.0.0.1:9", key.as_str())
        .expect("config")
        .with_timeout(std::time::Duration::from_secs(5));
    assert_eq!(config.rest_url(), "http://127.0.0.1:9/rest/v1");
    let store = SupabaseStore::new(config.clone());
    for shown in [format!("{config:?}"), format!("{store:?}")] {
        assert!(!shown.contains(&key), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
    let read = store.session(&Address::new("+15550000001")).await;
    assert!(
        matches!(
            read,
            Err(StoreError::RestUnavailable {
                idempotent: true,
                ..
            })
        ),
        "{read:?}"
    );
    assert!(read.is_err_and(|error| error.is_retryable()));
    let begin = store
        .begin_turn(&inbound("hi", t0()), &settings(), t0())
        .await;
    let Err(error) = begin else {
        panic!("nothing listens there")
    };
    assert!(
        matches!(
            error,
            StoreError::RestUnavailable {
                idempotent: false,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable(), "{error:?}");
    assert!(!format!("{error:?} {error}").contains(&key));
    // Nor the address, which the URL of a read carries as a filter.
    let Err(read) = store.session(&Address::new("+15550000001")).await else {
        panic!("nothing listens there")
    };
    assert!(
        !format!("{read:?} {read}").contains("15550000001"),
        "{read:?}"
    );

    assert!(matches!(
        SupabaseConfig::new("http://127.0.0.1:9", "bad key\n"),
        Err(StoreError::Invalid(_))
    ));
}

/// The reads and the erasure are one RPC request each, as every other operation is: `session`
/// (of a known and of an unknown address), `history` and `erase_user` call `soul_session`,
/// `soul_history` and `soul_erase_user`, the functions the PostgreSQL store calls.
#[tokio::test]
async fn reads_and_erasure_are_one_function_call_each() {
    let harness = harness().await;
    let (counter, store) = counted(&harness).await;
    let address = Address::new("+15550000001");
    store
        .begin_turn(&inbound("one", t0()), &settings(), t0())
        .await
        .expect("begin");

    let before = counter.count();
    assert!(store.session(&address).await.expect("session").is_some());
    assert_eq!(since(&counter, before), ["POST /rpc/soul_session"]);
    let before = counter.count();
    let history = store.history(&address, None, 10).await.expect("history");
    assert_eq!(history.len(), 1, "the message the begin stored");
    assert_eq!(since(&counter, before), ["POST /rpc/soul_history"]);
    let before = counter.count();
    assert!(matches!(
        store
            .erase_user(&address, t0() + settings().lease_for)
            .await
            .expect("erase"),
        Erasure::Erased { .. }
    ));
    assert_eq!(since(&counter, before), ["POST /rpc/soul_erase_user"]);
    let before = counter.count();
    assert!(store.session(&address).await.expect("session").is_none());
    assert_eq!(since(&counter, before), ["POST /rpc/soul_session"]);
}
