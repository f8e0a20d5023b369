//! How much memory a script keeps in its objects between callbacks, and the limit on it.
//!
//! The per-callback budget (engine.rs) stops one callback that grows without end; this bounds
//! state that grows a little in each of many callbacks (`this.log.push(…)` forever). Measuring
//! every object after every callback would cost as much as the state, so the worker measures
//! when callbacks since the last measurement have allocated (net) a quarter of the limit, and
//! at most once a second while callbacks run. Over the limit, the handler holding the most is
//! let go: its connection is closed (1008) or its server stopped, which frees what it held.

use rhai::{Array, Blob, Dynamic, FnPtr, Map};
use rustc_hash::FxHashSet;
use std::cell::Cell;
use std::time::Instant;

use super::dispatch::{Dispatch, error_event};
use super::objects::Object;
use crate::event::{ConnId, ErrorKind, ServerId};

/// Bytes that `value` holds, estimated: strings, arrays, blobs and maps and what they hold,
/// and the values a closure captured, objects and their fields. Objects and shared values are
/// followed once each: several may hold one (objects.rs), and objects that hold each other (a
/// room and its lobby) would otherwise be walked around the cycle; depth is capped too.
pub fn estimate(value: &Dynamic) -> usize {
    size(value, 0, &mut FxHashSet::default())
}

/// What `values` hold together: a shared value that several hold (an object whose copies are
/// in many handlers) counts once.
fn estimate_together<'a>(values: impl Iterator<Item = &'a Dynamic>) -> usize {
    let mut seen = FxHashSet::default();
    values.map(|v| size(v, 0, &mut seen)).sum()
}

fn size(value: &Dynamic, depth: usize, seen: &mut FxHashSet<usize>) -> usize {
    const SLOT: usize = 16;
    if depth > 32 {
        return 0;
    }
    if super::objects::in_use(value) {
        return SLOT;
    }
    if value.is_shared() {
        // A shared value is one cell: its contents' address names it.
        let at = value
            .read_lock::<Map>()
            .map(|m| &*m as *const Map as usize)
            .or_else(|| {
                value
                    .read_lock::<Array>()
                    .map(|a| &*a as *const Array as usize)
            });
        if let Some(at) = at
            && !seen.insert(at)
        {
            return SLOT;
        }
    }
    if let Some(object) = Object::of(value) {
        if !seen.insert(object.address()) {
            return SLOT;
        }
        return SLOT
            + object.with_fields(|m| {
                m.iter()
                    .map(|(k, v)| 2 * SLOT + k.len() + size(v, depth + 1, seen))
                    .sum::<usize>()
            });
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        return SLOT + s.len();
    }
    if let Some(blob) = value.read_lock::<Blob>() {
        return SLOT + blob.len();
    }
    if let Some(array) = value.read_lock::<Array>() {
        return SLOT
            + array
                .iter()
                .map(|v| SLOT + size(v, depth + 1, seen))
                .sum::<usize>();
    }
    if let Some(map) = value.read_lock::<Map>() {
        return SLOT
            + map
                .iter()
                .map(|(k, v)| 2 * SLOT + k.len() + size(v, depth + 1, seen))
                .sum::<usize>();
    }
    if let Some(f) = value.read_lock::<FnPtr>() {
        return SLOT
            + f.iter_curry()
                .map(|v| size(v, depth + 1, seen))
                .sum::<usize>();
    }
    SLOT
}

/// When to measure: callbacks have kept a quarter of the limit since the last measurement,
/// or a second has passed with callbacks run (allocation counts drift as buffers change
/// threads, so time is a trigger too; at most once a second the cost is amortized).
pub struct MemoryWatch {
    /// Bytes callbacks allocated and kept since the last measurement.
    growth: Cell<i64>,
    /// Callbacks run since then, and when that was.
    callbacks: Cell<u64>,
    measured_at: Cell<Instant>,
}

impl Default for MemoryWatch {
    fn default() -> Self {
        Self {
            growth: Cell::new(0),
            callbacks: Cell::new(0),
            measured_at: Cell::new(Instant::now()),
        }
    }
}

