//! `wshost-bench fanout`: topics within one node and across two nodes of a cluster, through a
//! real `redis-server` started here. Two wshost nodes (A and B) run bench/scripts/topic.rhai
//! with `--cluster`; the receivers are on node B. "same node": the sender is on B too.
//! "across nodes": the sender is on A, so every message goes A → Redis → B before B fans it
//! out. Also the memory of a subscribed connection (RSS growth of B per subscriber).
//!
//! Pinned as `all` is (the load generator on one core), with both nodes and Redis on the
//! other: the node's µs per delivery is node B's CPU time alone.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Mode;
use crate::load::{self, Measured, Target, Timing};
use crate::pinning::{self, Cores};
use crate::report::thousands;
use crate::server::{Kind, Launcher};

pub struct Config {
    pub wshost: std::path::PathBuf,
    pub rounds: usize,
    pub window: Duration,
    pub warmup: Duration,
    pub receivers: usize,
    pub chat_window: usize,
    pub pin: bool,
}

/// A redis-server on a free port of 127.0.0.1, saving nothing; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis(core: Option<usize>) -> anyhow::Result<Redis> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(core) = core {
        pinning::pin_command(&mut cmd, core);
    }
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start redis-server (Debian: redis-server): {e}"))?;
    let redis = Redis { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(redis)
}

pub fn fanout(config: &Config) -> anyhow::Result<()> {
    let cores = Cores::choose(config.pin);
    if let Some(core) = cores.load {
        pinning::pin_this_thread(core)?;
    }
    let redis = start_redis(cores.server)?;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let launcher = Launcher {
        wshost: config.wshost.clone(),
        workers: 1,
        core: cores.server,
    };
    let node_a = launcher.start_with(Kind::Wshost, Mode::Topic, &["--cluster", &url])?;
    let node_b = launcher.start_with(Kind::Wshost, Mode::Topic, &["--cluster", &url])?;
    let timing = Timing {
        warmup: config.warmup,
        window: config.window,
        spin: cores.load.is_some(),
    };
    println!(
        "wshost-bench fanout: {} round(s), {:.1} s windows after {:.1} s of warm-up; {} (both \
         nodes and redis-server on the servers' core); {} receivers on node B",
        config.rounds,
        config.window.as_secs_f64(),
        config.warmup.as_secs_f64(),
        cores.describe(),
        config.receivers
    );
    let target = Target {
        addr: node_b.addr(),
        pid: node_b.pid(),
        core: cores.server,
    };
    // Let the nodes find each other through Redis.
    std::thread::sleep(Duration::from_millis(500));
    let kib = load::idle_memory(target, config.receivers)?;

    let settle = Duration::from_millis(300);
    let mut same = Vec::new();
    let mut across = Vec::new();
    for round in 0..config.rounds {
        for (name, sender, into) in [
            ("same node", node_b.addr(), &mut same),
            ("across nodes", node_a.addr(), &mut across),
        ] {
            let measured = load::chat_from(
                sender,
                target,
                config.receivers,
                config.chat_window,
                timing,
                settle,
            )?;
            if let Some(first) = measured.failures.first() {
                println!(
                    "WARNING: {name}: {} connection(s) failed; not to be trusted. First: {first}",
                    measured.failures.len()
                );
            }
            println!(
                "{{\"bench\":\"fanout\",\"where\":\"{name}\",\"round\":{round},\"per_s\":{:.0},\
                 \"p50_ms\":{:.3},\"p99_ms\":{:.3},\"node_b_us_per_delivery\":{:.3}}}",
                measured.rate(),
                measured.percentile_ms(0.5),
                measured.percentile_ms(0.99),
                measured.server_us_per_msg()
            );
            into.push(measured);
        }
    }
    println!();
    println!(
        "fanout: 1 sender → {} receivers subscribed to one topic on node B (median of {} \
         round(s))",
        config.receivers, config.rounds
    );
    println!(
        "{:<14} {:>12} {:>8} {:>8} {:>16}",
        "sender on", "deliv/s", "p50 ms", "p99 ms", "B µs/delivery"
    );
    for (name, runs) in [("same node (B)", &same), ("other node (A)", &across)] {
        println!(
            "{:<14} {:>12} {:>8.3} {:>8.3} {:>16.3}",
            name,
            thousands(median(runs.iter().map(Measured::rate))),
            median(runs.iter().map(|m| m.percentile_ms(0.5))),
            median(runs.iter().map(|m| m.percentile_ms(0.99))),
            median(runs.iter().map(Measured::server_us_per_msg)),
        );
    }
    println!(
        "memory: {kib:.2} KiB of node B's RSS per subscribed connection ({} connections)",
        config.receivers
    );
    drop((node_a, node_b));
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    crate::report::median(values.collect())
}
