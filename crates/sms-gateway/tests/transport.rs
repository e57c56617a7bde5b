//! The gateway's HTTP transport under clients that do not play along, over real TCP against the
//! binary: headers that trickle in or never come, bodies shorter than their length, more idle
//! connections than the process has descriptors, and SIGTERM while such clients hold on. No
//! client, signed or not, may hold the gateway; and a shutdown ends within `SHUTDOWN_TIMEOUT`.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::time::Duration;

use common::{EchoModel, Gateway, PATIENCE, Settings, TWILIO_FROM, eventually, twilio};
use soul_testkit::twilio::TwilioDouble;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

struct Fixture {
    _dir: TempDir,
    twilio: TwilioDouble,
    model: EchoModel,
    settings: Settings,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with_model(EchoModel::start().await).await
    }

    async fn with_model(model: EchoModel) -> Fixture {
        let dir = TempDir::new().unwrap();
        let twilio = twilio().await;
        let database = format!("sqlite://{}/soul.db", dir.path().display());
        let settings = Settings::new(dir.path(), &database, &twilio, &model.base_url());
        Fixture {
            _dir: dir,
            twilio,
            model,
            settings,
        }
    }
}

/// A connection to `gateway`, its request line and some headers sent, the headers not ended.
async fn partial_headers(gateway: &Gateway) -> TcpStream {
    let mut stream = connect(gateway).await;
    stream
        .write_all(b"POST /twilio/sms HTTP/1.1\r\nHost: soul.example\r\n")
        .await
        .unwrap();
    stream
}

/// A connection to `gateway` with a whole request head that announces 100 bytes of body, and 10
/// of them sent.
async fn partial_body(gateway: &Gateway) -> TcpStream {
    let mut stream = connect(gateway).await;
    stream
        .write_all(
            b"POST /twilio/sms HTTP/1.1\r\nHost: soul.example\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
              Body=hello",
        )
        .await
        .unwrap();
    stream
}

