//! PostgreSQL for tests: a fresh database per test, and a proxy that counts round trips.
//!
//! The server comes from `TEST_DATABASE_URL` (`scripts/test` starts a throwaway one when it is
//! not set). Each [`TestDatabase`] is a new database cloned from a template that has every
//! migration of `migrations/` applied; the template is built once per migration set (its name
//! carries a hash of the files) and the test database is dropped when the value is dropped.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The variable naming the server (a connection string whose user may create databases and
/// roles).
pub const URL_VARIABLE: &str = "TEST_DATABASE_URL";

/// An arbitrary constant identifying the template-building lock.
const TEMPLATE_LOCK: i64 = 0x5011_7e57_0000_0001;

/// The server's connection options, from [`URL_VARIABLE`].
///
/// # Panics
/// When the variable is missing or malformed: run the tests through `scripts/test`.
pub fn server_options() -> PgConnectOptions {
    let url = std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{URL_VARIABLE} is not set: run the tests with scripts/test, which starts PostgreSQL"
        )
    });
    PgConnectOptions::from_str(&url)
        .unwrap_or_else(|error| panic!("{URL_VARIABLE} is not a PostgreSQL URL: {error}"))
}

/// `options` as a connection string, which is what the stores connect with.
pub fn url(options: &PgConnectOptions) -> String {
    options.to_url_lossy().into()
}

fn migrations_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
}

/// The migration files, in order, with their contents.
///
/// # Panics
/// When `migrations/` cannot be read.
pub fn migration_files() -> Vec<(String, String)> {
    let dir = migrations_dir();
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.to_owned();
            if !name.ends_with(".sql") {
                return None;
            }
            let sql = std::fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
            Some((name, sql))
        })
        .collect();
    files.sort();
    files
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(options: &PgConnectOptions) -> PgConnection {
    PgConnection::connect_with(options)
        .await
        .unwrap_or_else(|error| panic!("connecting to the test PostgreSQL: {error}"))
}

async fn run(conn: &mut PgConnection, sql: &str) {
    conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap_or_else(|error| panic!("running `{sql}`: {error}"));
}

/// The template database with every migration applied, built if missing.
async fn template(server: &PgConnectOptions) -> String {
    let files = migration_files();
    let mut hasher = DefaultHasher::new();
    files.hash(&mut hasher);
    let name = format!("soul_template_{:016x}", hasher.finish());

    let mut admin = connect(server).await;
    run(
        &mut admin,
        &format!("select pg_advisory_lock({TEMPLATE_LOCK})"),
    )
    .await;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap_or_else(|error| panic!("looking for the template: {error}"));
    if !exists {
        // Built under a temporary name and renamed when complete, so that a run that dies
        // half-way never leaves a template that looks usable.
        let building = format!("soul_building_{}", unique_suffix());
        run(&mut admin, &format!("create database {building}")).await;
        let mut conn = connect(&server.clone().database(&building)).await;
        for (file, sql) in &files {
            conn.execute(sqlx::AssertSqlSafe(sql.clone()))
                .await
                .unwrap_or_else(|error| panic!("migration {file}: {error}"));
        }
        drop(conn.close().await);
        run(
            &mut admin,
            &format!("alter database {building} rename to {name}"),
        )
        .await;
    }
    run(
        &mut admin,
        &format!("select pg_advisory_unlock({TEMPLATE_LOCK})"),
    )
    .await;
    drop(admin.close().await);
    name
}

/// A database of its own for one test, migrated; dropped on drop.
#[derive(Debug)]
pub struct TestDatabase {
    server: PgConnectOptions,
    name: String,
}

impl TestDatabase {
    /// A fresh database with every migration applied.
    pub async fn migrated() -> Self {
        let server = server_options();
        let template = template(&server).await;
        Self::create(server, &format!("template {template}")).await
    }

    /// A fresh, empty database (for testing the migrations themselves).
    pub async fn empty() -> Self {
        Self::create(server_options(), "template template0").await
    }

    async fn create(server: PgConnectOptions, clause: &str) -> Self {
        let name = format!("soul_test_{}", unique_suffix());
        let mut admin = connect(&server).await;
        run(&mut admin, &format!("create database {name} {clause}")).await;
        drop(admin.close().await);
        TestDatabase { server, name }
    }

    /// Options for connecting to this database as the server's user.
    pub fn options(&self) -> PgConnectOptions {
        self.server.clone().database(&self.name)
    }

    /// A connection string for this database as the server's user.
    pub fn url(&self) -> String {
        url(&self.options())
    }

