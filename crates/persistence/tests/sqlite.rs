//! The conformance suite on the embedded SQLite store: a new database file per test.

use std::sync::Arc;

use soul_persistence::conformance::Harness;
use soul_persistence::{Address, SqliteStore, Store, StoreFuture};
use sqlx::{Connection, SqliteConnection};

struct SqliteHarness {
    dir: tempfile::TempDir,
}

impl Harness for SqliteHarness {
    fn open(&self) -> StoreFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let store = SqliteStore::open(self.dir.path().join("souls.db")).await?;
            Ok(Arc::new(store) as Arc<dyn Store>)
        })
    }

    fn overwrite_snapshot<'a>(
        &'a self,
        address: &'a Address,
        json: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let url = format!("sqlite://{}", self.dir.path().join("souls.db").display());
            let mut conn = SqliteConnection::connect(&url).await.expect("connect");
            sqlx::query(
                "update working_memory_snapshots set snapshot = ?1
                   where session_id = (select id from user_sessions where phone_number = ?2)",
            )
            .bind(json)
            .bind(address.as_str())
            .execute(&mut conn)
            .await
            .expect("overwrite the snapshot");
            drop(conn.close().await);
            Ok(())
        })
    }
}

async fn harness() -> SqliteHarness {
    SqliteHarness {
        dir: tempfile::tempdir().expect("temporary directory"),
    }
}

soul_persistence::conformance_suite!(harness());

#[tokio::test]
async fn reopening_keeps_data_and_schema() {
    use chrono::Utc;
    use soul_persistence::{Inbound, Processes, TurnSettings};
    let harness = harness().await;
    let from = Address::new("+15550000001");
    {
        let store = harness.open().await.expect("open");
        let message = Inbound {
            from: from.clone(),
            body: "hi".into(),
            external_id: None,
            received_at: Utc::now(),
            opt_out: None,
        };
        let settings = TurnSettings::new("aria", Processes::new("initial", ["initial"]));
        store
            .begin_turn(&message, &settings, Utc::now())
            .await
            .expect("begin");
    }
    let store = harness.open().await.expect("reopen");
    let session = store.session(&from).await.expect("session").expect("kept");
    assert_eq!(session.total_messages, 1);
}

/// A file made by the first schema (user_version 1) is brought up to date when opened: its
/// messages stay, a reply it left pending is claimed for a minute from when it was stored (as
/// the earlier rule let it be sent again), and it ends with the same indexes as a new file.
#[tokio::test]
async fn a_file_from_the_first_schema_is_upgraded_when_opened() {
    let old = harness().await;
    let path = old.dir.path().join("souls.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("create");
    sqlx::raw_sql(include_str!("../src/sqlite/schema.sql"))
        .execute(&mut conn)
        .await
        .expect("the first schema");
    sqlx::raw_sql(
        "insert into user_sessions (id, phone_number, assigned_persona, first_contact_at, \
           last_active_at) values ('00000000-0000-0000-0000-000000000001', '+15550000001', 'aria', \
           '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z'); \
         insert into messages (id, session_id, role, content, created_at) \
           values ('00000000-0000-0000-0000-000000000002', \
           '00000000-0000-0000-0000-000000000001', 'user', 'hi', '2026-01-01T00:00:00.000000Z'); \
         insert into outbound_messages (id, session_id, body, created_at, updated_at) \
           values ('00000000-0000-0000-0000-000000000003', \
           '00000000-0000-0000-0000-000000000001', 'hello', '2026-01-01T00:59:30.250000Z', \
           '2026-01-01T00:59:30.250000Z');",
    )
    .execute(&mut conn)
    .await
    .expect("a conversation");
    drop(conn.close().await);

    let indexes = |path: std::path::PathBuf| async move {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        let version: i64 = sqlx::query_scalar("pragma user_version")
            .fetch_one(&mut conn)
            .await
            .expect("version");
        let names: Vec<String> = sqlx::query_scalar(
            "select name from sqlite_master where type = 'index' and tbl_name = 'messages' \
               and name not like 'sqlite_%' order by name",
        )
        .fetch_all(&mut conn)
        .await
        .expect("indexes");
        drop(conn.close().await);
        (version, names)
    };

    let store = old.open().await.expect("open and upgrade");
    let history = store
        .history(&soul_persistence::Address::new("+15550000001"), None, 0)
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
    let at = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&chrono::Utc)
    };
    let before = at("2026-01-01T01:00:30.249999Z");
    assert!(
        store
            .claim_pending_deliveries(before, before, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let expired = at("2026-01-01T01:00:30.250000Z");
    let claimed = store
        .claim_pending_deliveries(expired, expired, 10)
        .await
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["hello"]
    );
    drop(store);
    let upgraded = indexes(path).await;
    assert_eq!(
        upgraded,
        (
            5,
            vec![
                "idx_messages_created".to_owned(),
                "idx_messages_session".to_owned(),
            ]
        )
    );

    let fresh = harness().await;
    drop(fresh.open().await.expect("a new file"));
    assert_eq!(indexes(fresh.dir.path().join("souls.db")).await, upgraded);
}
