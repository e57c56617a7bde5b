//! The scenarios of several souls on one gateway, run on every store: routing by the number
//! texted (`LINES`), and a soul assigned at first contact by a weighted split (`SOUL`) that a
//! person keeps across sessions and rule changes, until their soul is no longer deployed.

use std::time::Duration;

use serde_json::Value;
use soul_testkit::twilio::TwilioDouble;

use super::data_requests::export_all;
use super::{EchoModel, Gateway, Settings, TWILIO_FROM, eventually};

/// Sage's line and Pip's line.
pub const SAGE_LINE: &str = "+15005550101";
/// Pip's line.
pub const PIP_LINE: &str = "+15005550102";

async fn text(gateway: &Gateway, twilio: &TwilioDouble, from: &str, to: &str, body: &str) -> u16 {
    let request = twilio
        .inbound_sms(from, to, body)
        .sign(&gateway.webhook_url("/twilio/sms"), twilio.auth_token());
    gateway.post(&request).await.0
}

/// What `number` was sent, as (line it came from, text), in order.
fn sent_to(twilio: &TwilioDouble, number: &str) -> Vec<(String, String)> {
    twilio
        .messages()
        .into_iter()
        .filter(|message| message.to == number)
        .map(|message| (message.from.unwrap_or_default(), message.body))
        .collect()
}

/// Waits until `number` has been sent `count` messages.
async fn wait_sent(twilio: &TwilioDouble, number: &str, count: usize) -> Vec<(String, String)> {
    eventually(&format!("{count} messages to a person"), || async {
        let sent = sent_to(twilio, number);
        (sent.len() >= count).then_some(sent)
    })
    .await
}

/// The soul whose persona the model was given for the message holding `token`.
async fn soul_asked(model: &EchoModel, token: &str) -> String {
    let souls = eventually(&format!("the model asked about {token}"), || async {
        let souls = model.souls_asked(token);
        (!souls.is_empty()).then_some(souls)
    })
    .await;
    assert!(
        souls.iter().all(|soul| *soul == souls[0]),
        "one soul per turn: {souls:?}"
    );
    souls[0].clone()
}

/// (line, persona, session number, process) of each of `number`'s conversations, by line.
fn conversations(settings: &Settings, number: &str) -> Vec<(String, String, i64, String)> {
    let export = export_all(settings, number).expect("the person is stored");
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    export
        .as_array()
        .expect("one entry per conversation")
        .iter()
        .map(|conversation| {
            let session = &conversation["session"];
            (
                text(&session["line"]),
                text(&session["persona"]),
                session["metadata"]["session_number"].as_i64().unwrap_or(0),
                text(&conversation["mental_process_state"]["name"]),
            )
        })
        .collect()
}

/// Two numbers, two souls, one person texting both: two conversations, each answered by its
/// line's soul and from the number texted, and a STOP on one line leaves the other answering; a
/// message to a number on no line is refused (404, counted as `unrouted`) and nothing of it is
/// stored.
pub async fn two_lines_two_souls(settings: &Settings, model: &EchoModel, twilio: &TwilioDouble) {
    let settings = settings
        .clone()
        .set("LINES", &format!("{SAGE_LINE}=sage, {PIP_LINE}=pip"))
        .unset("SOUL");
    let gateway = Gateway::start(&settings).await;
    let person = "+14155550601";
    assert_eq!(
        text(&gateway, twilio, person, SAGE_LINE, "hello <<s1>>").await,
        200
    );
    assert_eq!(
        text(&gateway, twilio, person, PIP_LINE, "hello <<p1>>").await,
        200
    );
    let sent = wait_sent(twilio, person, 2).await;
    assert_eq!(soul_asked(model, "<<s1>>").await, "Sage");
    assert_eq!(soul_asked(model, "<<p1>>").await, "Pip");
    let mut from: Vec<&str> = sent.iter().map(|(line, _)| line.as_str()).collect();
    from.sort_unstable();
    assert_eq!(
        from,
        [SAGE_LINE, PIP_LINE],
        "each reply from the number texted"
    );
    assert!(
        sent.contains(&(PIP_LINE.to_owned(), "echo <<p1>>".to_owned())),
        "{sent:?}"
    );

    // The next message on Pip's line continues Pip's conversation, from Pip's number.
    assert_eq!(
        text(&gateway, twilio, person, PIP_LINE, "more <<p2>>").await,
        200
    );
    let sent = wait_sent(twilio, person, 3).await;
    assert_eq!(sent[2], (PIP_LINE.to_owned(), "echo <<p2>>".to_owned()));
    assert_eq!(soul_asked(model, "<<p2>>").await, "Pip");
    let stored = conversations(&settings, person);
    let lines: Vec<(&str, &str)> = stored
        .iter()
        .map(|(line, persona, _, _)| (line.as_str(), persona.as_str()))
        .collect();
    assert_eq!(lines, [(SAGE_LINE, "sage"), (PIP_LINE, "pip")]);
    assert_eq!(stored[1].3, "study", "Pip's own process");

    // A STOP on Pip's line stops Pip's line only, as Twilio keeps a STOP per sender number.
    assert_eq!(text(&gateway, twilio, person, PIP_LINE, "STOP").await, 200);
    assert_eq!(
        text(&gateway, twilio, person, PIP_LINE, "still? <<p3>>").await,
        200
    );
    gateway
        .wait_metric("sms_gateway_turns_total{result=\"silent\"}", 2)
        .await;
    assert_eq!(
        text(&gateway, twilio, person, SAGE_LINE, "and you? <<s2>>").await,
        200
    );
    assert_eq!(soul_asked(model, "<<s2>>").await, "Sage");
    let sent = wait_sent(twilio, person, 4).await;
    assert_eq!(sent[3].0, SAGE_LINE, "Sage's line still answers");
    assert!(
        model.souls_asked("<<p3>>").is_empty(),
        "no model call once stopped"
    );
    assert_eq!(
        sent.iter().filter(|(line, _)| line == PIP_LINE).count(),
        2,
        "nothing more from Pip's line: {sent:?}"
    );

    let stranger = "+14155550602";
    let status = text(&gateway, twilio, stranger, "+15005550199", "anyone? <<u1>>").await;
    assert_eq!(status, 404);
    assert_eq!(
        gateway
            .metric("sms_gateway_inbound_total{outcome=\"unrouted\"}")
            .await,
        1
    );
    assert!(export_all(&settings, stranger).is_none(), "nothing stored");
    assert!(model.souls_asked("<<u1>>").is_empty());
}

