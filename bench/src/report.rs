//! `wshost-bench all`: runs every selected workload against every server, round after round,
//! prints a JSON line per run, then a table per workload with the median of each figure and
//! whether the reference was pushed to its limit. The load itself is load.rs's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::load::{self, Answer, EchoShape, Measured, Timing};
use crate::pinning::{self, Cores};
use crate::server::{self, Kind, Launcher};
use crate::{Mode, Workload};

pub struct Config {
    pub wshost: PathBuf,
    pub rounds: usize,
    pub window: Duration,
    pub warmup: Duration,
    pub workers: usize,
    pub pin: bool,
    pub spin: bool,
    pub only: Vec<Workload>,
    pub echo: EchoShape,
    pub receivers: usize,
    pub chat_window: usize,
    pub idle: usize,
}

/// The reference is at its limit when its core is at least this busy (and the load
/// generator's less).
const LIMIT_PERCENT: f64 = 90.0;

/// More than this share of the server's core used by anything else disturbs the figures.
const CROWDED_PERCENT: f64 = 10.0;

/// One run's figures.
#[derive(Clone, Copy)]
enum Sample {
    Throughput {
        rate: f64,
        p50_ms: f64,
        p99_ms: f64,
        server_us_per_msg: f64,
        server_core: f64,
        /// Busy share of the load generator's core (see `Used::load_busy_percent`).
        load_core: f64,
        /// The load generator's CPU time in % of a core.
        load_cpu: f64,
        /// What else used the server's core (other processes, the hypervisor), in % of it.
        others: f64,
    },
    KibPerConnection(f64),
    StartupMs(f64),
}

pub fn all(config: &Config) -> anyhow::Result<()> {
    let cores = Cores::choose(config.pin);
    if let Some(core) = cores.load {
        pinning::pin_this_thread(core)?;
    }
    let launcher = Launcher {
        wshost: config.wshost.clone(),
        workers: config.workers,
        core: cores.server,
    };
    let node_missing = server::node_ws_missing();
    let timing = Timing {
        warmup: config.warmup,
        window: config.window,
        // Busy-polling costs the servers nothing only when the load generator has its own core.
        spin: config.spin && cores.load.is_some(),
    };
    println!(
        "wshost-bench all: {} round(s), {:.1} s windows after {:.1} s of warm-up; {}; wshost {} \
         --workers {}",
        config.rounds,
        config.window.as_secs_f64(),
        config.warmup.as_secs_f64(),
        cores.describe(),
        config.wshost.display(),
        config.workers
    );
    println!(
        "load generator: {}",
        if timing.spin {
            "busy-polls (an idle core is slow to wake); its % below is the share of its core it \
             spent on work, not its CPU time (100 %)"
        } else {
            "sleeps when it has nothing to do; its % below is its CPU time"
        }
    );
    if let Some(why) = &node_missing
        && config.only.contains(&Workload::Echo)
    {
        println!("node ws: skipped ({why})");
    }

    let mut samples: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    for round in 0..config.rounds {
        for (w, &workload) in config.only.iter().enumerate() {
            for (k, &kind) in servers(workload, node_missing.is_none()).iter().enumerate() {
                let sample = run_one(config, &launcher, timing, workload, kind)
                    .map_err(|e| e.context(format!("{workload:?} against {}", kind.name())))?;
                println!("{}", json_line(workload, kind, round, &sample));
                samples.entry((w, k)).or_default().push(sample);
            }
        }
    }

    for (w, &workload) in config.only.iter().enumerate() {
        let kinds = servers(workload, node_missing.is_none());
        let rows: Vec<(Kind, Vec<Sample>)> = kinds
            .iter()
            .enumerate()
            .map(|(k, &kind)| (kind, samples.remove(&(w, k)).unwrap_or_default()))
            .collect();
        println!();
        print_table(config, workload, &rows, cores);
    }
    println!();
    println!(
        "(CPU times come from /proc in clock ticks of 10 ms: over a window of {:.0} s that is \
         ±{:.1} % of a core.)",
        config.window.as_secs_f64(),
        100.0 * 0.01 / config.window.as_secs_f64().max(0.01)
    );
    Ok(())
}

fn servers(workload: Workload, node: bool) -> Vec<Kind> {
    let mut kinds = vec![Kind::Reference, Kind::Wshost];
    if workload == Workload::Echo && node {
        kinds.push(Kind::NodeWs);
    }
    kinds
}

