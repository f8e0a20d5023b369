//! Adding a function of your own to the script API: `lookup_user(token)`, backed by a Rust
//! `HashMap`, used by `examples/custom_global.rhai` to let connections in.
//!
//!     cargo run --example custom_global

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_tungstenite::tungstenite::{self, Message};
use wshost::rhai::Dynamic;
use wshost::{Exit, Host, HostConfig};

fn main() -> anyhow::Result<()> {
    let users: Arc<HashMap<String, String>> = Arc::new(HashMap::from([
        ("t0k3n-ada".to_string(), "Ada".to_string()),
        ("t0k3n-alan".to_string(), "Alan".to_string()),
    ]));

    let mut config = HostConfig::default().with_globals(move |engine| {
        // Runs on the engine of each script worker, on its thread, after wshost's own
        // globals.
        let users = users.clone();
        engine.register_fn("lookup_user", move |token: &str| -> Dynamic {
            match users.get(token) {
                Some(name) => name.clone().into(),
                None => Dynamic::UNIT, // `()` in the script
            }
        });
    });
    config.port = 0;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/custom_global.rhai");
    let host = Host::start(script, config)?;
    let port = *host.ports().first().context("the script made no server")?;

    let url = format!("ws://127.0.0.1:{port}/?token=t0k3n-ada");
    let (mut ws, _) = tungstenite::connect(&url)?;
    let greeting = ws.read()?.into_text()?;
    ws.send(Message::text("hi"))?;
    let answer = ws.read()?.into_text()?;
    println!("{url}: {:?}, then {:?}", greeting.as_str(), answer.as_str());
    if greeting.as_str() != "hello Ada" || answer.as_str() != "Ada said: hi" {
        bail!("unexpected answers");
    }
    ws.close(None)?;
    while ws.read().is_ok() {}

    let url = format!("ws://127.0.0.1:{port}/?token=wrong");
    match tungstenite::connect(&url) {
        Err(tungstenite::Error::Http(response)) => {
            println!("{url}: refused, HTTP {}", response.status())
        }
        other => bail!("{url}: expected a refusal, got {other:?}"),
    }

    host.stop_handle().stop();
    match host.wait() {
        Exit::Finished => Ok(()),
        other => bail!("{other:?}"),
    }
}
