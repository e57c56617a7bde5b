//! A deployment's own crisis resources text. A test binary of its own: the text is set once per
//! process, like a deployment sets it at start-up.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use common::{runtime, say, state_in, time};
use soul_processes::companion::NAME;
use soul_processes::companion::crisis::{
    CrisisResources, configure_crisis_resources, crisis_resources,
};
use soul_testkit::openai::Reply;

const OURS: &str = "In the UK, call 999 in an emergency, or text SHOUT to 85258.";

#[tokio::test]
async fn the_configured_text_is_sent_verbatim_and_cannot_change_later() {
    configure_crisis_resources(CrisisResources::new(OURS).unwrap()).unwrap();
    let second = CrisisResources::new("something else").unwrap();
    assert_eq!(configure_crisis_resources(second.clone()), Err(second));
    assert_eq!(crisis_resources().text(), OURS);

    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    double.push_content("Sage said: \"Thank you for telling me.\"");
    let (main, _) = say(
        &runtime,
        &mut state,
        "I keep thinking about suicide",
        time(0),
    )
    .await;
    assert_eq!(
        main.replies,
        [format!("Thank you for telling me.\n\n{OURS}")]
    );

    double.push(Reply::status(500)).push(Reply::status(500));
    let (main, _) = say(&runtime, &mut state, "no", time(1)).await;
    assert_eq!(main.replies, [OURS]);
}