impl MemoryWatch {
    /// A callback ended having kept `bytes`.
    pub fn callback_kept(&self, bytes: i64) {
        self.growth.set(self.growth.get() + bytes);
        self.callbacks.set(self.callbacks.get() + 1);
    }

    /// True (and the count starts again) when the state is to be measured against `limit`.
    fn due(&self, limit: i64) -> bool {
        let grew = self.growth.get() >= (limit / 4).clamp(1 << 20, 64 << 20);
        // The clock is read every 64 callbacks (and when few run), not on each.
        let callbacks = self.callbacks.get();
        let due = callbacks > 0
            && (callbacks < 64 || callbacks.is_multiple_of(64))
            && self.measured_at.get().elapsed() >= std::time::Duration::from_secs(1);
        if !grew && !due {
            return false;
        }
        self.growth.set(0);
        self.callbacks.set(0);
        self.measured_at.set(Instant::now());
        true
    }
}

impl Dispatch<'_> {
    /// Measures what the scripts' objects hold once callbacks have kept a quarter of the
    /// limit since the last time; over the limit, lets go of the biggest holder.
    pub(super) fn check_state_memory(&self) {
        let limit = self.ctx.budget.max_state as i64;
        // Allocation counts drift (buffers change threads), so time is a trigger too: at most
        // once a second while callbacks run, the cost of a measurement is amortized.
        if !self.ctx.memory.due(limit) {
            return;
        }
        let (total, biggest) = {
            let reg = self.ctx.registry.borrow();
            let servers = reg
                .servers
                .iter()
                .map(|(id, s)| (super::memory::estimate(&s.handler), Holder::Server(*id)));
            let conns = reg
                .conns
                .iter()
                .map(|(id, c)| (super::memory::estimate(&c.handler), Holder::Conn(*id)));
            let all: Vec<(usize, Holder)> = servers.chain(conns).collect();
            let handlers = reg.servers.values().map(|s| &s.handler);
            let total = estimate_together(handlers.chain(reg.conns.values().map(|c| &c.handler)));
            (total, all.into_iter().max_by_key(|(n, _)| *n))
        };
        tracing::debug!("script state: about {} KiB", total >> 10);
        if total as i64 <= limit {
            return;
        }
        let Some((held, holder)) = biggest else {
            return;
        };
        let message = format!(
            "the script's objects hold about {} MiB, over the limit of {} MiB: the biggest \
             holder ({} MiB) is let go",
            total >> 20,
            limit >> 20,
            held >> 20
        );
        tracing::error!("{message}");
        let event = || error_event(ErrorKind::Memory, &message, None);
        match holder {
            Holder::Conn(id) => {
                self.call_conn(id, "onError", event());
                let handle = self
                    .ctx
                    .registry
                    .borrow()
                    .conns
                    .get(&id)
                    .map(|c| c.handle.clone());
                if let Some(h) = handle {
                    h.close(1008, "script state over the memory limit".into());
                }
            }
            Holder::Server(id) => {
                self.call_server(id, "onError", event());
                self.ctx.terminate_server(id);
            }
        }
    }
}

/// What holds script memory: a server handler or a connection handler.
enum Holder {
    Server(ServerId),
    Conn(ConnId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_that_hold_each_other_are_measured_once() {
        // room.lobby.rooms holds room: a cycle through shared cells.
        let mut rooms = Dynamic::from_map(Map::new()).into_shared();
        let mut lobby = Map::new();
        lobby.insert("rooms".into(), rooms.clone());
        let mut room = Map::new();
        room.insert("lobby".into(), Dynamic::from_map(lobby));
        let room = Dynamic::from_map(room);
        for name in ["a", "b", "c"] {
            rooms
                .write_lock::<Map>()
                .unwrap()
                .insert(name.into(), room.clone());
        }
        let bytes = estimate(&room);
        assert!(bytes < 10_000, "{bytes}");
    }
}
