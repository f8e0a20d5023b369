//! Objects that hold each other are freed when no connection, server or timer reaches them
//! (src/script/collect.rs).

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn handlers_in_cycles_are_freed_after_their_connections_close() {
    let host = Host::start(&fixture("objects4d/cycles.rhai"));
    let kinds = ["pair", "capture", "class"];
    // Warm up: the allocator's arenas, the first objects.
    let round = |n: usize| {
        let url = host.url("/");
        async move {
            for i in 0..n {
                let kind = kinds[i % kinds.len()];
                let mut ws = connect(&format!("{url}?kind={kind}")).await;
                send_text(&mut ws, "hi").await;
                let answer = recv_text(&mut ws).await;
                assert!(answer.starts_with(kind), "{answer}");
                ws.close(None).await.unwrap();
                // The close is seen by the host: the next connection is not opened before.
                while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
            }
        }
    };
    round(60).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = host.rss_kib();
    round(1_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = host.rss_kib();
    println!("RSS {before} KiB before, {after} KiB after");
    // 1,000 × 100 KB would be about 100 MB kept.
    assert!(
        after < before + (30 << 10),
        "RSS grew from {before} KiB to {after} KiB"
    );
}
