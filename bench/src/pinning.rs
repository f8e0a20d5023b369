//! Which core the server runs on and which the load generator runs on, and how each is pinned
//! there (sched_setaffinity). It decides nothing else: it does not start processes.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// The cores of one benchmark: `None` when unpinned.
#[derive(Clone, Copy, Debug)]
pub struct Cores {
    pub server: Option<usize>,
    pub load: Option<usize>,
}

impl Cores {
    /// Picks two of the cores this process may run on: the first for the load generator, the
    /// second for the servers. With one core, says pinning is impossible and goes on unpinned.
    pub fn choose(pin: bool) -> Cores {
        let unpinned = Cores {
            server: None,
            load: None,
        };
        if !pin {
            return unpinned;
        }
        let allowed = allowed_cores();
        match allowed[..] {
            [load, server, ..] => Cores {
                server: Some(server),
                load: Some(load),
            },
            _ => {
                println!(
                    "pinning is impossible: this process may run on {} core(s) only ({allowed:?}); \
                     running unpinned",
                    allowed.len()
                );
                unpinned
            }
        }
    }

    pub fn describe(&self) -> String {
        match (self.server, self.load) {
            (Some(s), Some(l)) => {
                format!("each server pinned to CPU {s}, the load generator (one thread) to CPU {l}")
            }
            _ => "unpinned: servers and the load generator (one thread) share every core".into(),
        }
    }
}

/// The cores the calling thread may run on.
fn allowed_cores() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_this_thread(cpu: usize) -> std::io::Result<()> {
    set_affinity(cpu)
}

/// Makes the command's process (all its threads, since they inherit it) run on `cpu` only.
pub fn pin_command(cmd: &mut Command, cpu: usize) {
    // SAFETY: the closure only makes one system call, which is async-signal-safe, between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || set_affinity(cpu));
    }
}

fn set_affinity(cpu: usize) -> std::io::Result<()> {
    // SAFETY: the set is a local value, `cpu` is below CPU_SETSIZE (it came from allowed_cores).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
