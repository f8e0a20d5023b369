//! How much memory a script keeps in its objects between callbacks, and the limit on it.
//!
//! The per-callback budget (engine.rs) stops one callback that grows without end; this bounds
//! state that grows a little in each of many callbacks (`this.log.push(…)` forever). Measuring
//! every object after every callback would cost as much as the state, so the worker measures
//! when callbacks since the last measurement have allocated (net) a quarter of the limit, and
//! at most once a second while callbacks run. Over the limit, the handler holding the most is
//! let go: its connection is closed (1008) or its server stopped, which frees what it held.

use rhai::{Array, Blob, Dynamic, FnPtr, Map};

/// Bytes that `value` holds, estimated: strings, arrays, blobs and maps and what they hold,
/// and the values a closure captured. Shared values are followed; depth is capped (a value
/// shared into itself is counted a bounded number of times).
pub fn estimate(value: &Dynamic) -> usize {
    size(value, 0)
}

fn size(value: &Dynamic, depth: usize) -> usize {
    const SLOT: usize = 16;
    if depth > 32 {
        return 0;
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
                .map(|v| SLOT + size(v, depth + 1))
                .sum::<usize>();
    }
    if let Some(map) = value.read_lock::<Map>() {
        return SLOT
            + map
                .iter()
                .map(|(k, v)| 2 * SLOT + k.len() + size(v, depth + 1))
                .sum::<usize>();
    }
    if let Some(f) = value.read_lock::<FnPtr>() {
        return SLOT + f.iter_curry().map(|v| size(v, depth + 1)).sum::<usize>();
    }
    SLOT
}
