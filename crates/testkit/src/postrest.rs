//! PostgREST for tests: a PostgREST-compatible server (`postrust`, from the crate
//! `postrust-server`) in front of a test database, tokens for its roles, and a proxy that counts
//! the requests a client makes.
//!
//! PostgREST itself is a Haskell binary that no registry here packages; `postrust` serves the
//! same REST surface (in its compatibility mode) and is installed by `scripts/test`. It serves at
//! the root rather than Supabase's `/rest/v1` and has no `apikey` gateway: the role comes from
//! the bearer token alone, as it does in PostgREST behind Supabase's gateway.

use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use tokio::net::TcpListener;

use crate::postgres::{TestDatabase, URL_VARIABLE};

/// The variable naming the `postrust` binary; without it, `~/.cargo/bin/postrust`.
pub const BINARY_VARIABLE: &str = "POSTRUST_SERVER";

/// The secret the test server verifies tokens with (HS256 needs at least 32 bytes).
const JWT_SECRET: &str = "soul-engine-test-secret-not-for-production-use";

/// How long a server may take to load its schema cache and listen.
const STARTUP: Duration = Duration::from_secs(60);

/// Where the binary is.
///
/// # Panics
/// When it is not there: run the tests with `scripts/test`, which installs it.
pub fn binary() -> PathBuf {
    let path = match std::env::var_os(BINARY_VARIABLE) {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
            .map(|cargo| cargo.join("bin").join("postrust"))
            .unwrap_or_else(|| PathBuf::from("postrust")),
    };
    assert!(
        path.is_file(),
        "the PostgREST-compatible server is missing at {} (set {BINARY_VARIABLE}, or run \
         scripts/test, which runs `cargo install postrust-server --version 3.1.0`)",
        path.display()
    );
    path
}

/// A signed HS256 token for `role`, valid for a day, as the test server accepts.
pub fn token(role: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({ "role": role, "iat": now, "exp": now + 86_400 });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes())
        .unwrap_or_else(|error| panic!("HMAC key: {error}"));
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// A `postrust` process serving one test database on a loopback port; killed on drop.
pub struct PostgrestServer {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
    database_url: String,
}

impl fmt::Debug for PostgrestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgrestServer")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The connection string of `database`: the server's, with the database's name.
fn database_url(database: &TestDatabase) -> String {
    let server = std::env::var(URL_VARIABLE)
        .unwrap_or_else(|_| panic!("{URL_VARIABLE} is not set: run the tests with scripts/test"));
    let mut url = url::Url::parse(&server)
        .unwrap_or_else(|error| panic!("{URL_VARIABLE} is not a URL: {error}"));
    url.set_path(&format!("/{}", database.name()));
    url.to_string()
}

/// A port nobody listens on now. Another process could take it before the server binds it; the
/// caller retries on that.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("finding a free port: {error}"))
}

fn new_log() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new().unwrap_or_else(|error| panic!("log file: {error}"))
}

/// Starts the server on `database_url` and `port`, logging to the end of `log`.
fn spawn(database_url: &str, port: u16, log: &tempfile::NamedTempFile) -> Child {
    let binary = binary();
    let append = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap_or_else(|error| panic!("log file: {error}"))
    };
    Command::new(&binary)
        // Only what is set here: a developer's own PGRST_* must not change the tests.
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("PGRST_COMPAT_MODE", "true")
        .env("PGRST_DB_SCHEMAS", "public")
        .env("PGRST_DB_ANON_ROLE", "anon")
        .env("PGRST_JWT_SECRET", JWT_SECRET)
        .env("PGRST_SERVER_HOST", "127.0.0.1")
        .env("PGRST_SERVER_PORT", port.to_string())
        .env("PGRST_DB_POOL", "10")
        .env("PGRST_LOG_LEVEL", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(append())
        .stderr(append())
        .spawn()
        .unwrap_or_else(|error| panic!("starting {}: {error}", binary.display()))
}

impl PostgrestServer {
    /// Starts the server on `database` (migrated: the schema cache is loaded at start) and waits
    /// until it answers. Requests without a token run as `anon`, as on Supabase.
    ///
    /// # Panics
    /// When the binary is missing or the server does not come up in time (its log is shown).
    pub async fn start(database: &TestDatabase) -> Self {
        Self::start_on(&database_url(database)).await
    }

