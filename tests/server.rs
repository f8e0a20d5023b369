//! The foundation, end to end: the real binary, real scripts, a real WebSocket client.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[tokio::test]
async fn chat_three_clients_join_talk_and_leave() {
    let host = Host::start("scripts/chat.rhai");
    let mut a = connect(&host.url("/?name=alice")).await;
    assert_eq!(recv_text(&mut a).await, "Welcome on the chat!");
    let mut b = connect(&host.url("/?name=bob")).await;
    assert_eq!(recv_text(&mut b).await, "Welcome on the chat!");
    assert_eq!(recv_text(&mut a).await, "New client connected");
    let mut c = connect(&host.url("/")).await;
    assert_eq!(recv_text(&mut c).await, "Welcome on the chat!");
    assert_eq!(recv_text(&mut a).await, "New client connected");
    assert_eq!(recv_text(&mut b).await, "New client connected");

    send_text(&mut b, "hello from bob").await;
    assert_eq!(recv_text(&mut a).await, "hello from bob");
    assert_eq!(recv_text(&mut c).await, "hello from bob");
    // The sender does not get its own message back.
    assert_silent(&mut b, Duration::from_millis(200)).await;

    c.close(None).await.unwrap();
    assert_eq!(recv_text(&mut a).await, "Client disconnected");
    assert_eq!(recv_text(&mut b).await, "Client disconnected");

    send_text(&mut a, "still here?").await;
    assert_eq!(recv_text(&mut b).await, "still here?");
    assert!(host.stdout().contains("chat: server started on port"));
}

/// `?room=` puts a client in a room (a topic): talk stays in its room.
#[tokio::test]
async fn chat_rooms_keep_their_talk_apart() {
    let host = Host::start("scripts/chat.rhai");
    let mut lobby = connect(&host.url("/?name=ann")).await;
    assert_eq!(recv_text(&mut lobby).await, "Welcome on the chat!");
    let mut red1 = connect(&host.url("/?name=bo&room=red")).await;
    assert_eq!(recv_text(&mut red1).await, "Welcome on the chat!");
    let mut red2 = connect(&host.url("/?name=cy&room=red")).await;
    assert_eq!(recv_text(&mut red2).await, "Welcome on the chat!");
    assert_eq!(recv_text(&mut red1).await, "New client connected");

    send_text(&mut red2, "in red").await;
    assert_eq!(recv_text(&mut red1).await, "in red");
    send_text(&mut lobby, "in the lobby").await;
    red2.close(None).await.unwrap();
    assert_eq!(recv_text(&mut red1).await, "Client disconnected");
    // The lobby heard nothing of the red room, and red nothing of the lobby.
    assert_silent(&mut lobby, Duration::from_millis(200)).await;
    assert_silent(&mut red1, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn chat_refuses_a_banned_name_with_http_403() {
    let host = Host::start("scripts/chat.rhai");
    let err = tokio_tungstenite::connect_async(host.url("/?name=root"))
        .await
        .expect_err("a banned name is refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 403),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    assert!(
        host.wait_stdout("refused the name \"root\"", TIMEOUT)
            .is_some(),
        "{}",
        host.stdout()
    );
    // Others still get in.
    let mut a = connect(&host.url("/?name=alice")).await;
    assert_eq!(recv_text(&mut a).await, "Welcome on the chat!");
}

#[tokio::test]
async fn refusal_by_remote_address() {
    let host = Host::start(&fixture("refuse_local.rhai"));
    let err = tokio_tungstenite::connect_async(host.url("/"))
        .await
        .expect_err("127.0.0.1 is refused");
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 403),
        "{err}"
    );
}

#[tokio::test]
async fn uppercase_server_answers_in_upper_case() {
    let host = Host::start("scripts/uppercase.rhai");
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "Hello, wshost!").await;
    assert_eq!(recv_text(&mut ws).await, "HELLO, WSHOST!");
    send_text(&mut ws, "àé ok").await;
    assert_eq!(recv_text(&mut ws).await, "ÀÉ OK");
}

#[tokio::test]
async fn echo_keeps_text_as_text_and_binary_as_binary() {
    let host = Host::start("scripts/echo.rhai");
    let mut ws = connect(&host.url("/any/path")).await;
    send_text(&mut ws, "ping").await;
    assert_eq!(recv(&mut ws).await, Message::text("ping"));
    let bytes = vec![0u8, 1, 2, 255, 254];
    ws.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::binary(bytes));
    // A larger message, in order with a small one.
    let big = "x".repeat(200_000);
    send_text(&mut ws, &big).await;
    send_text(&mut ws, "after").await;
    assert_eq!(recv_text(&mut ws).await.len(), big.len());
    assert_eq!(recv_text(&mut ws).await, "after");
}

