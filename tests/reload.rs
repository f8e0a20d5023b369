//! Hot reload: edit the scripts of a running host with clients connected.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A copy of tests/fixtures/reload in a temporary folder, so the test can edit it.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("tests/fixtures/reload")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// Saves as editors that write a temporary file and rename it over the original do.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("rhai.tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(dir: &Path, script: &str) -> Host {
    Host::start(dir.join(script).to_str().unwrap())
}

/// Sends `text` and returns the answer.
async fn ask(ws: &mut Client, text: &str) -> String {
    send_text(ws, text).await;
    recv_text(ws).await
}

/// Asks until the answer starts with `prefix` (the reload has landed); returns it.
async fn ask_until(ws: &mut Client, text: &str, prefix: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = ask(ws, text).await;
        if answer.starts_with(prefix) {
            return answer;
        }
        assert!(Instant::now() < deadline, "still {answer:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_class_edit_changes_the_next_message_and_keeps_the_state() {
    let (_keep, dir) = workspace();
    let host = start(&dir, "main.rhai");
    let mut a = connect(&host.url("/")).await;
    let mut b = connect(&host.url("/")).await;
    assert_eq!(ask(&mut a, "x").await, "v1 1 x");
    assert_eq!(ask(&mut a, "x").await, "v1 2 x");
    assert_eq!(ask(&mut b, "y").await, "v1 1 y");

    let counter = dir.join("Counter.rhai");
    let v2 = std::fs::read_to_string(&counter)
        .unwrap()
        .replace("`v1 ", "`v2 ");
    save_by_rename(&counter, &v2);
    // The same connections, the same instances (counts go on), the new code.
    let answer = ask_until(&mut a, "x", "v2").await;
    let n: u32 = answer.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(n >= 3, "{answer}");
    assert_eq!(ask(&mut b, "y").await, "v2 2 y");
    assert!(
        host.wait_stderr("reloaded ", TIMEOUT)
            .unwrap()
            .contains("Counter.rhai (class Counter) in"),
        "{}",
        host.stderr()
    );

    // onReload lets an instance migrate its state.
    let v3 = "fn onReload(event) { this.n *= 100; this.file = event.file; }\n\
              fn onMessage(ws, event) { this.n += 1; ws.send(`v3 ${this.n}`); }\n";
    save_by_rename(&counter, v3);
    let answer = ask_until(&mut b, "y", "v3").await;
    // b had counted 2 (or 3, if one more message ran the old code): times 100, plus this one.
    assert!(answer == "v3 201" || answer == "v3 301", "{answer}");

    // A callback removed by an edit is skipped (and said in the log); adding it back works.
    save_by_rename(&counter, "fn onOpen(ws, event) { }\n");
    host.wait_stderr("onMessage was removed", TIMEOUT)
        .expect("warned");
    send_text(&mut a, "ignored").await;
    assert_silent(&mut a, Duration::from_millis(200)).await;
    let reloads = host.stderr().matches("reloaded ").count();
    save_by_rename(
        &counter,
        "fn onMessage(ws, event) { ws.send(`v4 ${this.n}`); }\n",
    );
    let deadline = Instant::now() + TIMEOUT;
    while host.stderr().matches("reloaded ").count() == reloads {
        assert!(Instant::now() < deadline, "no reload in\n{}", host.stderr());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ask(&mut a, "x").await.starts_with("v4 "));
}

#[tokio::test]
async fn a_broken_edit_keeps_the_old_code_and_prints_the_error() {
    let (_keep, dir) = workspace();
    let host = start(&dir, "main.rhai");
    let mut a = connect(&host.url("/")).await;
    assert_eq!(ask(&mut a, "x").await, "v1 1 x");
    let counter = dir.join("Counter.rhai");
    // Saved in place this time (write, close).
    std::fs::write(
        &counter,
        "fn onMessage(ws, event) {\n    ws.send(`broken` +);\n}\n",
    )
    .unwrap();
    let line = host
        .wait_stderr("reload failed: the old code keeps running", TIMEOUT)
        .expect("error logged");
    assert!(line.contains("Counter.rhai:2:"), "{line}");
    assert!(
        host.wait_stderr("ws.send(`broken` +);", TIMEOUT).is_some(),
        "{}",
        host.stderr()
    );
    assert_eq!(ask(&mut a, "x").await, "v1 2 x");
    // Runtime errors still quote the old, running source.
}

#[tokio::test]
async fn no_message_is_lost_or_handled_twice_across_reloads() {
    let (_keep, dir) = workspace();
    let host = start(&dir, "main.rhai");
    let ws = connect(&host.url("/")).await;
    let (mut tx, mut rx) = ws.split();
    const N: usize = 3000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            tx.send(Message::text(i.to_string())).await.unwrap();
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        tx
    });
    let counter = dir.join("Counter.rhai");
    let editor = tokio::task::spawn_blocking(move || {
        for v in 2..=6 {
            std::thread::sleep(Duration::from_millis(15));
            let text = format!(
                "fn constructor() {{ this.n = 0; }}\n\
                 fn onMessage(ws, event) {{ this.n += 1; ws.send(`v{v} ${{this.n}} ${{event.data}}`); }}\n"
            );
            save_by_rename(&counter, &text);
        }
    });
    let mut last_version = 1;
    let mut versions_seen = std::collections::BTreeSet::new();
    for i in 0..N {
        let m = tokio::time::timeout(TIMEOUT, rx.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let text = m.into_text().unwrap();
        let parts: Vec<&str> = text.as_str().split(' ').collect();
        let version: u32 = parts[0][1..].parse().unwrap();
        // Each message answered once, in order, counted by the same instance.
        assert_eq!(parts[1], (i + 1).to_string(), "{text}");
        assert_eq!(parts[2], i.to_string(), "{text}");
        assert!(version >= last_version, "{text} after v{last_version}");
        last_version = version;
        versions_seen.insert(version);
    }
    editor.await.unwrap();
    let _tx = sender.await.unwrap();
    assert!(
        versions_seen.len() >= 2,
        "the reloads landed during the stream: {versions_seen:?}"
    );
}

