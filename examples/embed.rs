//! Embedding wshost in a Rust program: start a host on any free port, read the port it got
//! through the API, talk to it with a WebSocket client, stop it.
//!
//!     cargo run --example embed
//!
//! The script is the repository's `scripts/echo.rhai`.

use anyhow::{Context, bail};
use tokio_tungstenite::tungstenite::{self, Message};
use wshost::{Exit, Host, HostConfig};

// As in the `wshost` binary: with it, a callback's memory budget is enforced.
#[global_allocator]
static ALLOC: wshost::CountingAllocator = wshost::CountingAllocator;

fn main() -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/echo.rhai");
    let mut config = HostConfig::default();
    config.port = 0; // any free port: the script's server has no `port` option
    // wshost logs with `tracing` ("listening on …"): install a subscriber to see it.
    let host = Host::start(script, config)?;

    // The ports of the servers the script's top level made, in order.
    let port = *host.ports().first().context("the script made no server")?;
    let url = format!("ws://127.0.0.1:{port}/");
    println!("echo server on {url}");

    // Any WebSocket client will do; this one is tungstenite's blocking client.
    let (mut ws, _response) = tungstenite::connect(&url)?;
    ws.send(Message::text("hello"))?;
    let answer = ws.read()?.into_text()?;
    println!("sent \"hello\", got {:?}", answer.as_str());
    if answer.as_str() != "hello" {
        bail!("expected the echo of \"hello\"");
    }
    ws.close(None)?;
    while ws.read().is_ok() {} // until the server's answer to the close

    // A graceful stop: open connections get 1001 and their `onTerminate` runs. A StopHandle
    // is Clone and Send: another thread may hold it.
    host.stop_handle().stop();
    match host.wait() {
        Exit::Finished => {
            println!("stopped");
            Ok(())
        }
        Exit::ScriptFailed(e) => bail!("{e:#}"),
        other => bail!("{other:?}"),
    }
}
