//! A real headless Chromium driven over WebDriver (Debian `chromium` + `chromium-driver`,
//! installed by `make` as `.tools/.chromium`): `chromedriver` on a reserved port, one
//! session, and the few commands the console tests need — navigate, run a script, wait
//! for a condition in the page, save a screenshot. Spoken with the harness's own
//! HTTP/1.1 [`Client`]; nothing to add to the dependency tree.
//!
//! Chromium runs as root only with `--no-sandbox`; the D-Bus complaints it prints are
//! harmless.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::HarnessError;
use crate::http::Client;
use crate::ports::start_on_port;
use crate::proc::{Proc, TestDir};

/// The Chromium binary the session starts.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long chromedriver and a new session may take to come up.
const START: Duration = Duration::from_secs(30);

/// `chromedriver` and `chromium` if both are installed: tests skip with a message
/// instead of failing on a machine without them.
pub fn available() -> Option<PathBuf> {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    Path::new(CHROMIUM).exists().then_some(driver)
}

/// One browser session, ended (and chromedriver killed) on drop.
pub struct Browser {
    driver: Proc,
    port: u16,
    session: String,
}

impl Browser {
    /// Start chromedriver and a headless Chromium session (1280×900 window).
    pub fn start(dir: &TestDir) -> Result<Browser, HarnessError> {
        let bin = available().ok_or_else(|| {
            HarnessError::Other(
                "chromium/chromedriver not installed (make .tools/.chromium)".into(),
            )
        })?;
        let (driver, port) = start_on_port(3, |port| {
            let mut cmd = Command::new(&bin);
            cmd.args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()]);
            let mut p = Proc::spawn("chromedriver", cmd, dir.path())?;
            p.wait_for_line("its `started successfully` line", START, |l| {
                l.contains("started successfully")
            })?;
            Ok((p, port))
        })?;
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
        };
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let v = browser.call("POST", "/session", Some(caps))?;
        browser.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| browser.driver.error(format!("no session id in {v}")))?
            .to_string();
        Ok(browser)
    }

    /// One WebDriver command; returns its `value`, or the WebDriver error as an error.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, HarnessError> {
        let io = |e| HarnessError::io("chromedriver", format!("{method} {path}"), e);
        let mut c = Client::connect(self.port).map_err(io)?;
        let text = body.map(|b| b.to_string());
        let r = c
            .request_with_body(
                method,
                path,
                &[("content-type", b"application/json")],
                text.as_deref().map(str::as_bytes),
            )
            .map_err(io)?;
        let v: Value = serde_json::from_str(&r.text()).unwrap_or(Value::Null);
        if r.status != 200 {
            return Err(self.driver.error(format!(
                "{method} {path}: HTTP {}: {}",
                r.status, v["value"]
            )));
        }
        Ok(v["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Open `url`.
    pub fn goto(&mut self, url: &str) -> Result<(), HarnessError> {
        let p = self.session_path("/url");
        self.call("POST", &p, Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// Run `script` (a function body; `arguments[i]` are `args`) in the page; its return
    /// value.
    pub fn execute(&mut self, script: &str, args: &[Value]) -> Result<Value, HarnessError> {
        let p = self.session_path("/execute/sync");
        self.call("POST", &p, Some(json!({ "script": script, "args": args })))
    }

    /// Evaluate `expr` in the page every 100 ms until it is truthy (returns its value),
    /// for at most `timeout`; the error says what the page showed.
    pub fn wait_for(
        &mut self,
        what: &str,
        expr: &str,
        timeout: Duration,
    ) -> Result<Value, HarnessError> {
        let start = Instant::now();
        let script = format!("try {{ return ({expr}); }} catch (e) {{ return null; }}");
        loop {
            let v = self.execute(&script, &[])?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return Ok(v);
            }
            if start.elapsed() >= timeout {
                let page = self
                    .execute("return document.body ? document.body.innerText : ''", &[])
                    .unwrap_or_default();
                return Err(HarnessError::Other(format!(
                    "browser: timed out after {timeout:?} waiting for {what} ({expr})\npage text:\n{}",
                    page.as_str().unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Save a PNG screenshot of the window to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), HarnessError> {
        let p = self.session_path("/screenshot");
        let v = self.call("GET", &p, None)?;
        let png = base64_decode(v.as_str().unwrap_or_default())
            .ok_or_else(|| HarnessError::Other("screenshot: not base64".into()))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| HarnessError::io("browser", "creating the screenshot dir", e))?;
        }
        std::fs::write(path, png)
            .map_err(|e| HarnessError::io("browser", "writing a screenshot", e))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let p = self.session_path("");
            let _ = self.call("DELETE", &p, None);
        }
    }
}

/// Standard base64 (WebDriver screenshots), padding optional.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(super::base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(super::base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(super::base64_decode("TWFu").unwrap(), b"Man");
        assert!(super::base64_decode("a*b").is_none());
    }
}