fn run_one(
    config: &Config,
    launcher: &Launcher,
    timing: Timing,
    workload: Workload,
    kind: Kind,
) -> anyhow::Result<Sample> {
    let mode = match workload {
        Workload::Chat => Mode::Chat,
        Workload::Topic => Mode::Topic,
        Workload::Json => Mode::Json,
        Workload::Echo | Workload::Memory | Workload::Startup => Mode::Echo,
    };
    let server = launcher.start(kind, mode)?;
    let target = load::Target {
        addr: server.addr(),
        pid: server.pid(),
        core: launcher.core,
    };
    let measured = match workload {
        Workload::Startup => {
            return Ok(Sample::StartupMs(server.startup.as_secs_f64() * 1000.0));
        }
        Workload::Memory => {
            let kib = load::idle_memory(target, config.idle)?;
            return Ok(Sample::KibPerConnection(kib));
        }
        Workload::Echo => {
            let payload = vec![b'x'; config.echo.size];
            load::request_answer(target, config.echo, &payload, Answer::Echo, timing)?
        }
        Workload::Json => load::request_answer(
            target,
            config.echo,
            load::JSON_MESSAGE,
            Answer::Total,
            timing,
        )?,
        Workload::Chat | Workload::Topic => {
            load::chat(target, config.receivers, config.chat_window, timing)?
        }
    };
    drop(server);
    report_failures(workload, kind, &measured);
    let sample = throughput(&measured);
    if let Sample::Throughput { others, .. } = sample
        && others > CROWDED_PERCENT
    {
        println!(
            "WARNING: {workload:?} against {}: something else used {others:.0} % of the server's \
             core during this run",
            kind.name()
        );
    }
    Ok(sample)
}

fn report_failures(workload: Workload, kind: Kind, measured: &Measured) {
    if measured.failures.is_empty() {
        return;
    }
    println!(
        "WARNING: {workload:?} against {}: {} connection(s) failed; this run's figures are not \
         to be trusted. First: {}",
        kind.name(),
        measured.failures.len(),
        measured.failures[0]
    );
}

fn throughput(m: &Measured) -> Sample {
    Sample::Throughput {
        rate: m.rate(),
        p50_ms: m.percentile_ms(0.5),
        p99_ms: m.percentile_ms(0.99),
        server_us_per_msg: m.server_us_per_msg(),
        server_core: m.used.core_percent(m.used.server),
        load_core: m.used.load_busy_percent(),
        load_cpu: m.used.core_percent(m.used.load),
        others: m.used.server_core_busy.map_or(f64::NAN, |busy| {
            (busy - m.used.core_percent(m.used.server)).max(0.0)
        }),
    }
}

fn json_line(workload: Workload, kind: Kind, round: usize, sample: &Sample) -> String {
    let head = format!(
        "{{\"bench\":\"{}\",\"server\":\"{}\",\"round\":{round}",
        format!("{workload:?}").to_lowercase(),
        kind.name()
    );
    match *sample {
        Sample::Throughput {
            rate,
            p50_ms,
            p99_ms,
            server_us_per_msg,
            server_core,
            load_core,
            load_cpu,
            others,
        } => format!(
            "{head},\"per_s\":{rate:.0},\"p50_ms\":{},\"p99_ms\":{},\"server_us_per_msg\":\
             {server_us_per_msg:.3},\"server_core_pct\":{server_core:.1},\
             \"loadgen_core_pct\":{load_core:.1},\"loadgen_cpu_pct\":{load_cpu:.1},\
             \"others_on_server_core_pct\":{}}}",
            json_number(p50_ms),
            json_number(p99_ms),
            json_number(others)
        ),
        Sample::KibPerConnection(kib) => format!("{head},\"kib_per_idle_connection\":{kib:.2}}}"),
        Sample::StartupMs(ms) => format!("{head},\"startup_ms\":{ms:.1}}}"),
    }
}

fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of each figure of a server's samples.
fn medians(samples: &[Sample]) -> Option<[f64; 7]> {
    let mut columns: [Vec<f64>; 7] = Default::default();
    for s in samples {
        let Sample::Throughput {
            rate,
            p50_ms,
            p99_ms,
            server_us_per_msg,
            server_core,
            load_core,
            others,
            ..
        } = *s
        else {
            return None;
        };
        for (c, v) in columns.iter_mut().zip([
            rate,
            p50_ms,
            p99_ms,
            server_us_per_msg,
            server_core,
            load_core,
            others,
        ]) {
            c.push(v);
        }
    }
    Some(columns.map(median))
}

fn single_medians(samples: &[Sample]) -> f64 {
    median(
        samples
            .iter()
            .filter_map(|s| match *s {
                Sample::KibPerConnection(v) | Sample::StartupMs(v) => Some(v),
                Sample::Throughput { .. } => None,
            })
            .collect(),
    )
}

