//! What the deploy guide (docs/deploy.md) relies on, checked where it can run here: no container
//! engine runs on this machine or in CI, so the image is never built by the tests; what the
//! `Dockerfile` promises is checked against the binary instead (its health check, its defaults,
//! the files it copies), and the example alert rules (`deploy/alerts.yml`) against the series a
//! running gateway exports.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{EchoModel, Gateway, Settings, command, twilio};
use tempfile::TempDir;
use yaml_rust2::{Yaml, YamlLoader};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Dockerfile's instructions, `(INSTRUCTION, arguments)`, continuation lines joined and
/// comments left out.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repository().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (instruction, arguments) = current.split_once(' ').unwrap();
                instructions.push((instruction.to_owned(), arguments.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// The arguments of every `instruction` of the final stage.
fn final_stage(instruction: &str) -> Vec<String> {
    let all = dockerfile();
    let last_from = all.iter().rposition(|(name, _)| name == "FROM").unwrap();
    all[last_from..]
        .iter()
        .filter(|(name, _)| name == instruction)
        .map(|(_, arguments)| arguments.clone())
        .collect()
}

/// The final stage's `ENV` settings.
fn image_env() -> BTreeMap<String, String> {
    final_stage("ENV")
        .iter()
        .flat_map(|arguments| {
            arguments
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// A JSON-form (exec) argument list such as `["/usr/local/bin/sms-gateway", "health"]`.
fn exec_form(arguments: &str) -> Vec<String> {
    serde_json::from_str(arguments).unwrap_or_else(|_| panic!("not exec form: {arguments}"))
}

const BINARY: &str = "/usr/local/bin/sms-gateway";

/// Two stages, the binary and the migrations copied into the second, run as a user that is not
/// root, the port and the data directory those of its defaults.
#[test]
fn the_image_is_small_runs_as_nobody_and_holds_the_binary_and_the_migrations() {
    let froms = dockerfile()
        .iter()
        .filter(|(name, _)| name == "FROM")
        .count();
    assert!(froms >= 2, "a build stage and a runtime stage");
    let copies = final_stage("COPY");
    assert!(
        copies
            .iter()
            .any(|copy| copy.starts_with("--from=build") && copy.ends_with(BINARY)),
        "{copies:?}"
    );
    let migrations = copies
        .iter()
        .find_map(|copy| copy.strip_prefix("migrations "))
        .expect("the migrations are copied");
    assert!(migrations.starts_with('/'), "{migrations}");
    let sql = std::fs::read_dir(repository().join("migrations"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|ext| ext == "sql")
        })
        .count();
    assert!(sql >= 4, "the migrations directory holds the schema");
    let user = final_stage("USER");
    assert_eq!(user.len(), 1);
    let uid = user[0].split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "{uid}");
    let env = image_env();
    assert_eq!(final_stage("EXPOSE"), [env["PORT"].clone()]);
    assert_eq!(env["DATABASE_URL"], "sqlite:///data/soul.db");
    assert_eq!(exec_form(&final_stage("VOLUME")[0]), ["/data"]);
    assert_eq!(final_stage("STOPSIGNAL"), ["SIGTERM"]);
    assert_eq!(exec_form(&final_stage("ENTRYPOINT")[0]), [BINARY]);
}

/// The image's `ENV` is a valid configuration once the secrets are given: the gateway listens on
/// every address on the exposed port, and keeps its SQLite file in the volume.
#[test]
fn the_image_defaults_are_a_valid_configuration() {
    let mut env = image_env();
    for (key, value) in [
        ("PUBLIC_URL", "https://sms.example.org"),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_AUTH_TOKEN", "token"),
        ("TWILIO_FROM", "+15005550006"),
        ("OPENAI_API_KEY", "sk-key"),
    ] {
        env.insert(key.to_owned(), value.to_owned());
    }
    let output = command(&env).arg("check-config").output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        printed.contains(&format!("listens on   0.0.0.0:{}", env["PORT"])),
        "{printed}"
    );
    assert!(
        printed.contains("SQLite, the file /data/soul.db"),
        "{printed}"
    );
}

/// The `HEALTHCHECK` command, run with the image's `ENV` (every address, so the gateway is
/// asked on the loopback), passes while the gateway serves and fails once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_health_check_asks_the_gateway() {
    let healthcheck = final_stage("HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1);
    let (_, cmd) = healthcheck[0].split_once("CMD ").unwrap();
    let cmd = exec_form(cmd);
    assert_eq!(cmd[0], BINARY);
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let database = format!("sqlite://{}/soul.db", dir.path().display());
    let mut gateway = Gateway::start(&Settings::new(
        dir.path(),
        &database,
        &twilio,
        &model.base_url(),
    ))
    .await;
    let port = gateway.url.rsplit(':').next().unwrap().to_owned();
    let mut env = image_env();
    env.insert("PORT".to_owned(), port);
    let check = || command(&env).args(&cmd[1..]).output().unwrap();
    let healthy = check();
    assert!(healthy.status.success(), "{healthy:?}");
    gateway.crash();
    let unhealthy = check();
    assert_eq!(unhealthy.status.code(), Some(1), "{unhealthy:?}");
    assert!(
        String::from_utf8_lossy(&unhealthy.stderr).contains("no answer from http://127.0.0.1:"),
        "{unhealthy:?}"
    );
}

/// A selector in an expression: the metric and its label matchers (`=` and `=~`).
#[derive(Debug)]
struct Selector {
    metric: String,
    /// `(label, values)`: one value for `=`, the alternatives of a `=~` of literals.
    matchers: Vec<(String, Vec<String>)>,
}

/// The `sms_gateway_*` selectors of a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("sms_gateway_") {
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let metric = rest[..end].to_owned();
        rest = &rest[end..];
        let mut matchers = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}').unwrap();
            for matcher in inner[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let (label, value) = matcher
                    .split_once("=~")
                    .or_else(|| matcher.split_once('='))
                    .unwrap();
                let value = value.trim().trim_matches('"');
                matchers.push((
                    label.trim().to_owned(),
                    value.split('|').map(str::to_owned).collect(),
                ));
            }
            rest = &inner[close..];
        }
        found.push(Selector { metric, matchers });
    }
    found
}