#[tokio::test]
async fn object_data_type_parses_json_and_reports_invalid_json() {
    let host = Host::start(&fixture("object.rhai"));
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, r#"{"a": 1, "b": [true, "x"]}"#).await;
    let got: serde_json::Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(
        got,
        serde_json::json!({"got": {"a": 1, "b": [true, "x"]}, "kind": "map"})
    );
    send_text(&mut ws, "[1, 2]").await;
    let got: serde_json::Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(got, serde_json::json!({"got": [1, 2], "kind": "array"}));

    send_text(&mut ws, "{not json").await;
    assert_eq!(recv_text(&mut ws).await, "error 10: {not json");
    // The connection stays open.
    send_text(&mut ws, "42").await;
    let got: serde_json::Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(got, serde_json::json!({"got": 42, "kind": "i64"}));
}

#[tokio::test]
async fn blob_data_type_delivers_blobs() {
    let host = Host::start(&fixture("blob.rhai"));
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "héllo").await;
    assert_eq!(recv_text(&mut ws).await, "blob 6");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(recv_text(&mut ws).await, "blob 3");
}

#[tokio::test]
async fn text_data_type_delivers_binary_frames_as_blobs() {
    let host = Host::start(&fixture("features.rhai"));
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "binary").await;
    assert_eq!(recv(&mut ws).await, Message::binary(vec![7u8, 7, 7]));
}

#[tokio::test]
async fn instance_state_persists_across_callbacks() {
    let host = Host::start(&fixture("features.rhai"));
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "count").await;
    assert_eq!(recv_text(&mut ws).await, "1 1");
    send_text(&mut ws, "count").await;
    assert_eq!(recv_text(&mut ws).await, "2 2");
    // A second connection has its own handler state.
    let mut other = connect(&host.url("/")).await;
    send_text(&mut other, "count").await;
    assert_eq!(recv_text(&mut other).await, "1 1");
}