fn print_table(config: &Config, workload: Workload, rows: &[(Kind, Vec<Sample>)], cores: Cores) {
    let e = config.echo;
    let (title, unit) = match workload {
        Workload::Echo => (
            format!(
                "echo: {} connections × {}-byte text × {} in flight",
                e.connections, e.size, e.in_flight
            ),
            "msgs/s",
        ),
        Workload::Json => (
            format!(
                "json: {} connections × {{\"op\":\"add\",\"n\":1}} × {} in flight, answered \
                 {{\"total\":N}}",
                e.connections, e.in_flight
            ),
            "msgs/s",
        ),
        Workload::Chat => (
            format!(
                "chat: 1 sender → {} receivers, at most {} messages not yet read by every \
                 receiver; rate = deliveries/s, latency = send to the last receiver's read",
                config.receivers, config.chat_window
            ),
            "deliv/s",
        ),
        Workload::Topic => (
            format!(
                "topic: as chat, but wshost publishes to a topic all {} receivers subscribed to \
                 (native fan-out); the reference is the same broadcast",
                config.receivers
            ),
            "deliv/s",
        ),
        Workload::Memory => (
            format!("memory: {} idle connections, RSS growth", config.idle),
            "KiB/conn",
        ),
        Workload::Startup => ("startup: spawn to listening".into(), "ms"),
    };
    let rounds = rows.first().map_or(0, |(_, s)| s.len());
    println!("{title} (median of {rounds} round(s))");

    if matches!(workload, Workload::Memory | Workload::Startup) {
        println!("{:<10} {:>10} {:>7}", "server", unit, "ratio");
        let reference = rows.first().map_or(f64::NAN, |(_, s)| single_medians(s));
        for (kind, samples) in rows {
            let v = single_medians(samples);
            println!(
                "{:<10} {:>10} {:>7}",
                kind.name(),
                fixed(v, 2),
                fixed(v / reference, 2)
            );
        }
        return;
    }

    println!(
        "{:<10} {:>11} {:>6} {:>8} {:>8} {:>7} {:>9} {:>8} {:>10}",
        "server", unit, "ratio", "p50 ms", "p99 ms", "µs/msg", "server %", "other %", "loadgen %"
    );
    let reference = rows.first().and_then(|(_, s)| medians(s));
    let mut crowded = 0.0f64;
    for (kind, samples) in rows {
        let Some([rate, p50, p99, us, server_core, load_core, others]) = medians(samples) else {
            continue;
        };
        let ratio = reference.map_or(f64::NAN, |r| rate / r[0]);
        if others.is_finite() {
            crowded = crowded.max(others);
        }
        println!(
            "{:<10} {:>11} {:>6} {:>8} {:>8} {:>7} {:>9} {:>8} {:>10}",
            kind.name(),
            thousands(rate),
            fixed(ratio, 2),
            fixed(p50, 3),
            fixed(p99, 3),
            fixed(us, 2),
            fixed(server_core, 0),
            fixed(others, 0),
            fixed(load_core, 0)
        );
    }
    if let Some(r) = reference {
        println!("{}", limit_line(r[4], r[5], cores));
    }
    if crowded > CROWDED_PERCENT {
        println!(
            "WARNING: something else (other processes, the hypervisor) used up to {crowded:.0} % \
             of the servers' core: the figures above are disturbed; take them on a quiet machine."
        );
    }
}

/// Whether the reference reached its limit, and a loud warning when it did not.
fn limit_line(server_core: f64, load_core: f64, cores: Cores) -> String {
    if cores.server.is_none() {
        return format!(
            "WARNING: unpinned: whether the reference reached its limit cannot be told from one \
             core's use (reference {server_core:.0} %, load generator {load_core:.0} % of a \
             core); the ratios compare servers sharing every core with the load generator."
        );
    }
    if server_core >= LIMIT_PERCENT && load_core < server_core {
        format!(
            "reference reached its limit: its core {server_core:.0} % busy (≥ {LIMIT_PERCENT:.0} \
             %), the load generator's {load_core:.0} % (below it)."
        )
    } else {
        format!(
            "WARNING: the reference did NOT reach its limit (its core {server_core:.0} % busy, \
             the load generator's {load_core:.0} %): the load generator or the machine was the \
             bottleneck, and the ratios above are NOT meaningful."
        )
    }
}

/// `v` with `decimals` decimals, or `-` when there is no figure.
fn fixed(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
