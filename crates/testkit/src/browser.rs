//! A real browser for tests: headless Chromium driven over WebDriver by `chromedriver`
//! (Debian's `chromium` and `chromium-driver`, which `scripts/test` installs when missing).
//!
//! [`Browser::start`] starts a driver on a free loopback port and opens one browser session;
//! dropping the [`Browser`] ends both. The client is a few WebDriver commands over HTTP (the
//! W3C protocol), which is all the tests need. Finding an element waits for it up to
//! [`WAIT`] (WebDriver's implicit wait), so a test waits for a page's script without sleeping.

use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The variable naming the Chromium binary; without it, `/usr/bin/chromium`.
pub const CHROMIUM_VARIABLE: &str = "CHROMIUM";
/// The variable naming the driver binary; without it, `/usr/bin/chromedriver`.
pub const DRIVER_VARIABLE: &str = "CHROMEDRIVER";
/// How long finding an element waits for it to appear.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long the driver may take to answer its first request.
const STARTUP: Duration = Duration::from_secs(30);

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn binary(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} is missing (set {variable}, or run scripts/test, which installs Debian's chromium \
         and chromium-driver)",
        path.display()
    );
    path
}

/// A headless Chromium and its driver.
pub struct Browser {
    driver: Child,
    /// Chromium's profile, removed after the browser quits (`Drop` ends the session first).
    profile: tempfile::TempDir,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element {
    id: String,
}

/// A cookie as the browser holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `SameSite`, as the browser reports it (`Strict`, `Lax`, `None`).
    pub same_site: Option<String>,
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and a headless Chromium session.
    ///
    /// # Panics
    /// When either binary is missing or the driver does not start.
    pub async fn start() -> Browser {
        let chromium = binary(CHROMIUM_VARIABLE, "/usr/bin/chromium");
        let driver_path = binary(DRIVER_VARIABLE, "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut browser = Browser {
            driver,
            profile,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                break;
            }
            assert!(started.elapsed() < STARTUP, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1100,800", "--no-first-run",
                    format!("--user-data-dir={}", browser.profile.path().display()),
                ],
            },
        }}});
        let answer = browser
            .command("POST", "/session", Some(capabilities))
            .await;
        browser.session = answer["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_owned();
        let wait = u64::try_from(WAIT.as_millis()).unwrap_or(u64::MAX);
        browser
            .session_command("POST", "/timeouts", Some(json!({"implicit": wait})))
            .await;
        browser
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let response = request.send().await.expect("WebDriver request");
        let status = response.status();
        let text = response.text().await.expect("WebDriver answer");
        let answer: Value = serde_json::from_str(&text).expect("WebDriver JSON");
        assert!(status.is_success(), "WebDriver {method} {path}: {answer}");
        answer["value"].clone()
    }

    async fn session_command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.command(method, &path, body).await
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.session_command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The current page's URL.
    pub async fn url(&self) -> String {
        self.session_command("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The current page's HTML.
    pub async fn source(&self) -> String {
        self.session_command("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element `css` selects, waiting up to [`WAIT`] for one.
    ///
    /// # Panics
    /// When none appears.
    pub async fn find(&self, css: &str) -> Element {
        let answer = self
            .session_command(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        Element {
            id: answer[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no element {css}"))
                .to_owned(),
        }
    }

    /// Every element `css` selects now (waiting up to [`WAIT`] for the first).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let answer = self
            .session_command(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        answer
            .as_array()
            .map(|elements| {
                elements
                    .iter()
                    .filter_map(|element| element[ELEMENT].as_str())
                    .map(|id| Element { id: id.to_owned() })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Clicks `element`.
    pub async fn click(&self, element: &Element) {
        self.session_command("POST", &format!("/element/{}/click", element.id), None)
            .await;
    }

    /// Clicks `element`, which leads to another page (a link, a form's button), and waits up to
    /// [`WAIT`] for that page to have loaded: a plain click may return before the navigation
    /// starts, and the next find would then read the old page.
    ///
    /// # Panics
    /// When no new page has loaded by then.
    pub async fn click_to_load(&self, element: &Element) {
        self.execute("window.__leftBehind = true;", vec![]).await;
        self.click(element).await;
        let started = Instant::now();
        loop {
            let loaded = self
                .execute(
                    "return window.__leftBehind !== true && document.readyState === 'complete';",
                    vec![],
                )
                .await;
            if loaded == Value::Bool(true) {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "no new page loaded after the click"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Types `text` into `element`.
    pub async fn type_into(&self, element: &Element, text: &str) {
        self.session_command(
            "POST",
            &format!("/element/{}/value", element.id),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The visible text of `element`.
    pub async fn text(&self, element: &Element) -> String {
        self.session_command("GET", &format!("/element/{}/text", element.id), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The value of `element`'s attribute `name`, if it has one.
    pub async fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        self.session_command(
            "GET",
            &format!("/element/{}/attribute/{name}", element.id),
            None,
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.session_command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The browser's cookie `name` for the current page, if it has one.
    pub async fn cookie(&self, name: &str) -> Option<Cookie> {
        let cookies = self.session_command("GET", "/cookie", None).await;
        cookies.as_array()?.iter().find_map(|cookie| {
            (cookie["name"] == name).then(|| Cookie {
                name: name.to_owned(),
                value: cookie["value"].as_str().unwrap_or_default().to_owned(),
                http_only: cookie["httpOnly"].as_bool().unwrap_or(false),
                same_site: cookie["sameSite"].as_str().map(str::to_owned),
            })
        })
    }

    /// Sets a cookie for the current page's site (the browser must be on a page of it).
    pub async fn set_cookie(&self, name: &str, value: &str) {
        self.session_command(
            "POST",
            "/cookie",
            Some(json!({"cookie": {"name": name, "value": value, "path": "/"}})),
        )
        .await;
    }

    /// Deletes every cookie of the current page's site.
    pub async fn delete_cookies(&self) {
        self.session_command("DELETE", "/cookie", None).await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let answer = self.session_command("GET", "/screenshot", None).await;
        STANDARD
            .decode(answer.as_str().unwrap_or_default())
            .expect("a base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session quits Chromium; the driver is then killed. Both are best effort on
        // a path that may be unwinding from a failed assertion.
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(async {
                        let _ = reqwest::Client::new().delete(url).send().await;
                    });
                }
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