/// FNV-1a, as the gateway splits first contacts: to check what a split would assign.
fn fnv1a(number: &str) -> u64 {
    number.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `sage=sage_weight,pip=pip_weight` assigns `number` to Sage.
fn split_gives_sage(number: &str, sage_weight: u64, pip_weight: u64) -> bool {
    fnv1a(number) % (sage_weight + pip_weight) < sage_weight
}

/// A weighted split assigns each newcomer a soul at first contact, and they keep it: after the
/// session timeout, and after the weights change so that the split would now give them another
/// soul. Once their soul is no longer deployed, the default soul answers them from its initial
/// process (with a warning in the log), and their assignment stays stored.
pub async fn first_contact_assignment_stays(
    settings: &Settings,
    model: &EchoModel,
    twilio: &TwilioDouble,
) {
    let people = [
        "+14155550614",
        "+14155550615",
        "+14155550616",
        "+14155550618",
    ];
    let first = settings
        .clone()
        .set("SOUL", "sage=50,pip=50")
        .set("SESSION_TIMEOUT", "1s");
    let gateway = Gateway::start(&first).await;
    let mut assigned = Vec::new();
    for (n, person) in people.iter().enumerate() {
        let token = format!("<<first{n}>>");
        let status = text(
            &gateway,
            twilio,
            person,
            TWILIO_FROM,
            &format!("hi {token}"),
        )
        .await;
        assert_eq!(status, 200);
        wait_sent(twilio, person, 1).await;
        let soul = soul_asked(model, &token).await;
        let expected = if split_gives_sage(person, 50, 50) {
            "Sage"
        } else {
            "Pip"
        };
        assert_eq!(soul, expected, "the split decides by the number");
        assigned.push(soul);
    }
    assert!(
        assigned.contains(&"Sage".to_owned()) && assigned.contains(&"Pip".to_owned()),
        "both souls got newcomers: {assigned:?}"
    );
    drop(gateway);

    // New weights that would give everyone Pip; the session timeout passes meanwhile.
    assert!(people.iter().all(|person| !split_gives_sage(person, 1, 99)));
    let second = first.clone().set("SOUL", "sage=1,pip=99");
    let gateway = Gateway::start(&second).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (n, person) in people.iter().enumerate() {
        let token = format!("<<second{n}>>");
        let status = text(
            &gateway,
            twilio,
            person,
            TWILIO_FROM,
            &format!("back {token}"),
        )
        .await;
        assert_eq!(status, 200);
        let sent = wait_sent(twilio, person, 2).await;
        assert_eq!(sent[1].0, TWILIO_FROM, "the default line's number");
        assert_eq!(
            soul_asked(model, &token).await,
            assigned[n],
            "the soul is kept"
        );
        let stored = conversations(&second, person);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].2, 2, "a new session began");
    }
    drop(gateway);

    // Pip is no longer deployed: Sage, the default soul, answers Pip's people.
    let third = first.clone().set("SOUL", "sage");
    let gateway = Gateway::start(&third).await;
    let (n, person) = people
        .iter()
        .enumerate()
        .find(|(n, _)| assigned[*n] == "Pip")
        .expect("someone has Pip");
    let token = format!("<<third{n}>>");
    assert_eq!(
        text(
            &gateway,
            twilio,
            person,
            TWILIO_FROM,
            &format!("still {token}")
        )
        .await,
        200
    );
    wait_sent(twilio, person, 3).await;
    assert_eq!(soul_asked(model, &token).await, "Sage");
    let stored = conversations(&third, person);
    assert_eq!(stored[0].1, "pip", "the assignment stays stored");
    assert_ne!(stored[0].3, "study", "not a process of Pip's");
    eventually("the warning logged", || async {
        gateway
            .logs()
            .contains("the conversation's soul is not deployed")
            .then_some(())
    })
    .await;
    assert!(!gateway.logs().contains(person), "no number in the log");
}