#[tokio::test]
async fn an_entry_edit_reruns_the_top_level_and_adopts_running_servers() {
    let (_keep, dir) = workspace();
    let entry = dir.join("entry.rhai");
    std::fs::copy(dir.join("entry_v1.rhai"), &entry).unwrap();
    let host = start(&dir, "entry.rhai");
    host.wait_stderr("/closure", TIMEOUT)
        .expect("all servers listening");
    let mut root = connect(&host.url("/")).await;
    let mut old = connect(&host.url("/old")).await;
    let mut closure = connect(&host.url("/closure")).await;
    assert_eq!(ask(&mut closure, "c").await, "closure v1 c");
    assert_eq!(ask(&mut root, "a").await, "v1 a hello");
    assert_eq!(ask(&mut old, "b").await, "v1 b ");

    save_by_rename(
        &entry,
        &std::fs::read_to_string(dir.join("entry_v2.rhai")).unwrap(),
    );
    // The same connection on `/`: new code (Fn("reply") is looked up again), handler state kept.
    assert_eq!(ask_until(&mut root, "a", "v2").await, "v2 a hello");
    host.wait_stderr("kept the server", TIMEOUT)
        .expect("adoption logged");
    // `/old` is not created by the new top level: stopped, with its connections (1001).
    assert_eq!(recv_close(&mut old).await.0, 1001);
    host.wait_stderr("no longer creates server", TIMEOUT)
        .expect("said in the log");
    let refused = tokio_tungstenite::connect_async(host.url("/old")).await;
    assert!(refused.is_err());
    // The file's closures changed in number (`/old` is gone): a connection whose handler is a
    // closure keeps the code it was made with (and works), and the log says which; a new
    // connection gets the new closure.
    assert_eq!(ask(&mut closure, "c").await, "closure v1 c");
    let kept = host
        .wait_stderr("closures keep their old code", TIMEOUT)
        .expect("named in the log");
    assert!(kept.contains("onMessage of connection"), "{kept}");
    let mut closure2 = connect(&host.url("/closure")).await;
    assert_eq!(ask(&mut closure2, "c").await, "closure v2 c");
    // New connections on `/` work.
    let mut again = connect(&host.url("/")).await;
    assert_eq!(ask(&mut again, "c").await, "v2 c hello");
}

