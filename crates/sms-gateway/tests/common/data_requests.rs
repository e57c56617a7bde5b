//! The data-request scenario every store runs: people text the gateway over HTTP, and the
//! operator runs `export` and `erase` (the real binary) on the same store meanwhile.

use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::Value;
use soul_testkit::twilio::TwilioDouble;

use super::{EchoModel, Gateway, PATIENCE, Settings, TWILIO_FROM, eventually, user_texts};

/// `sms-gateway ARGS` on `settings`' store, with nothing on standard input (no terminal).
pub fn run(settings: &Settings, args: &[&str]) -> Output {
    super::command(&settings.env)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the gateway binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `export NUMBER`'s conversation on the default line (the only line of the gateways here), or
/// `None` when nothing is stored under the number (exit status 1).
pub fn export(settings: &Settings, number: &str) -> Option<Value> {
    export_all(settings, number).map(|conversations| conversations[0].clone())
}

/// `export NUMBER`'s JSON: one entry per conversation (per line texted), or `None` when nothing
/// is stored under the number (exit status 1).
pub fn export_all(settings: &Settings, number: &str) -> Option<Value> {
    let output = run(settings, &["export", number]);
    match output.status.code() {
        Some(0) => Some(serde_json::from_slice(&output.stdout).expect("export writes JSON")),
        Some(1) if stderr(&output).contains("nothing is stored under that number") => None,
        _ => panic!("export failed: {output:?}\n{}", stderr(&output)),
    }
}

async fn text(gateway: &Gateway, twilio: &TwilioDouble, from: &str, body: &str) {
    let request = twilio
        .inbound_sms(from, TWILIO_FROM, body)
        .sign(&gateway.webhook_url("/twilio/sms"), twilio.auth_token());
    let (status, answer) = gateway.post(&request).await;
    assert_eq!(status, 200, "{answer}");
}

fn replies_to(twilio: &TwilioDouble, number: &str) -> Vec<String> {
    twilio
        .messages()
        .into_iter()
        .filter(|message| message.to == number)
        .map(|message| message.body)
        .collect()
}

/// Export and erase while the gateway serves: the export holds the person's conversation, the
/// replies and how they were delivered, and nothing of anyone else, on standard output or in a
/// new private file; erase refuses without a confirmation, refuses while the person's turn runs
/// (exit 75, nothing erased), then erases; someone who texted STOP keeps only that, and a message
/// from them afterwards is stored and not answered. Neither command's output nor the gateway's
/// log carries a number.
pub async fn export_and_erase(
    settings: &Settings,
    model: &EchoModel,
    twilio: &TwilioDouble,
    dir: &Path,
) {
    let gateway = Gateway::start(settings).await;
    let (alice, bob) = ("+14155550401", "+14155550402");
    text(&gateway, twilio, alice, "my secret <<a1>>").await;
    text(&gateway, twilio, bob, "hello <<b1>>").await;
    twilio.wait_for_messages(2, PATIENCE).await;

    let exported = export(settings, alice).expect("Alice is stored");
    assert_eq!(exported["session"]["address"], alice);
    assert_eq!(user_texts(&exported), ["my secret <<a1>>"]);
    let inbound = &exported["inbound_messages"][0];
    assert_eq!(inbound["body"], "my secret <<a1>>");
    assert!(
        inbound["external_id"]
            .as_str()
            .is_some_and(|sid| sid.starts_with("SM"))
    );
    let reply = eventually("the reply's delivery recorded", || async {
        let exported = export(settings, alice)?;
        let reply = exported["outbound_messages"][0].clone();
        (reply["status"] != "pending").then_some(reply)
    })
    .await;
    assert_eq!(reply["body"], "echo <<a1>>");
    assert_eq!(reply["status"], "accepted");
    assert!(
        reply["provider_id"]
            .as_str()
            .is_some_and(|sid| sid.starts_with("SM"))
    );
    assert!(!exported.to_string().contains(bob), "nothing of Bob");

    let file = dir.join("alice.json");
    let to_file = run(
        settings,
        &["export", alice, "--out", file.to_str().expect("utf-8")],
    );
    assert!(to_file.status.success(), "{}", stderr(&to_file));
    assert!(to_file.stdout.is_empty(), "the JSON went to the file");
    let written: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("the file")).expect("JSON");
    assert_eq!(user_texts(&written[0]), ["my secret <<a1>>"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    }
    let again = run(
        settings,
        &["export", alice, "--out", file.to_str().expect("utf-8")],
    );
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing file is not overwritten"
    );
    assert!(
        stderr(&again).contains("cannot write the export"),
        "{}",
        stderr(&again)
    );
    assert!(export(settings, "+14155550499").is_none());

    let unconfirmed = run(settings, &["erase", alice]);
    assert_eq!(
        unconfirmed.status.code(),
        Some(2),
        "{}",
        stderr(&unconfirmed)
    );
    assert!(
        stderr(&unconfirmed).contains("--yes"),
        "{}",
        stderr(&unconfirmed)
    );
    assert!(export(settings, alice).is_some(), "nothing erased");

    // Alice texts again and her turn waits for the model, holding its lease.
    model.hold();
    text(&gateway, twilio, alice, "one more <<a2>>").await;
    eventually("Alice's turn asks the model", || async {
        model
            .answered()
            .contains(&"<<a2>>".to_owned())
            .then_some(())
    })
    .await;
    let refused = run(settings, &["erase", "--yes", alice]);
    assert_eq!(refused.status.code(), Some(75), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("a turn of this person's is running"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        export(settings, alice).map(|exported| user_texts(&exported).len()),
        Some(2),
        "nothing erased"
    );
    model.release();
    twilio.wait_for_messages(3, PATIENCE).await;
    assert_eq!(replies_to(twilio, alice), ["echo <<a1>>", "echo <<a2>>"]);

    let erased = run(settings, &["erase", "--yes", alice]);
    assert!(erased.status.success(), "{}", stderr(&erased));
    assert!(
        export(settings, alice).is_none(),
        "nothing of Alice is left"
    );
    assert!(export(settings, bob).is_some(), "Bob is untouched");

    // Bob opts out and is erased: the opt-out stays, and his next message is not answered.
    // The begin records the opt-out; the STOP's turn holds the session until it commits, and
    // an erase refuses to run before that.
    text(&gateway, twilio, bob, "STOP").await;
    eventually("Bob's opt-out, its turn done", || async {
        export(settings, bob)
            .is_some_and(|exported| {
                exported["session"]["opted_out"] == true
                    && exported["inbound_messages"]
                        .as_array()
                        .is_some_and(|all| all.iter().all(|m| m["status"] == "done"))
            })
            .then_some(())
    })
    .await;
    let erased = run(settings, &["erase", "--yes", bob]);
    assert!(erased.status.success(), "{}", stderr(&erased));
    assert!(stderr(&erased).contains("kept: the number and the time it opted out"));
    let record = export(settings, bob).expect("the opt-out record");
    assert_eq!(record["session"]["opted_out"], true);
    assert_eq!(record["messages"], Value::Array(Vec::new()));
    text(&gateway, twilio, bob, "hello again <<b2>>").await;
    let after = eventually("Bob's new message handled", || async {
        let exported = export(settings, bob)?;
        (exported["inbound_messages"][0]["status"] == "done").then_some(exported)
    })
    .await;
    assert_eq!(user_texts(&after), ["hello again <<b2>>"]);
    assert_eq!(
        after["outbound_messages"],
        Value::Array(Vec::new()),
        "no reply"
    );
    assert_eq!(replies_to(twilio, bob), ["echo <<b1>>"]);

    for output in [&to_file, &unconfirmed, &refused, &erased] {
        let said = stderr(output);
        assert!(!said.contains("4155550"), "a number in the output: {said}");
    }
    super::assert_not_logged(&gateway, &["4155550401", "4155550402", "secret"]);
}
