//! One outage of the store under a running gateway, played the same way for every store (a
//! PostgreSQL crash, a PostgREST restart): Ann is answered before it; Ben's turn is waiting for
//! the model when the store goes; Ann and Cat text while it is down and are refused at once;
//! once it is back Twilio's retries are taken, every message is answered exactly once, in order,
//! the model was asked about Ben's message once, and the store holds each exchange whole.

use std::collections::BTreeMap;
use std::time::Duration;

use soul_persistence::Store;
use soul_testkit::twilio::{SignedRequest, TwilioDouble};

use super::{
    EchoModel, Gateway, PATIENCE, Settings, TWILIO_FROM, eventually, exchange, post_as_twilio,
    stored_exchange,
};

/// The model's delay: long enough for the store to be cut while a turn waits for it.
pub const MODEL_DELAY: Duration = Duration::from_millis(500);

/// `settings` for the scenario: a lease longer than the test, so that Ben's turn is never taken
/// over and its own commit must get through, and a model budget that fits in it.
pub fn settings(settings: Settings) -> Settings {
    settings
        .set("TURN_LEASE", "120s")
        .set("MODEL_TIMEOUT", "2s")
        .set("MODEL_RETRY_BUDGET", "2s")
}

/// The scenario's people and what they send.
pub struct Outage<'a> {
    gateway: &'a Gateway,
    twilio: &'a TwilioDouble,
    model: &'a EchoModel,
    http: reqwest::Client,
    ann: &'static str,
    ben: &'static str,
    cat: &'static str,
}

/// The messages refused during the outage, which Twilio sends again.
pub struct Refused(SignedRequest, SignedRequest);

impl<'a> Outage<'a> {
    /// Ann, Ben and Cat are `numbers`; `model` was started with [`MODEL_DELAY`].
    pub fn new(
        gateway: &'a Gateway,
        twilio: &'a TwilioDouble,
        model: &'a EchoModel,
        numbers: [&'static str; 3],
    ) -> Self {
        let [ann, ben, cat] = numbers;
        Outage {
            gateway,
            twilio,
            model,
            http: reqwest::Client::new(),
            ann,
            ben,
            cat,
        }
    }

    fn sms(&self, from: &str, body: &str) -> SignedRequest {
        self.twilio.inbound_sms(from, TWILIO_FROM, body).sign(
            &self.gateway.webhook_url("/twilio/sms"),
            self.twilio.auth_token(),
        )
    }

    /// Ann is answered; returns once Ben's turn is waiting for the model: cut the store then.
    pub async fn before(&self) {
        let a0 = self.sms(self.ann, "a0 <<a0>>");
        assert_eq!(post_as_twilio(&self.http, &a0).await, Some(200));
        self.twilio.wait_for_messages(1, PATIENCE).await;
        let b0 = self.sms(self.ben, "b0 <<b0>>");
        assert_eq!(post_as_twilio(&self.http, &b0).await, Some(200));
        eventually("the model asked about b0", || async {
            self.model
                .answered()
                .contains(&"<<b0>>".to_owned())
                .then_some(())
        })
        .await;
    }

    /// With the store down: Ann's and Cat's messages are refused at once (not left hanging past
    /// Twilio's 15 s), readiness says so; returns once Ben's turn has tried to store the
    /// model's answer: bring the store back then.
    pub async fn during(&self) -> Refused {
        let refused = Refused(
            self.sms(self.ann, "a1 <<a1>>"),
            self.sms(self.cat, "c0 <<c0>>"),
        );
        for request in [&refused.0, &refused.1] {
            assert_eq!(post_as_twilio(&self.http, request).await, Some(503));
        }
        assert_eq!(self.gateway.get("/readyz").await.0, 503);
        eventually("the turn's commit failing", || async {
            self.gateway
                .logs()
                .contains("storing a turn failed; retrying")
                .then_some(())
        })
        .await;
        refused
    }

    /// With the store back: Twilio's retries are taken, and everything holds (see the module).
    pub async fn after(&self, refused: Refused, store: &dyn Store) {
        for request in [&refused.0, &refused.1] {
            assert_eq!(
                post_as_twilio(&self.http, request).await,
                Some(200),
                "Twilio's retry is taken"
            );
        }
        self.twilio.wait_for_messages(4, PATIENCE).await;
        let a2 = self.sms(self.ann, "a2 <<a2>>");
        assert_eq!(post_as_twilio(&self.http, &a2).await, Some(200));
        self.twilio.wait_for_messages(5, PATIENCE).await;
        // Longer than the outbox's retry-after and several sweeps: a repeat would show.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let mut replies: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for message in self.twilio.messages() {
            replies.entry(message.to).or_default().push(message.body);
        }
        let logs = self.gateway.logs();
        assert_eq!(
            replies[self.ann],
            ["echo <<a0>>", "echo <<a1>>", "echo <<a2>>"],
            "{logs}"
        );
        assert_eq!(replies[self.ben], ["echo <<b0>>"], "{logs}");
        assert_eq!(replies[self.cat], ["echo <<c0>>"], "{logs}");
        assert_eq!(self.twilio.messages().len(), 5);
        let asked_about_b0 = self
            .model
            .answered()
            .iter()
            .filter(|token| *token == "<<b0>>")
            .count();
        assert_eq!(
            asked_about_b0, 1,
            "the answer given before the outage was kept"
        );

        assert_eq!(
            stored_exchange(store, self.ann).await,
            exchange(&[
                ("a0 <<a0>>", "echo <<a0>>"),
                ("a1 <<a1>>", "echo <<a1>>"),
                ("a2 <<a2>>", "echo <<a2>>"),
            ])
        );
        assert_eq!(
            stored_exchange(store, self.ben).await,
            exchange(&[("b0 <<b0>>", "echo <<b0>>")])
        );
        assert_eq!(
            stored_exchange(store, self.cat).await,
            exchange(&[("c0 <<c0>>", "echo <<c0>>")])
        );
    }
}
