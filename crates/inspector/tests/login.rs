//! The inspector's login over real HTTP, served with the client's address as the gateway serves
//! it: failed logins limited per address and overall (the clock is the test's, so the window
//! passes without waiting), sessions that survive a restart but not a new token, and the
//! cookie's `Secure` attribute.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use reqwest::StatusCode;
use soul_inspector::{Access, Inspector, LoginLimit};
use soul_persistence::{Inspect, SqliteStore};
use soul_testkit::soul::TestClock;

const TOKEN: &str = "correct-horse-battery-staple";

struct Served {
    url: String,
    clock: Arc<TestClock>,
}

/// `configure`d inspector with `token` on `store`, served on a loopback port with the client's
/// address.
async fn serve(
    store: Arc<SqliteStore>,
    token: &str,
    configure: impl FnOnce(Inspector) -> Inspector,
) -> Served {
    let clock = Arc::new(TestClock::at(
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap(),
    ));
    let inspector = Inspector::new(
        store as Arc<dyn Inspect>,
        Access::Token(token.to_owned()),
        clock.clone(),
    );
    let router = soul_inspector::router(configure(inspector));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Served { url, clock }
}

async fn store(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(dir.path().join("soul.db")).await.unwrap())
}

/// A client connecting from 127.0.0.`last` (every 127/8 address is the loopback).
fn client(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(IpAddr::from([127, 0, 0, last]))
        .build()
        .unwrap()
}

async fn log_in(client: &reqwest::Client, served: &Served, token: &str) -> reqwest::Response {
    client
        .post(format!("{}/login", served.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap()
}

fn small_limit() -> LoginLimit {
    LoginLimit {
        per_address: 3,
        overall: 5,
        window: Duration::minutes(10),
    }
}

#[tokio::test]
async fn failed_logins_from_one_address_are_limited_until_the_window_passes() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(store(&dir).await, TOKEN, |i| {
        i.with_login_limit(small_limit())
    })
    .await;
    let guesser = client(1);
    for _ in 0..3 {
        let wrong = log_in(&guesser, &served, "guess").await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    served.clock.advance(Duration::minutes(4));
    // Refused without the token being looked at: the right one too.
    for token in ["guess", TOKEN] {
        let limited = log_in(&guesser, &served, token).await;
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()["retry-after"], "360");
        assert!(limited.headers().get("set-cookie").is_none());
    }
    // Another address logs in.
    let operator = log_in(&client(2), &served, TOKEN).await;
    assert_eq!(operator.status(), StatusCode::SEE_OTHER);
    // Once the failures have left the window, the first address may try again.
    served.clock.advance(Duration::minutes(6));
    let back = log_in(&guesser, &served, TOKEN).await;
    assert_eq!(back.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn failed_logins_from_every_address_together_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(store(&dir).await, TOKEN, |i| {
        i.with_login_limit(small_limit())
    })
    .await;
    for last in 1..=5 {
        let wrong = log_in(&client(last), &served, "guess").await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = log_in(&client(6), &served, TOKEN).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "600");
}

/// A script guessing the token as a bearer token is limited as a login form is, and counts
/// against the same limit.
#[tokio::test]
async fn wrong_bearer_tokens_are_limited_as_wrong_logins_are() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(store(&dir).await, TOKEN, |i| {
        i.with_login_limit(small_limit())
    })
    .await;
    let guesser = client(1);
    let audit = |token: &str| {
        guesser
            .get(format!("{}/api/audit", served.url))
            .bearer_auth(token)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            audit("guess").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for token in ["guess", TOKEN] {
        let limited = audit(token).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()["retry-after"], "600");
    }
    // The form from that address is refused too; another address's script gets in.
    let form = log_in(&guesser, &served, TOKEN).await;
    assert_eq!(form.status(), StatusCode::TOO_MANY_REQUESTS);
    let script = client(2)
        .get(format!("{}/api/audit", served.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
}

/// The session cookie of a login with `token`, as the browser sends it back.
async fn session_cookie(served: &Served, token: &str) -> String {
    let login = log_in(&client(1), served, token).await;
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

async fn home(served: &Served, cookie: &str) -> StatusCode {
    client(1)
        .get(format!("{}/", served.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_login_survives_a_restart_and_ends_when_the_token_is_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve(store(&dir).await, TOKEN, |i| i).await;
    let cookie = session_cookie(&first, TOKEN).await;
    assert_eq!(home(&first, &cookie).await, StatusCode::OK);

    // Another process with the same token: still logged in.
    let restarted = serve(store(&dir).await, TOKEN, |i| i).await;
    assert_eq!(home(&restarted, &cookie).await, StatusCode::OK);

    // A new token: everyone logs in again.
    let rotated = serve(store(&dir).await, "a-new-token", |i| i).await;
    assert_eq!(home(&rotated, &cookie).await, StatusCode::SEE_OTHER);
    let renewed = session_cookie(&rotated, "a-new-token").await;
    assert_eq!(home(&rotated, &renewed).await, StatusCode::OK);
    assert_eq!(home(&restarted, &renewed).await, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_cookie_is_secure_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    for secure in [false, true] {
        let served = serve(store(&dir).await, TOKEN, |i| i.with_secure_cookie(secure)).await;
        let login = log_in(&client(1), &served, TOKEN).await;
        let set = login.headers()["set-cookie"].to_str().unwrap().to_owned();
        let attributes: Vec<&str> = set.split("; ").skip(1).collect();
        assert_eq!(attributes.contains(&"Secure"), secure, "{set}");
        assert!(attributes.contains(&"HttpOnly") && attributes.contains(&"SameSite=Strict"));
    }
}