#[tokio::test]
async fn server_and_connection_properties() {
    let host = Host::start(&fixture("features.rhai"));
    let mut ws = connect(&host.url("/")).await;
    let mut second = connect(&host.url("/")).await;
    // A round trip, so the worker has seen the second connection open.
    send_text(&mut second, "count").await;
    recv_text(&mut second).await;
    send_text(&mut ws, "props").await;
    let props: serde_json::Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(props["port"], host.port);
    assert_eq!(props["path"], serde_json::Value::Null);
    assert_eq!(props["dataType"], "text");
    assert_eq!(props["terminated"], false);
    assert_eq!(props["connections"], 2);
    assert_eq!(props["status"], "Connected");
    assert_eq!(props["sameHandler"], true);
    assert!(props["id"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn request_carries_url_headers_query_and_remote_address() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let host = Host::start(&fixture("features.rhai"));
    let mut req = host
        .url("/room?x=1&y=a%20b&x=2")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("X-Custom", "yes".parse().unwrap());
    req.headers_mut().append("X-Multi", "one".parse().unwrap());
    req.headers_mut().append("X-Multi", "two".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send_text(&mut ws, "request").await;
    let r: serde_json::Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(r["url"], "/room?x=1&y=a%20b&x=2");
    assert_eq!(r["query"]["x"], serde_json::json!(["1", "2"]));
    assert_eq!(r["query"]["y"], "a b");
    assert_eq!(r["headers"]["x-custom"], "yes");
    assert_eq!(r["headers"]["x-multi"], serde_json::json!(["one", "two"]));
    assert_eq!(r["headers"]["upgrade"], "websocket");
    assert_eq!(r["remoteAddress"], "127.0.0.1");
}

#[tokio::test]
async fn handler_refusing_by_query_gives_403() {
    let host = Host::start(&fixture("features.rhai"));
    let err = tokio_tungstenite::connect_async(host.url("/?refuse=yes"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 403),
        "{err}"
    );
}

#[tokio::test]
async fn terminate_codes_and_reasons_reach_the_client() {
    let host = Host::start(&fixture("features.rhai"));
    for (cmd, code, reason) in [
        ("close", 1000, ""),
        ("close 4001", 4001, ""),
        ("close 3000 going-home", 3000, "going-home"),
    ] {
        let mut ws = connect(&host.url("/")).await;
        send_text(&mut ws, cmd).await;
        assert_eq!(
            recv_close(&mut ws).await,
            (code, reason.to_string()),
            "{cmd}"
        );
    }
    // Invalid codes are script errors the script can catch.
    let mut ws = connect(&host.url("/")).await;
    for bad in ["999", "1001", "2999", "5000"] {
        send_text(&mut ws, &format!("badclose {bad}")).await;
        let answer = recv_text(&mut ws).await;
        assert!(
            answer.starts_with("caught: ") && answer.contains("1000 or 3000-4999"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_client_close_reaches_on_terminate_with_its_code() {
    let host = Host::start(&fixture("features.rhai"));
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "count").await;
    recv_text(&mut ws).await;
    ws.close(Some(CloseFrame {
        code: 4321u16.into(),
        reason: "see you".into(),
    }))
    .await
    .unwrap();
    assert!(
        host.wait_stdout(" 4321 see you", TIMEOUT).is_some(),
        "{}",
        host.stdout()
    );
}

#[tokio::test]
async fn a_throwing_callback_is_logged_with_its_location_and_goes_to_on_error() {
    let host = Host::start(&fixture("features.rhai"));
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "boom").await;
    let answer = recv_text(&mut ws).await;
    assert!(
        answer.starts_with("onError 1 wshost.script: tests/fixtures/features.rhai:"),
        "{answer}"
    );
    assert!(answer.contains("boom on purpose"), "{answer}");
    let line = host
        .wait_stderr("boom on purpose", TIMEOUT)
        .expect("logged");
    assert!(
        line.contains("tests/fixtures/features.rhai:46:19"),
        "{line}"
    );
    assert!(line.contains("connection"), "{line}");
    assert!(
        host.wait_stderr("\"boom\" => throw", TIMEOUT).is_some(),
        "source line quoted"
    );

    send_text(&mut ws, "undefined").await;
    let answer = recv_text(&mut ws).await;
    assert!(answer.contains("no_such_function"), "{answer}");

    // The connection and the server keep working.
    send_text(&mut ws, "count").await;
    assert_eq!(recv_text(&mut ws).await, "3 3");
    let mut other = connect(&host.url("/")).await;
    send_text(&mut other, "count").await;
    assert_eq!(recv_text(&mut other).await, "1 1");
}

#[tokio::test]
async fn callbacks_come_in_order_and_terminate_once_even_when_the_peer_vanishes() {
    let host = Host::start(&fixture("features.rhai"));
    let mut watcher = connect(&host.url("/")).await;
    let mut gone = connect(&host.url("/")).await;
    send_text(&mut gone, "boom").await;
    recv_text(&mut gone).await;
    // Drop the TCP connection without a close frame.
    drop(gone);
    host.wait_stdout(" 1006 ", TIMEOUT)
        .expect("onTerminate with 1006");
    send_text(&mut watcher, "log").await;
    let log: Vec<String> = serde_json::from_str(&recv_text(&mut watcher).await).unwrap();
    // watcher opened first, then `gone`: open, error (the throw), one network error for the
    // lost connection, then terminate with 1006, once.
    assert_eq!(log.len(), 5, "{log:?}");
    let gone_id = log[1].split(':').next().unwrap();
    assert_eq!(log[1], format!("{gone_id}:open:Connected"));
    assert_eq!(log[2], format!("{gone_id}:error:1"));
    assert_eq!(log[3], format!("{gone_id}:error:20"));
    assert_eq!(log[4], format!("{gone_id}:terminate:1006:Closed"));
}

#[tokio::test]
async fn servers_share_a_port_by_path_and_other_paths_are_refused() {
    let host = Host::start(&fixture("paths.rhai"));
    host.wait_stderr("/b", TIMEOUT)
        .expect("second server listening");
    let mut a = connect(&host.url("/a")).await;
    let mut b = connect(&host.url("/b")).await;
    send_text(&mut a, "hi").await;
    send_text(&mut b, "hi").await;
    assert_eq!(recv_text(&mut a).await, "a: hi");
    assert_eq!(recv_text(&mut b).await, "b: hi");
    let err = tokio_tungstenite::connect_async(host.url("/c"))
        .await
        .expect_err("no server on /c");
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 404),
        "{err}"
    );
}

#[tokio::test]
async fn server_terminate_closes_connections_with_1001_and_the_host_exits() {
    let mut host = Host::start(&fixture("features.rhai"));
    let mut a = connect(&host.url("/")).await;
    let mut b = connect(&host.url("/")).await;
    send_text(&mut a, "stop").await;
    assert_eq!(recv_close(&mut a).await.0, 1001);
    assert_eq!(recv_close(&mut b).await.0, 1001);
    let status = host.wait_exit(TIMEOUT).expect("exits once nothing is left");
    assert!(status.success(), "{status:?}\n{}", host.stderr());
    assert_eq!(
        host.stdout().matches("terminated ").count(),
        2,
        "{}",
        host.stdout()
    );
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_runs_on_terminate_and_exits_0() {
    let mut host = Host::start("scripts/chat.rhai");
    let mut a = connect(&host.url("/")).await;
    recv_text(&mut a).await;
    let mut b = connect(&host.url("/")).await;
    recv_text(&mut b).await;
    recv_text(&mut a).await;
    let started = std::time::Instant::now();
    host.terminate();
    assert_eq!(recv_close(&mut a).await.0, 1001);
    assert_eq!(recv_close(&mut b).await.0, 1001);
    let status = host
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s");
    assert!(status.success(), "{status:?}\n{}", host.stderr());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        host.stdout().contains("chat: server stopped"),
        "{}",
        host.stdout()
    );
}

#[tokio::test]
async fn sigterm_exits_promptly_even_when_a_client_never_answers_the_close() {
    let mut host = Host::start("scripts/echo.rhai");
    // A raw TCP client that completes the handshake and then never reads nor answers.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", host.port))
        .await
        .unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    host.terminate();
    let status = host
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s");
    assert!(status.success());
}