    /// [`start`](Self::start) on the database at `database_url` (for the benchmarks, which run
    /// their own cluster).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub async fn start_on(database_url: &str) -> Self {
        let database_url = database_url.to_owned();
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = new_log();
            let child = spawn(&database_url, port, &log);
            let mut server = PostgrestServer {
                child,
                port,
                log,
                database_url: database_url.clone(),
            };
            if server.wait_ready().await {
                return server;
            }
            last_log = std::fs::read_to_string(server.log.path()).unwrap_or_default();
        }
        panic!("the PostgREST-compatible server did not start; its log:\n{last_log}");
    }

    /// Kills the server (SIGKILL), as a crash would: connections to it are refused until
    /// [`resume`](Self::resume).
    pub fn kill(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }

    /// Starts the killed server again, on the same port, and waits until it answers.
    ///
    /// # Panics
    /// When it does not come up in time (its log is shown).
    pub async fn resume(&mut self) {
        self.child = spawn(&self.database_url, self.port, &self.log);
        if !self.wait_ready().await {
            panic!(
                "the PostgREST-compatible server did not start again; its log:\n{}",
                std::fs::read_to_string(self.log.path()).unwrap_or_default()
            );
        }
    }

    /// Polls until the server answers over HTTP, it exits, or [`STARTUP`] passes.
    async fn wait_ready(&mut self) -> bool {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return false;
            }
            let answered = client
                .get(self.url())
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok();
            if answered {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The REST API's URL (the server's root).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for PostgrestServer {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// A loopback HTTP proxy that forwards every request to a server and records it, to count the
/// requests a client makes per operation.
#[derive(Debug, Clone)]
pub struct RequestCounter {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Forward {
    upstream: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<String>>>,
    /// Supabase's layout: the API under this path, and an `apikey` header required.
    supabase: Option<&'static str>,
}

/// Where Supabase serves the REST API.
const SUPABASE_REST_PATH: &str = "/rest/v1";

impl RequestCounter {
    /// Starts the proxy in front of `upstream` (an `http://` base URL).
    pub async fn start(upstream: &str) -> Self {
        Self::serve(upstream, None).await
    }

    /// Starts the proxy as Supabase's API gateway in front of `upstream`: its URL is a project
    /// URL (the API under `/rest/v1`), a request without an `apikey` header is refused with 401,
    /// and while `upstream` is down requests get 502.
    pub async fn supabase(upstream: &str) -> Self {
        Self::serve(upstream, Some(SUPABASE_REST_PATH)).await
    }

    async fn serve(upstream: &str, supabase: Option<&'static str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("binding the proxy: {error}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("proxy address: {error}"))
            .port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let forward = Forward {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            seen: Arc::clone(&seen),
            supabase,
        };
        let app = axum::Router::new()
            .fallback(forward_request)
            .with_state(forward);
        tokio::spawn(async move { drop(axum::serve(listener, app).await) });
        RequestCounter { port, seen }
    }

    /// The proxy's URL, to use instead of the server's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Every request so far, as `METHOD /path` (no query), in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        self.requests().len()
    }
}

async fn forward_request(
    axum::extract::State(forward): axum::extract::State<Forward>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    if let Ok(mut seen) = forward.seen.lock() {
        seen.push(format!("{} {}", parts.method, parts.uri.path()));
    }
    let answer = |status: u16, text: String| {
        axum::response::Response::builder()
            .status(status)
            .body(axum::body::Body::from(text))
            .unwrap_or_default()
    };
    let mut path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    if let Some(prefix) = forward.supabase {
        match path.strip_prefix(prefix) {
            Some(rest) if rest.starts_with('/') => path = rest,
            _ => return answer(404, "no route matched\n".to_owned()),
        }
        if !parts.headers.contains_key("apikey") {
            return answer(401, "no API key found in request\n".to_owned());
        }
    }
    let target = format!("{}{path}", forward.upstream);
    let bad_gateway = |error: &dyn fmt::Display| answer(502, format!("proxy: {error}"));
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => return bad_gateway(&error),
    };
    let mut headers = parts.headers;
    headers.remove(http::header::HOST);
    let answer = forward
        .client
        .request(parts.method, target)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => return bad_gateway(&error),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(error) => return bad_gateway(&error),
    };
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    // The body was read whole and is re-sent with its own length.
    response
        .headers_mut()
        .remove(http::header::TRANSFER_ENCODING);
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_three_base64url_parts_naming_the_role() {
        use base64::Engine as _;
        let token = super::token("anon");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = super::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap_or_else(|error| panic!("claims: {error}"));
        let claims: serde_json::Value =
            serde_json::from_slice(&claims).unwrap_or_else(|error| panic!("claims: {error}"));
        assert_eq!(claims["role"], "anon");
    }
}