/// Every series `/metrics` lists, `(name, labels)`.
fn exported(text: &str) -> Vec<(String, BTreeSet<(String, String)>)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let series = line.rsplit_once(' ').unwrap().0;
            match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .trim_end_matches('}')
                        .split(',')
                        .map(|pair| {
                            let (label, value) = pair.split_once('=').unwrap();
                            (label.to_owned(), value.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeSet::new()),
            }
        })
        .collect()
}

/// The example alert rules are a Prometheus rule file whose every `sms_gateway_*` series, label
/// and label value is one a running gateway exports (so a renamed metric or label fails here),
/// each with a severity and a summary, and each named in the deploy guide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_name_only_series_the_gateway_exports() {
    let text = std::fs::read_to_string(repository().join("deploy/alerts.yml")).unwrap();
    let documents = YamlLoader::load_from_str(&text).unwrap();
    let rules: Vec<&Yaml> = documents[0]["groups"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_vec().unwrap())
        .collect();
    assert!(rules.len() >= 5, "{} rules", rules.len());

    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let database = format!("sqlite://{}/soul.db", dir.path().display());
    let gateway = Gateway::start(&Settings::new(
        dir.path(),
        &database,
        &twilio,
        &model.base_url(),
    ))
    .await;
    let (status, metrics) = gateway.get("/metrics").await;
    assert_eq!(status, 200);
    let series = exported(&metrics);

    let guide = std::fs::read_to_string(repository().join("docs/deploy.md")).unwrap();
    let mut checked = 0;
    for rule in rules {
        let alert = rule["alert"].as_str().unwrap();
        let expr = rule["expr"].as_str().unwrap();
        assert!(
            matches!(rule["labels"]["severity"].as_str(), Some("page" | "ticket")),
            "{alert}"
        );
        assert!(rule["annotations"]["summary"].as_str().is_some(), "{alert}");
        assert!(
            guide.contains(alert),
            "docs/deploy.md does not name {alert}"
        );
        for selector in selectors(expr) {
            let of_metric: Vec<_> = series
                .iter()
                .filter(|(name, _)| *name == selector.metric)
                .collect();
            assert!(
                !of_metric.is_empty(),
                "{alert}: the gateway exports no {}",
                selector.metric
            );
            for (label, values) in &selector.matchers {
                for value in values {
                    assert!(
                        of_metric
                            .iter()
                            .any(|(_, labels)| labels.contains(&(label.clone(), value.clone()))),
                        "{alert}: no {}{{{label}=\"{value}\"}} is exported",
                        selector.metric
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} selectors found");
}
