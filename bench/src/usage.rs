//! What a process has used, read from /proc: CPU time (utime + stime of all its threads) and
//! resident memory. Reading only; it never changes a process.

use std::time::{Duration, Instant};

/// CPU time the process `pid` (or `"self"`) has used so far, all threads together.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
    let after_name = &stat[stat.rfind(')').unwrap_or(0) + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `fields[0]` is field 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i - 3)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat has no field {i}"))?
            .parse()?)
    };
    let ticks = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// Resident memory of the process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Clock ticks a core has spent since boot: (busy, all), from /proc/stat. Busy counts what
/// the hypervisor took (steal) too: it is time the core was not there for us.
fn core_ticks(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|l| l.strip_prefix(&format!("cpu{cpu} ")).is_some())?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let all: u64 = ticks.iter().sum();
    let idle = ticks.get(3).unwrap_or(&0) + ticks.get(4).unwrap_or(&0);
    Some((all - idle, all))
}

/// CPU time of the server and of this process over a window of wall-clock time.
pub struct Window {
    server_pid: String,
    /// The core the server is pinned to, with its ticks at the start.
    server_core: Option<(usize, (u64, u64))>,
    started: Instant,
    server: Duration,
    load: Duration,
    load_idle: Option<Duration>,
}

/// What a window measured.
pub struct Used {
    pub elapsed: Duration,
    pub server: Duration,
    /// CPU time of this process (the load generator).
    pub load: Duration,
    /// How long the load generator had nothing to do, if it busy-polled (then `load` is the
    /// whole window and says nothing about how loaded it was).
    pub load_idle: Option<Duration>,
    /// How busy the server's core was, all processes, the kernel and steal together, in %.
    pub server_core_busy: Option<f64>,
}

impl Window {
    pub fn open(server_pid: u32, server_core: Option<usize>) -> anyhow::Result<Window> {
        let server_pid = server_pid.to_string();
        Ok(Window {
            server_core: server_core.and_then(|c| Some((c, core_ticks(c)?))),
            server: cpu_time(&server_pid)?,
            load: cpu_time("self")?,
            started: Instant::now(),
            server_pid,
            load_idle: None,
        })
    }

    /// Time within the window that the busy-polling load generator found nothing to do.
    pub fn load_idle(&mut self, idle: Option<Duration>) {
        self.load_idle = idle;
    }

    pub fn close(self) -> anyhow::Result<Used> {
        let elapsed = self.started.elapsed();
        Ok(Used {
            server: cpu_time(&self.server_pid)?.saturating_sub(self.server),
            load: cpu_time("self")?.saturating_sub(self.load),
            load_idle: self.load_idle,
            server_core_busy: self.server_core.and_then(|(core, (busy0, all0))| {
                let (busy, all) = core_ticks(core)?;
                Some(100.0 * (busy - busy0) as f64 / (all - all0).max(1) as f64)
            }),
            elapsed,
        })
    }
}

impl Used {
    /// `cpu` in % of one core over the window.
    pub fn core_percent(&self, cpu: Duration) -> f64 {
        100.0 * cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// How busy the load generator was, in % of its core: its CPU time, or when it busy-polled,
    /// the window less the time it found nothing to do.
    pub fn load_busy_percent(&self) -> f64 {
        match self.load_idle {
            Some(idle) => self.core_percent(self.elapsed.saturating_sub(idle)),
            None => self.core_percent(self.load),
        }
    }
}
