//! The PostgREST transport: each call is one `POST /rpc/soul_*` to Supabase's REST API
//! (PostgREST), with the `postgrest` crate, instead of a statement on a database connection; so
//! a turn still costs one request to begin and one to commit.
//!
//! The function's one argument is named in the body (`{"request": …}`), which PostgREST matches
//! to the function's parameter (no `Prefer: params=single-object` needed). The service key is
//! sent as `apikey` (for Supabase's gateway) and as the bearer token (for PostgREST, which takes
//! its role from it: `service_role` bypasses row-level security).

use std::fmt;
use std::time::Duration as StdDuration;

use postgrest::Postgrest;
use serde_json::{Value, json};

use super::{Call, SqlFunctionStore, Transport};
use crate::{RestError, Result, StoreError, TransportError};

/// A key that never leaves this module except in the request headers.
#[derive(Clone)]
struct ServiceKey(String);

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the REST API is and how to authenticate to it.
#[derive(Clone)]
pub struct SupabaseConfig {
    rest_url: String,
    key: ServiceKey,
    timeout: StdDuration,
}

impl fmt::Debug for SupabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseConfig")
            .field("rest_url", &self.rest_url)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SupabaseConfig {
    /// How long one request may take unless [`SupabaseConfig::with_timeout`] says otherwise.
    pub const DEFAULT_TIMEOUT: StdDuration = StdDuration::from_secs(30);

    /// The REST API at `rest_url` exactly (a PostgREST server, or `https://<ref>.supabase.co/
    /// rest/v1`), authenticated with `service_key`.
    pub fn new(rest_url: impl Into<String>, service_key: impl Into<String>) -> Result<Self> {
        let rest_url = rest_url.into().trim_end_matches('/').to_owned();
        if !(rest_url.starts_with("http://") || rest_url.starts_with("https://")) {
            return Err(StoreError::Invalid(
                "the Supabase REST URL must start with http:// or https://".to_owned(),
            ));
        }
        let key = service_key.into();
        // `postgrest` panics on a header value it cannot encode; refuse such a key here instead.
        // The message does not quote it.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StoreError::Invalid(
                "the Supabase service key is empty or not a printable ASCII token".to_owned(),
            ));
        }
        Ok(SupabaseConfig {
            rest_url,
            key: ServiceKey(key),
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// The project at `project_url` (`https://<ref>.supabase.co`): its REST API is at
    /// `/rest/v1`.
    pub fn from_project_url(
        project_url: impl Into<String>,
        service_key: impl Into<String>,
    ) -> Result<Self> {
        let project_url = project_url.into();
        Self::new(
            format!("{}/rest/v1", project_url.trim_end_matches('/')),
            service_key,
        )
    }

    /// Gives up on a request after `timeout` (its outcome is then unknown: see
    /// [`StoreError::is_retryable`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: StdDuration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The REST API's URL.
    pub fn rest_url(&self) -> &str {
        &self.rest_url
    }
}

/// The store on Supabase, over its REST API: the SQL functions called over PostgREST's RPC
/// ([`PostgrestRpc`]).
pub type SupabaseStore = SqlFunctionStore<PostgrestRpc>;

/// [`SupabaseStore`]'s transport: PostgREST's RPC endpoints. A failed call is a typed
/// [`StoreError::Rest`] or [`StoreError::RestUnavailable`], retryable only for idempotent calls.
#[derive(Clone)]
pub struct PostgrestRpc {
    client: Postgrest,
    config: SupabaseConfig,
}

impl fmt::Debug for PostgrestRpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Postgrest` holds the key in its default headers; only the config (redacted) is shown.
        f.debug_struct("PostgrestRpc")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SqlFunctionStore<PostgrestRpc> {
    /// A store for `config`. Nothing is sent until the first operation.
    pub fn new(config: SupabaseConfig) -> Self {
        let client = Postgrest::new(config.rest_url.clone())
            .insert_header("apikey", &config.key.0)
            .insert_header("Authorization", format!("Bearer {}", config.key.0));
        SqlFunctionStore {
            transport: PostgrestRpc { client, config },
        }
    }
}

impl Transport for PostgrestRpc {
    /// Sends the call and returns the answer's JSON. A failure's log line names the function,
    /// never the key or the payload.
    async fn call(&self, call: Call, request: Value) -> Result<Value> {
        let function = call.function();
        let idempotent = call.idempotent();
        let body = json!({ "request": request }).to_string();
        let request = self.client.rpc(function, body).build();
        let answer = async {
            let response = request.timeout(self.config.timeout).send().await?;
            let status = response.status().as_u16();
            response.bytes().await.map(|body| (status, body))
        }
        .await;
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let timed_out = error.is_timeout();
                tracing::warn!(
                    call = function,
                    timeout = timed_out,
                    answer_cut_short = error.is_body(),
                    "Supabase request failed"
                );
                // The function names the call; the URL stays out of the error.
                return Err(TransportError::into_store_error(
                    error.without_url(),
                    timed_out,
                    idempotent,
                ));
            }
        };
        if !(200..300).contains(&status) {
            let api = RestError::parse(status, &body);
            let code = api.code.as_deref().unwrap_or("");
            tracing::warn!(call = function, status, code, problem = ?api.problem(), "Supabase refused a request");
            return Err(api.into_store_error(idempotent));
        }
        // An empty body (a function returning nothing) is `null`.
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&body)?)
    }
}
