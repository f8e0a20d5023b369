//! The README's quick start, as written: its first command runs the chat example (run here
//! through `cargo run`, so a second binary or anything else that breaks the command is
//! caught), its second runs the tests, and `.ci/run` runs exactly that.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The indented command lines of the README's "Quick start" section.
fn quick_start_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Quick start"))
        .expect("a Quick start section in README.md");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn the_quick_start_is_two_commands() {
    let commands = quick_start_commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(
        commands[0].starts_with("cargo run --release -- run "),
        "{commands:?}"
    );
    assert_eq!(commands[1], "cargo test --release");
}

#[tokio::test]
async fn the_quick_start_command_runs_the_chat() {
    let commands = quick_start_commands();
    let line = commands
        .iter()
        .find(|c| c.starts_with("cargo run --release -- run"))
        .expect("the quick start's cargo run command");
    let words: Vec<&str> = line.split_whitespace().collect();
    // As written, but through the cargo running these tests and on any free port (the
    // README's command uses the default, 8080, which may be taken here): `--port 0` is
    // appended when the command names no port.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(&words[1..]);
    if !words.contains(&"--port") {
        cmd.args(["--port", "0"]);
    }
    // What cargo sets for a test process is not in a user's shell; left in, it would make
    // cargo build again (build scripts of dependencies watch CARGO_MANIFEST_DIR).
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .chain(&["CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR"])
        .any(|prefix| name.starts_with(prefix))
        {
            cmd.env_remove(name.as_ref());
        }
    }
    // `cargo run` builds first if anything is stale: give it the time of a build.
    let mut host = Host::start_command(cmd, Duration::from_secs(300));

    // The page of the chat, on the same port.
    let page = http_get(host.port, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<html"), "{page}");

    let mut a = connect(&host.url("/")).await;
    assert_eq!(recv_text(&mut a).await, "Welcome on the chat!");
    let mut b = connect(&host.url("/")).await;
    assert_eq!(recv_text(&mut b).await, "Welcome on the chat!");
    assert_eq!(recv_text(&mut a).await, "New client connected");
    send_text(&mut a, "hello from a").await;
    assert_eq!(recv_text(&mut b).await, "hello from a");

    host.terminate();
    assert_eq!(recv_close(&mut a).await.0, 1001);
    let status = host.wait_exit(Duration::from_secs(10)).expect("it stops");
    assert_eq!(status.code(), Some(0), "{}", host.stderr());
}

#[test]
fn ci_runs_the_quick_start_test_command() {
    let commands = quick_start_commands();
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    let calls: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo test"))
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // The command itself, then at most a redirection or a pipe (the log).
    let rest = calls[0]
        .strip_prefix(commands[1].as_str())
        .unwrap_or_else(|| panic!("{:?} does not run {:?}", calls[0], commands[1]));
    assert!(
        rest.is_empty() || rest.starts_with(" 2>&1") || rest.starts_with(" |"),
        "{:?} adds arguments to {:?}",
        calls[0],
        commands[1]
    );
}

/// A plain HTTP/1.1 GET; the whole answer as text.
fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    answer
}
