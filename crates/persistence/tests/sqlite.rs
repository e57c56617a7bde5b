//! The conformance suite on the embedded SQLite store: a new database file per test.

use std::sync::Arc;

use soul_persistence::conformance::Harness;
use soul_persistence::{SqliteStore, Store, StoreFuture};

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
    use soul_persistence::{Address, Inbound, Processes, TurnSettings};
    let harness = harness().await;
    let from = Address::new("+15550000001");
    {
        let store = harness.open().await.expect("open");
        let message = Inbound {
            from: from.clone(),
            body: "hi".into(),
            external_id: None,
            received_at: Utc::now(),
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

/// A file made by a build before event turns (schema version 1) is upgraded in place on open.
#[tokio::test]
async fn version_one_file_is_upgraded() {
    use chrono::Utc;
    use soul_persistence::{Address, BeginOutcome, Inbound, Processes, TurnSettings};
    use sqlx::{Connection, SqliteConnection};
    let harness = harness().await;
    let path = harness.dir.path().join("souls.db");
    let from = Address::new("+15550000001");
    let settings = TurnSettings::new("aria", Processes::new("initial", ["initial"]));
    let message = |body: &str| Inbound {
        from: from.clone(),
        body: body.into(),
        external_id: None,
        received_at: Utc::now(),
    };
    {
        let store = harness.open().await.expect("open");
        store
            .begin_turn(&message("old"), &settings, Utc::now())
            .await
            .expect("begin");
    }
    // Back to version 1: the columns version 2 added are dropped.
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    sqlx::raw_sql(
        "alter table inbound_messages drop column event;
         alter table inbound_messages drop column kind;
         pragma user_version = 1;",
    )
    .execute(&mut conn)
    .await
    .expect("downgrade");
    conn.close().await.expect("close");

    let store = harness.open().await.expect("reopen");
    let queued = store
        .begin_turn(&message("new"), &settings, Utc::now())
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }), "{queued:?}");
    let export = store
        .export_user(&from)
        .await
        .expect("export")
        .expect("kept");
    assert_eq!(export["inbound_messages"][0]["kind"], "message");
    assert_eq!(export["inbound_messages"][1]["kind"], "message");
}
