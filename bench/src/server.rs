//! Server processes under test: which command runs which server for which mode, starting one
//! (pinned or not) and waiting for its `listening on ws://…` line, and stopping it. It does not
//! send them any load.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Mode;
use crate::pinning;

/// A server implementation the bench compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain tokio-tungstenite, no scripting: `wshost-bench reference`.
    Reference,
    /// `wshost run` with a script of bench/scripts (echo: the project's scripts/echo.rhai).
    Wshost,
    /// Node's `ws`: bench/node/echo.js (echo only).
    NodeWs,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Reference => "reference",
            Self::Wshost => "wshost",
            Self::NodeWs => "node ws",
        }
    }
}

/// How to start servers.
pub struct Launcher {
    pub wshost: PathBuf,
    pub workers: usize,
    pub core: Option<usize>,
}

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    /// From spawning the process to reading its "listening on" line.
    pub startup: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Launcher {
    pub fn start(&self, kind: Kind, mode: Mode) -> anyhow::Result<Server> {
        self.start_with(kind, mode, &[])
    }

    /// As `start`, with more arguments for wshost (e.g. `--cluster URL`).
    pub fn start_with(&self, kind: Kind, mode: Mode, extra: &[&str]) -> anyhow::Result<Server> {
        let mut cmd = match kind {
            Kind::Reference => {
                let mut cmd = Command::new(std::env::current_exe()?);
                let mode = match mode {
                    Mode::Echo => "echo",
                    Mode::Chat | Mode::Topic => "chat",
                    Mode::Json => "json",
                };
                cmd.args(["reference", "--mode", mode]);
                cmd
            }
            Kind::Wshost => {
                let script = match mode {
                    Mode::Echo => bench_file("../scripts/echo.rhai"),
                    Mode::Chat => bench_file("scripts/chat.rhai"),
                    Mode::Topic => bench_file("scripts/topic.rhai"),
                    Mode::Json => bench_file("scripts/json.rhai"),
                };
                let mut cmd = Command::new(&self.wshost);
                cmd.arg("run").arg(script).args([
                    "--port",
                    "0",
                    "--no-watch",
                    "--max-connections",
                    "100000",
                    "--workers",
                    &self.workers.to_string(),
                ]);
                cmd.args(extra);
                cmd
            }
            Kind::NodeWs => {
                anyhow::ensure!(mode == Mode::Echo, "the node ws server only echoes");
                let mut cmd = Command::new("node");
                cmd.arg(bench_file("node/echo.js"));
                cmd
            }
        };
        if let Some(core) = self.core {
            pinning::pin_command(&mut cmd, core);
        }
        let started = Instant::now();
        let (child, port) = spawn_listening(&mut cmd)?;
        Ok(Server {
            child,
            port,
            startup: started.elapsed(),
        })
    }
}

/// Why the Node `ws` row cannot run here, if it cannot.
pub fn node_ws_missing() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(node, Ok(s) if s.success()) {
        return Some("no `node` on PATH".into());
    }
    let ws = bench_file("node/node_modules/ws");
    if !ws.exists() {
        return Some(format!(
            "no {} (run `npm install` in {})",
            ws.display(),
            bench_file("node").display()
        ));
    }
    None
}

/// A file of the bench crate's folder (the benchmark may run from anywhere).
pub fn bench_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The wshost binary, if it is there.
pub fn existing_wshost(path: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        path.is_file(),
        "no wshost binary at {} (build it with `cargo build --release` at the repository's root, \
         or pass --wshost PATH)",
        path.display()
    );
    Ok(path.to_path_buf())
}

/// Spawns a server process and waits for its "listening on ws://…" line on stderr.
pub fn spawn_listening(cmd: &mut Command) -> anyhow::Result<(Child, u16)> {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(at) = line.find("listening on ws://") {
            let rest = &line[at + "listening on ws://".len()..];
            let port = rest
                .split('/')
                .next()
                .and_then(|host_port| host_port.rsplit(':').next())
                .and_then(|p| p.parse().ok());
            let Some(port) = port else {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("no port in the server's line {line:?}");
            };
            // Keep draining stderr so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Ok((child, port));
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    anyhow::bail!(
        "{:?} did not start listening; it said:\n{}",
        cmd.get_program(),
        seen.join("\n")
    )
}