async fn connect(gateway: &Gateway) -> TcpStream {
    TcpStream::connect(gateway.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads `stream` until the gateway closes it, sending the next byte of `trickle` (cycled)
/// every 100 ms meanwhile; what the gateway sent before closing. Panics when it is still open
/// after [`PATIENCE`].
async fn until_closed(stream: &mut TcpStream, trickle: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + PATIENCE;
    let mut answer = Vec::new();
    let mut buffer = [0; 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next = trickle.iter().cycle();
    loop {
        assert!(
            Instant::now() < deadline,
            "the gateway kept the connection open"
        );
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return answer,
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
            },
            _ = tick.tick() => {
                if let Some(byte) = next.next()
                    && stream.write_all(&[*byte]).await.is_err()
                {
                    return answer;
                }
            }
        }
    }
}

/// A client sending its headers a byte at a time, one that connects and sends nothing, and one
/// idle after an answer are all cut once `HEADER_READ_TIMEOUT` has passed; a body shorter than
/// its `Content-Length` gets 408 once `REQUEST_TIMEOUT` has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off() {
    let fx = Fixture::new().await;
    let settings = fx
        .settings
        .clone()
        .set("HEADER_READ_TIMEOUT", "1s")
        .set("REQUEST_TIMEOUT", "1s");
    let gateway = Gateway::start(&settings).await;

    let mut trickling = partial_headers(&gateway).await;
    let mut silent = connect(&gateway).await;
    let mut idle = connect(&gateway).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: soul.example\r\n\r\n")
        .await
        .unwrap();
    let mut slow_body = partial_body(&gateway).await;

    // Never a blank line: the headers never end.
    until_closed(&mut trickling, b"X-Slowly: aaaaaaaaaa").await;
    until_closed(&mut silent, b"").await;
    let answered = String::from_utf8(until_closed(&mut idle, b"").await).unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let answered = String::from_utf8(until_closed(&mut slow_body, b"").await).unwrap();
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    let health = unpooled()
        .get(format!("{}/healthz", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// A client that opens a connection per request: one kept from before may be closed by the
/// gateway's idle cut at the moment it is reused.
fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// With an open-file limit of 256, 400 clients that connect and send nothing do not take the
/// descriptors the gateway needs: at most half the limit is served at once, idle ones are cut
/// after `HEADER_READ_TIMEOUT`, and meanwhile `/healthz` and a signed webhook are answered and the
/// turn (store file, model, Twilio) runs. The idle clients stay connected throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_open_file_limit_do_not_take_the_gateway() {
    let fx = Fixture::new().await;
    let settings = fx
        .settings
        .clone()
        .set("HEADER_READ_TIMEOUT", "1s")
        .set("LOG_FORMAT", "json");
    let gateway = Gateway::start_with_open_files(&settings, 256).await;
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(connect(&gateway).await);
    }

    let http = unpooled();
    let health = tokio::time::timeout(
        PATIENCE,
        http.get(format!("{}/healthz", gateway.url)).send(),
    )
    .await
    .expect("/healthz answered while the idle clients hold on")
    .unwrap();
    assert_eq!(health.status(), 200);
    let from = "+14155550301";
    let webhook = fx
        .twilio
        .inbound_sms(from, TWILIO_FROM, "still there <<c1>>")
        .sign(&gateway.webhook_url("/twilio/sms"), fx.twilio.auth_token());
    let status = tokio::time::timeout(PATIENCE, common::post_as_twilio(&http, &webhook))
        .await
        .expect("the webhook answered while the idle clients hold on");
    assert_eq!(status, Some(200));
    let sent = fx.twilio.wait_for_messages(1, PATIENCE).await;
    assert_eq!(sent[0].body, "echo <<c1>>");

    let logs = gateway.logs();
    assert!(logs.contains("\"max_connections\":128"), "{logs}");
    assert!(!logs.contains("Too many open files"), "{logs}");
    drop(idle);
}

/// SIGTERM while clients hold a partial request (headers without their end, a body shorter than
/// its length), with time-outs longer than the test: the gateway stops listening, closes the
/// connection that sent nothing at once, and exits once `SHUTDOWN_TIMEOUT` has passed, non-zero,
/// saying what it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_within_the_shutdown_timeout_whatever_clients_hold() {
    let fx = Fixture::new().await;
    let settings = fx
        .settings
        .clone()
        .set("HEADER_READ_TIMEOUT", "10m")
        .set("REQUEST_TIMEOUT", "10m")
        .set("SHUTDOWN_TIMEOUT", "2s");
    let mut gateway = Gateway::start(&settings).await;
    let _headers = partial_headers(&gateway).await;
    let _body = partial_body(&gateway).await;
    let _silent = connect(&gateway).await;
    // Connections are accepted in order: once one opened after these is answered, these are
    // being served.
    let health = unpooled()
        .get(format!("{}/healthz", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let status = gateway.terminate();
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let logs = gateway.logs();
    assert!(
        logs.contains("SHUTDOWN_TIMEOUT was reached with 2 connection(s) still open and 0 turn(s)"),
        "{logs}"
    );
}

/// SIGTERM while a turn waits for a model slower than `SHUTDOWN_TIMEOUT`: the gateway does not
/// wait past it, and exits non-zero, saying a turn was left (its message is stored, and resumed
/// once its lease expires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_turn_past_the_shutdown_timeout_exits_non_zero() {
    let slow = EchoModel::start_slow(Duration::from_secs(600)).await;
    let fx = Fixture::with_model(slow).await;
    let settings = fx.settings.clone().set("SHUTDOWN_TIMEOUT", "1s");
    let mut gateway = Gateway::start(&settings).await;
    let webhook = fx
        .twilio
        .inbound_sms("+14155550302", TWILIO_FROM, "slow one <<s1>>")
        .sign(&gateway.webhook_url("/twilio/sms"), fx.twilio.auth_token());
    assert_eq!(gateway.post(&webhook).await.0, 200);
    eventually("the turn at the model", || async {
        (!fx.model.answered().is_empty()).then_some(())
    })
    .await;

    let status = gateway.terminate();
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let logs = gateway.logs();
    assert!(
        logs.contains("still open and 1 turn(s) or send(s) still running"),
        "{logs}"
    );
}
