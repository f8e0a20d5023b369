//! The chat page in a real browser: headless Chromium driven by playwright-core
//! (tests/browser/chat.mjs) against `wshost run scripts/chat.rhai`, which serves the page and
//! the socket on one port. Two pages join, one sends, the other shows it; the screenshot is
//! kept as target/browser-chat.png. Without Chromium, Node or playwright-core the test is
//! skipped, saying why (in CI, where .ci/run installs them, it fails: see `common::skip`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn missing_tool() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node".into());
    }
    if !repo()
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Some("playwright-core is not installed (cd tests/browser && npm ci)".into());
    }
    None
}

#[test]
fn two_browser_pages_chat_through_the_page_the_server_serves() {
    if let Some(why) = missing_tool() {
        return skip(
            "browser::two_browser_pages_chat_through_the_page_the_server_serves",
            &why,
        );
    }
    let host = Host::start("scripts/chat.rhai");
    let screenshot = repo().join("target/browser-chat.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut child = Command::new("node")
        .arg(repo().join("tests/browser/chat.mjs"))
        .env("CHAT_URL", format!("http://127.0.0.1:{}/", host.port))
        .env("SCREENSHOT", &screenshot)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run node");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser test did not end within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.success() && stdout.contains("browser chat: ok"),
        "{stdout}\n{stderr}\nserver: {}",
        host.stderr()
    );
    let shot = std::fs::metadata(&screenshot).expect("screenshot written");
    assert!(shot.len() > 1000, "screenshot too small");
    println!("screenshot: {}", screenshot.display());
}
