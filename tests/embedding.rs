//! wshost as a library: what an embedding program's functions may do to it.

use tokio_tungstenite::tungstenite::{self, Message};
use wshost::{Exit, Host, HostConfig};

#[test]
fn a_panic_in_an_embedders_function_costs_that_callback_only() {
    let mut config = HostConfig::default().with_globals(|engine| {
        engine.register_fn("explode", |text: &str| -> String {
            if text == "boom" {
                panic!("explode was asked to");
            }
            text.to_uppercase()
        });
    });
    config.port = 0;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/panics.rhai");
    let host = Host::start(script, config).expect("the host starts");
    let port = host.ports()[0];
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}/")).unwrap();
    let mut ask = |text: &str| {
        ws.send(Message::text(text)).unwrap();
        ws.read().unwrap().into_text().unwrap().to_string()
    };
    assert_eq!(ask("hi"), "HI");
    let error = ask("boom");
    assert!(
        error.starts_with("error: ") && error.contains("panicked: explode was asked to"),
        "{error}"
    );
    // The same connection, on the same worker, goes on.
    assert_eq!(ask("again"), "AGAIN");
    // And so does a new one.
    let (mut other, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}/")).unwrap();
    other.send(Message::text("new")).unwrap();
    assert_eq!(other.read().unwrap().into_text().unwrap().as_str(), "NEW");
    host.stop_handle().stop();
    assert!(matches!(host.wait(), Exit::Finished));
}