    /// This database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Overwrites the stored working-memory snapshot of `phone_number`'s session with `json`, as
    /// a release with another snapshot format would have left it (the stores only store readable
    /// ones).
    pub async fn overwrite_snapshot(&self, phone_number: &str, json: &str) {
        let mut conn = connect(&self.options()).await;
        sqlx::query(
            "update public.working_memory_snapshots set snapshot = $1::jsonb
               where session_id = (select id from public.user_sessions where phone_number = $2)",
        )
        .bind(json)
        .bind(phone_number)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|error| panic!("overwriting a snapshot: {error}"));
        drop(conn.close().await);
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime: a thread with its own runtime does it.
        let server = self.server.clone();
        let sql = format!("drop database if exists {} with (force)", self.name);
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    if let Ok(mut admin) = PgConnection::connect_with(&server).await {
                        drop(admin.execute(sqlx::AssertSqlSafe(sql)).await);
                        drop(admin.close().await);
                    }
                });
            }
        });
        drop(dropper.join());
    }
}

/// A loopback proxy in front of the server that counts the round trips clients make: frontend
/// `Sync` and `Query` messages, each of which the server answers with one `ReadyForQuery`.
#[derive(Debug, Clone)]
pub struct RoundTripCounter {
    port: u16,
    count: Arc<AtomicU64>,
}

impl RoundTripCounter {
    /// Starts the proxy in front of `server` (host and port; no TLS through the proxy).
    pub async fn start(server: &PgConnectOptions) -> Self {
        let upstream = format!("{}:{}", server.get_host(), server.get_port());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("binding the proxy: {error}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("proxy address: {error}"))
            .port();
        let count = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(proxy(client, server, Arc::clone(&counter)));
            }
        });
        RoundTripCounter { port, count }
    }

    /// `options` pointed at the proxy instead of the server.
    pub fn route(&self, options: PgConnectOptions) -> PgConnectOptions {
        options
            .host("127.0.0.1")
            .port(self.port)
            .ssl_mode(PgSslMode::Disable)
    }

    /// Round trips so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

async fn proxy(client: TcpStream, server: TcpStream, count: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut parser = FrontendParser::default();
        let mut buffer = vec![0_u8; 16 * 1024];
        loop {
            let read = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let chunk = buffer.get(..read).unwrap_or_default();
            count.fetch_add(parser.feed(chunk), Ordering::SeqCst);
            if server_write.write_all(chunk).await.is_err() {
                break;
            }
        }
        drop(server_write.shutdown().await);
    };
    let downstream = async move {
        drop(tokio::io::copy(&mut server_read, &mut client_write).await);
        drop(client_write.shutdown().await);
    };
    tokio::join!(upstream, downstream);
}

/// Splits the client's byte stream into protocol messages. The first messages have no type byte
/// (startup, or an SSL/GSS request followed by the startup); every later one is a type byte and
/// a length that counts itself.
#[derive(Default)]
struct FrontendParser {
    started: bool,
    pending: Vec<u8>,
}

const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;

impl FrontendParser {
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        self.pending.extend_from_slice(bytes);
        let mut round_trips = 0;
        loop {
            let header = if self.started { 5 } else { 8 };
            let Some(head) = self.pending.get(..header) else {
                break;
            };
            let len_at = usize::from(self.started);
            let mut len_bytes = [0_u8; 4];
            len_bytes.copy_from_slice(head.get(len_at..len_at + 4).unwrap_or(&[0; 4]));
            let len = u32::from_be_bytes(len_bytes) as usize;
            if len < 4 {
                // Not the protocol: stop counting rather than loop.
                self.pending.clear();
                break;
            }
            let total = len_at + len;
            if self.pending.len() < total {
                break;
            }
            if self.started {
                if matches!(head.first(), Some(b'S' | b'Q')) {
                    round_trips += 1;
                }
            } else {
                let mut code = [0_u8; 4];
                code.copy_from_slice(head.get(4..8).unwrap_or(&[0; 4]));
                let code = u32::from_be_bytes(code);
                self.started = code != SSL_REQUEST && code != GSS_REQUEST;
            }
            self.pending.drain(..total);
        }
        round_trips
    }
}

#[cfg(test)]
mod tests {
    use super::FrontendParser;

    fn typed(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut message = vec![kind];
        message.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        message.extend_from_slice(payload);
        message
    }

    #[test]
    fn counts_syncs_and_queries_across_split_reads() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&8_u32.to_be_bytes());
        stream.extend_from_slice(&super::SSL_REQUEST.to_be_bytes());
        stream.extend_from_slice(&9_u32.to_be_bytes());
        stream.extend_from_slice(&196_608_u32.to_be_bytes());
        stream.push(0);
        stream.extend(typed(b'P', b"select 1\0\0\0"));
        stream.extend(typed(b'S', b""));
        stream.extend(typed(b'Q', b"select 1\0"));
        stream.extend(typed(b'X', b""));
        let mut parser = FrontendParser::default();
        let counted: u64 = stream.chunks(3).map(|chunk| parser.feed(chunk)).sum();
        assert_eq!(counted, 2);
    }
}
