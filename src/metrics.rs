//! What operators watch: the Prometheus metrics and the `/metrics` + `/healthz` listener
//! (`--metrics ADDR`).
//!
//! The `metrics` crate records, `metrics-exporter-prometheus` writes the exposition format.
//! The handles the per-message path uses are made once, when the recorder is installed, and
//! kept in a static: counting a message is an atomic add, and with `--metrics` off it is one
//! load of an empty `OnceLock` (no clock read for the callback timings either). Labels are a
//! bounded set: a server's configured path, a callback name, a refusal reason; never a
//! connection id or a topic.
//!
//! The callback durations are the exception: the exporter's histogram keeps every sample
//! until it is drained (a push of 16 bytes per callback, some 190 instructions, plus the
//! draining), so they are counted in fixed buckets here ([`Durations`]: two atomic adds per
//! callback) and written by `prometheus-client`'s encoder after the exporter's text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::topics::Topics;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::Counter;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// The callbacks timed under their own name; any other is `other`.
const CALLBACKS: [&str; 6] = [
    "onConnection",
    "onOpen",
    "onMessage",
    "onError",
    "onTerminate",
    "onReload",
];

/// Seconds: from 10 µs (an echo) to 10 s (past any callback time budget).
/// Upper bounds of the callback-duration buckets, in nanoseconds (10 µs … 10 s).
const DURATION_BOUNDS_NS: [u64; 13] = [
    10_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// A histogram of durations in fixed buckets: an observation is two atomic adds, with no
/// allocation and nothing to drain.
#[derive(Default)]
pub(crate) struct Durations {
    /// One per bound, then the rest (+Inf); not cumulative.
    buckets: [AtomicU64; DURATION_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Durations {
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = DURATION_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(DURATION_BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Sum in seconds, count, and (upper bound in seconds, count) per bucket.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let bounds = DURATION_BOUNDS_NS
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain([f64::MAX]);
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, counts.iter().sum(), bounds.zip(counts).collect())
    }
}

/// Writes `wshost_callback_duration_seconds` (by callback) on each scrape.
#[derive(Debug)]
struct CallbackDurations;

impl Collector for CallbackDurations {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(m) = get() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "wshost_callback_duration_seconds",
            "time spent in script callbacks, by callback name",
            None,
            MetricType::Histogram,
        )?;
        let names = CALLBACKS.iter().chain(["other"].iter());
        for (name, durations) in names.zip(m.callbacks.iter()) {
            let (sum, count, buckets) = durations.snapshot();
            let labels = [("callback", *name)];
            family
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }
        Ok(())
    }
}