#[tokio::test]
async fn no_watch_turns_reload_off() {
    let (_keep, dir) = workspace();
    let host = Host::start_with(dir.join("main.rhai").to_str().unwrap(), &["--no-watch"]);
    let mut a = connect(&host.url("/")).await;
    assert_eq!(ask(&mut a, "x").await, "v1 1 x");
    let counter = dir.join("Counter.rhai");
    let v2 = std::fs::read_to_string(&counter)
        .unwrap()
        .replace("`v1 ", "`v2 ");
    save_by_rename(&counter, &v2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ask(&mut a, "x").await, "v1 2 x");
}

#[tokio::test]
async fn an_edited_closure_handler_runs_the_new_code_on_open_connections() {
    let (_keep, dir) = workspace();
    let entry = dir.join("closures.rhai");
    let v1 = "let greeting = \"hello\";\n\
              WebSocketServer.new(#{\n\
                  onConnection: |wss, event| #{\n\
                      onMessage: |ws, event| ws.send(`v1 ${greeting} ${event.data}`),\n\
                  },\n\
              });\n";
    std::fs::write(&entry, v1).unwrap();
    let host = start(&dir, "closures.rhai");
    let mut ws = connect(&host.url("/")).await;
    assert_eq!(ask(&mut ws, "a").await, "v1 hello a");
    // Same closures, same parameters and captured variables, new bodies: the open connection
    // runs the new code, with what its closure captured.
    save_by_rename(&entry, &v1.replace("`v1 ", "`v2 "));
    assert_eq!(ask_until(&mut ws, "a", "v2").await, "v2 hello a");
    host.wait_stderr("run the new code", TIMEOUT)
        .expect("said in the log");
    assert!(
        !host.stderr().contains("Function not found"),
        "{}",
        host.stderr()
    );
}

#[tokio::test]
async fn on_reload_reaches_every_instance_of_the_edited_class_handler_or_not() {
    let (_keep, dir) = workspace();
    let host = start(&dir, "model.rhai");
    let mut a = connect(&host.url("/")).await;
    for n in 1..=3 {
        assert_eq!(ask(&mut a, "x").await, format!("v1 {n}"));
    }
    // Version 2 keeps its count in another field: onReload moves it.
    save_by_rename(
        &dir.join("Tally.rhai"),
        "fn add() { this.count += 1; }\n\
         fn total() { `v2 ${this.count}` }\n\
         fn onReload(event) { this.count = this.n * 10; this.n = (); }\n",
    );
    let answer = ask_until(&mut a, "x", "v2").await;
    // 3 counted (or 4, if one more message ran the old code), times 10, plus this one.
    assert!(answer == "v2 31" || answer == "v2 41", "{answer}");
}

#[tokio::test]
async fn an_entry_edit_of_functions_and_comments_runs_no_top_level() {
    let (_keep, dir) = workspace();
    let host = start(&dir, "ticking.rhai");
    let mut ws = connect(&host.url("/")).await;
    let count = |answer: &str| -> u64 { answer.split(' ').nth(1).unwrap().parse().unwrap() };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = count(&ask(&mut ws, "x").await);
    assert!(before > 0, "the timer ticks");
    let entry = dir.join("ticking.rhai");
    let edited = std::fs::read_to_string(&entry)
        .unwrap()
        .replace("`r1 ", "`r2 ")
        .replace("// Reload fixture", "// A comment more.\n// Reload fixture");
    save_by_rename(&entry, &edited);
    let after = count(&ask_until(&mut ws, "x", "r2").await);
    // The same model object: the count goes on from where it was (a new top level would
    // have made a new one, from 0), and its timer still runs.
    assert!(after >= before, "{before} then {after}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later = count(&ask(&mut ws, "x").await);
    assert!(later > after, "{after} then {later}: the timer stopped");
    let log = host
        .wait_stderr("is not run again", TIMEOUT)
        .expect("said in the log");
    assert!(!host.stderr().contains("top level run again"), "{log}");
    // A top-level edit runs it again, as before.
    save_by_rename(
        &entry,
        &edited.replace("setInterval(|| tally.add(), 10);", ""),
    );
    host.wait_stderr("top level run again", TIMEOUT)
        .expect("run again");
    // The old run's timer is cancelled, and the log says so.
    host.wait_stderr("reload: cancelled timer", TIMEOUT)
        .expect("said in the log");
}
