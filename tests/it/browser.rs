//! A small W3C WebDriver client (the protocol is JSON over HTTP) driving Debian's Chromium
//! through chromedriver, for the console's browser test. Written here rather than pulled in as
//! a crate: it is a few calls, over the reqwest the tests already use.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a wait for the page gives up after.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and one browser session in it; both end when this is dropped.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element of the page, by its WebDriver reference.
#[derive(Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium with the flags this closed network needs.
    pub async fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver (scripts/test does)"
            );
        }
        let port = crate::support::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browsers it starts end with it (see `Drop`).
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = http.get(format!("{base}/status")).send().await.ok();
            if let Some(r) = ready {
                let status: Value = r.json().await.unwrap_or(Value::Null);
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("new session answer");
        let session =
            answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}")).to_string();
        Browser { driver, http, session: format!("{base}/session/{session}"), _profile: profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.expect("webdriver call").json().await.expect("webdriver answer");
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args })).await
    }

    pub async fn set_width(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height })).await;
    }

    /// Every element matching `css` now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        let found = self.post("/elements", json!({ "using": "css selector", "value": css })).await;
        found.as_array().into_iter().flatten().filter_map(|e| e[ELEMENT].as_str()).map(|e| Element(e.into())).collect()
    }

    /// The first element matching `css`, waiting for it to exist and be displayed.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for element in self.all(css).await {
                if self.get(&format!("/element/{}/displayed", element.0)).await == true {
                    return element;
                }
            }
            assert!(Instant::now() < deadline, "no displayed element {css:?}; page text:\n{}", self.page_text().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css` matches a displayed element whose text contains `text`.
    pub async fn wait_text(&self, css: &str, text: &str) -> Element {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for element in self.all(css).await {
                if self.text(&element).await.contains(text) {
                    return element;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {css:?} with text {text:?}; it says {:?}; page text:\n{}",
                self.text_of(css).await,
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's script says `condition` (an expression) holds.
    pub async fn wait_until(&self, what: &str, condition: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.eval(&format!("return !!({condition});"), json!([])).await != true {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; page text:\n{}", self.page_text().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.click_on(&element).await;
    }

    pub async fn click_on(&self, element: &Element) {
        let answer = self.post(&format!("/element/{}/click", element.0), json!({})).await;
        assert!(answer.is_null(), "click: {answer}");
    }

    /// Clears the field `css` and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{}/clear", element.0), json!({})).await;
        self.type_into(&element, text).await;
    }

    /// Types `text` (WebDriver key codes allowed, e.g. "\u{E00C}" for Escape) into `element`.
    pub async fn type_into(&self, element: &Element, text: &str) {
        let answer = self.post(&format!("/element/{}/value", element.0), json!({ "text": text })).await;
        assert!(answer.is_null(), "typing: {answer}");
    }

    /// Presses a key on whatever has the focus.
    pub async fn press(&self, key: &str) {
        let actions = json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": [
            { "type": "keyDown", "value": key }, { "type": "keyUp", "value": key },
        ]}]});
        self.post("/actions", actions).await;
    }

    /// A real mouse click at a point of the viewport (on whatever is there: a dialog's backdrop).
    pub async fn click_at(&self, x: u32, y: u32) {
        let actions = json!({ "actions": [{ "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
        "actions": [
            { "type": "pointerMove", "x": x, "y": y, "origin": "viewport" },
            { "type": "pointerDown", "button": 0 }, { "type": "pointerUp", "button": 0 },
        ]}]});
        self.post("/actions", actions).await;
    }

    pub async fn text(&self, element: &Element) -> String {
        self.get(&format!("/element/{}/text", element.0)).await.as_str().unwrap_or_default().to_string()
    }

    /// The text of the first element matching `css`, or "" when there is none.
    pub async fn text_of(&self, css: &str) -> String {
        match self.all(css).await.first() {
            Some(element) => self.text(element).await,
            None => String::new(),
        }
    }

    /// A DOM property of the first element matching `css` (shown or not); null when none matches.
    pub async fn property(&self, css: &str, name: &str) -> Value {
        match self.all(css).await.first() {
            Some(element) => self.get(&format!("/element/{}/property/{name}", element.0)).await,
            None => Value::Null,
        }
    }

    /// With `ZTNA_SCREENSHOTS=DIR` set, saves what the browser shows as `DIR/NAME.png` (for a
    /// person to look at; the test itself reads the page, not pixels).
    pub async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("ZTNA_SCREENSHOTS") else { return };
        let png = self.get("/screenshot").await;
        let text = png.as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).expect("a PNG screenshot");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), bytes).expect("write screenshot");
    }

    pub async fn page_text(&self) -> String {
        self.eval("return document.body ? document.body.innerText : '';", json!([]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// What the page logged to its console since the last call (errors, CSP refusals).
    pub async fn console_log(&self) -> Vec<Value> {
        let entries = self.post("/se/log", json!({ "type": "browser" })).await;
        entries
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("chromedriver did not answer the browser's log: {entries}"))
    }
}

impl Browser {
    /// Ends the session (the browser quits) and chromedriver.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and any browser a failed test left running.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}