/// The counters counted per message: plain atomics, copied into the recorder when scraped.
/// (A recorder counter is a call through a trait object that bumps a generation counter
/// besides the value: twice the atomic operations, on every message.)
#[derive(Default)]
pub(crate) struct Traffic {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Traffic {
    #[inline]
    pub fn received(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    #[inline]
    pub fn sent(&self, messages: u64, bytes: usize) {
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The handles of the counters counted per message or per callback.
pub(crate) struct Metrics {
    pub traffic: Traffic,
    exported: [Counter; 4],
    pub slow_peer_closes: Counter,
    pub callback_errors: Counter,
    pub budget_stops: Counter,
    pub reloads: Counter,
    pub reloads_failed: Counter,
    /// Per name of CALLBACKS, then `other`.
    callbacks: [Durations; CALLBACKS.len() + 1],
}

impl Metrics {
    /// Copies the plain counters into the recorder (before a scrape renders it).
    fn export(&self) {
        let t = &self.traffic;
        let values = [&t.messages_in, &t.bytes_in, &t.messages_out, &t.bytes_out];
        for (counter, value) in self.exported.iter().zip(values) {
            counter.absolute(value.load(Ordering::Relaxed));
        }
    }

    /// The duration histogram of callback `name`.
    pub fn callback(&self, name: &str) -> &Durations {
        let i = CALLBACKS
            .iter()
            .position(|c| *c == name)
            .unwrap_or(CALLBACKS.len());
        &self.callbacks[i]
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The metrics, if `--metrics` is on (a recorder is installed).
#[inline]
pub(crate) fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Counts an upgrade refused, under `reason` (an HTTP status, `origin`, `handshake_timeout`).
pub(crate) fn refused(reason: &'static str) {
    if get().is_some() {
        metrics::counter!("wshost_connections_refused_total", "reason" => reason).increment(1);
    }
}

/// Installs the process-wide recorder (once; a second host shares it) and makes the handles.
fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();
    let _ = METRICS.set(Metrics {
        traffic: Traffic::default(),
        exported: [
            metrics::counter!("wshost_messages_in_total"),
            metrics::counter!("wshost_bytes_in_total"),
            metrics::counter!("wshost_messages_out_total"),
            metrics::counter!("wshost_bytes_out_total"),
        ],
        slow_peer_closes: metrics::counter!("wshost_slow_peer_closes_total"),
        callback_errors: metrics::counter!("wshost_callback_errors_total"),
        budget_stops: metrics::counter!("wshost_callback_budget_stops_total"),
        reloads: metrics::counter!("wshost_reloads_total"),
        reloads_failed: metrics::counter!("wshost_reloads_failed_total"),
        callbacks: Default::default(),
    });
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "wshost_connections_open",
        "open WebSocket connections, by server path"
    );
    describe_counter!(
        "wshost_connections_accepted_total",
        "upgrades accepted, by server path"
    );
    describe_counter!(
        "wshost_connections_refused_total",
        "upgrades refused, by reason (HTTP status, origin, handshake_timeout)"
    );
    describe_counter!("wshost_messages_in_total", "messages received");
    describe_counter!("wshost_bytes_in_total", "payload bytes received");
    describe_counter!("wshost_messages_out_total", "messages sent");
    describe_counter!("wshost_bytes_out_total", "payload bytes sent");
    describe_counter!(
        "wshost_slow_peer_closes_total",
        "connections closed with 1008 because the peer did not read"
    );
    describe_counter!(
        "wshost_callback_errors_total",
        "callbacks that ended with a script error"
    );
    describe_counter!(
        "wshost_callback_budget_stops_total",
        "callbacks stopped by their budget (operations, time)"
    );
    describe_counter!("wshost_reloads_total", "hot reloads that took effect");
    describe_gauge!("wshost_topics", "topics with subscribers on this node");
    describe_counter!("wshost_publishes_total", "publishes made on this node");
    describe_counter!(
        "wshost_cluster_publishes_sent_total",
        "publishes passed to the other nodes through Redis"
    );
    describe_counter!(
        "wshost_cluster_publishes_received_total",
        "publishes of other nodes delivered here"
    );
    describe_counter!(
        "wshost_cluster_publishes_dropped_total",
        "publishes that reached this node only (Redis unreachable or not keeping up)"
    );
    describe_gauge!(
        "wshost_cluster_nodes",
        "live nodes of the cluster, this one included"
    );
    describe_gauge!(
        "wshost_cluster_redis_connected",
        "1 while this node reaches the cluster's Redis"
    );
    describe_counter!(
        "wshost_reloads_failed_total",
        "hot reloads refused (the old code kept running)"
    );
}

/// Binds `addr` and serves `/metrics` and `/healthz` on `runtime` (503 once `draining`).
/// Returns the bound address.
pub(crate) fn start(
    addr: &str,
    runtime: &tokio::runtime::Handle,
    draining: Arc<AtomicBool>,
    topics: Arc<Topics>,
) -> anyhow::Result<SocketAddr> {
    let handle = install()?;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--metrics: cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!("--metrics: {e}"),
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let (handle, draining, topics) = (handle.clone(), draining.clone(), topics.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let answer = answer(&req, &handle, &draining, &topics);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

/// The exporter's text, then the callback durations (prometheus-client's encoder).
fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(CallbackDurations));
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut text, &registry) {
        tracing::warn!("--metrics: cannot write the callback durations: {e}");
    }
    text
}

/// Copies what the topics and the cluster counted into the recorder (before a scrape).
fn export_topics(topics: &Topics) {
    metrics::gauge!("wshost_topics").set(topics.topic_count() as f64);
    metrics::counter!("wshost_publishes_total").absolute(topics.publishes());
    if let Some(cluster) = topics.cluster() {
        let stats = cluster.stats();
        let sent = stats.sent.load(Ordering::Relaxed);
        metrics::counter!("wshost_cluster_publishes_sent_total").absolute(sent);
        let received = stats.received.load(Ordering::Relaxed);
        metrics::counter!("wshost_cluster_publishes_received_total").absolute(received);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        metrics::counter!("wshost_cluster_publishes_dropped_total").absolute(dropped);
        metrics::gauge!("wshost_cluster_nodes").set(cluster.nodes() as f64 + 1.0);
        let connected = if cluster.connected() { 1.0 } else { 0.0 };
        metrics::gauge!("wshost_cluster_redis_connected").set(connected);
    }
}

fn answer(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    draining: &AtomicBool,
    topics: &Topics,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            if let Some(m) = get() {
                m.export();
            }
            export_topics(topics);
            (StatusCode::OK, "text/plain; version=0.0.4", render(handle))
        }
        "/healthz" if draining.load(Ordering::Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}
