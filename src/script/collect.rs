//! Freeing objects that hold each other once nothing live reaches them.
//!
//! An object is an `Rc` (objects.rs): one that nobody holds is freed at once. Objects that hold
//! each other (a room and its lobby, a parent and its child, a handler whose closure captured
//! the handler) keep each other alive after the connection, server or timer that used them is
//! gone. So from time to time, when no script runs, the worker looks:
//!
//! 1. Everything reachable from what the worker holds for the scripts (the handlers of its
//!    servers and connections, its timers' callbacks and their `this`) is live.
//! 2. Of the other objects, one held by something the walk does not see (a value kept by an
//!    embedding program's function, say) is live too, with all it reaches: its holder count is
//!    more than the references the other unreached objects have to it.
//! 3. The rest only hold each other: each is emptied, which breaks the cycles, and `Rc` frees
//!    them.
//!
//! A look costs a walk of what the scripts keep, so it comes when the objects made since the
//! last one are as many as those alive then (and at least [`MIN_OBJECTS`]): its cost is
//! spread over the objects made.

use rhai::{Array, Dynamic, FnPtr, Map};
use rustc_hash::{FxHashMap, FxHashSet};

use super::client::ClientObj;
use super::objects::Object;
use super::state::Ctx;

/// Objects made before the first look.
pub const MIN_OBJECTS: usize = 64;

/// How deep a walk goes; a look that meets data deeper than this frees nothing.
const MAX_DEPTH: usize = 1024;

/// Looks for objects nobody reaches when enough were made since the last look and no script
/// runs. Returns how many were freed.
pub fn collect_if_due(ctx: &Ctx) -> usize {
    if !ctx.objects.sweep_due(MIN_OBJECTS) || !ctx.deadline.idle() {
        return 0;
    }
    collect(ctx)
}

/// Frees the objects that only objects nobody reaches hold. Returns how many.
pub fn collect(ctx: &Ctx) -> usize {
    let live = ctx.objects.live();
    let mut walk = Walk::default();
    {
        let reg = ctx.registry.borrow();
        for s in reg.servers.values() {
            walk.value(&s.handler);
        }
        for c in reg.conns.values() {
            walk.value(&c.handler);
        }
        reg.timers.each_value(&mut |v| walk.value(v));
    }
    ctx.this.each(&mut |v| walk.value(v));
    walk.drain();
    if walk.trace.too_deep {
        ctx.objects.swept(live.len());
        return 0;
    }
    // Objects not reached, and what each is held by among them.
    let unreached: Vec<&Object> = live
        .iter()
        .filter(|o| !walk.objects.contains(&o.address()))
        .collect();
    let mut count = Count::default();
    for o in &unreached {
        o.with_fields(|m| {
            for v in m.values() {
                count.value(v);
            }
        });
    }
    if count.trace.too_deep {
        ctx.objects.swept(live.len());
        return 0;
    }
    // Held from elsewhere: live, with what it reaches. (`live` holds one reference each.)
    for o in &unreached {
        let inside = count.held.get(&o.address()).copied().unwrap_or(0);
        if o.holders() > 1 + inside && walk.objects.insert(o.address()) {
            walk.pending.push((*o).clone());
        }
    }
    walk.drain();
    if walk.trace.too_deep {
        ctx.objects.swept(live.len());
        return 0;
    }
    let mut freed = 0;
    for o in unreached {
        if !walk.objects.contains(&o.address()) {
            o.clear();
            freed += 1;
        }
    }
    ctx.objects.swept(live.len() - freed);
    if freed > 0 {
        tracing::debug!("freed {freed} object(s) that only held each other");
    }
    freed
}

/// What both walks share: the objects a value holds, found through arrays, maps, closures'
/// captured values, clients' handlers and shared cells (each cell once), not going into
/// objects, to a bounded depth.
#[derive(Default)]
struct Trace {
    /// Shared cells seen, by their contents' address.
    cells: FxHashSet<usize>,
    /// Data deeper than [`MAX_DEPTH`], or a cell being written to: not all could be seen.
    too_deep: bool,
}

impl Trace {
    fn objects(&mut self, v: &Dynamic, depth: usize, object: &mut dyn FnMut(&Object)) {
        if depth > MAX_DEPTH {
            self.too_deep = true;
            return;
        }
        if v.is_shared() {
            let Some(inner) = v.read_lock::<Dynamic>() else {
                // Written to now: what it holds cannot be seen, so nothing is freed.
                self.too_deep = true;
                return;
            };
            // A cell holds its contents once, however many hold the cell.
            if self.cells.insert(&*inner as *const Dynamic as usize) {
                self.objects(&inner, depth + 1, object);
            }
            return;
        }
        if let Some(o) = v.read_lock::<Object>() {
            object(&o);
            return;
        }
        children(v, &mut |c| self.objects(c, depth + 1, object));
    }
}

/// Marks the objects reachable from the values it is given.
#[derive(Default)]
struct Walk {
    trace: Trace,
    objects: FxHashSet<usize>,
    /// Objects reached whose fields are still to walk.
    pending: Vec<Object>,
}

impl Walk {
    fn drain(&mut self) {
        while let Some(o) = self.pending.pop() {
            let fields = o.fields();
            for v in fields.values() {
                self.value(v);
            }
        }
    }

    fn value(&mut self, v: &Dynamic) {
        let (objects, pending) = (&mut self.objects, &mut self.pending);
        self.trace.objects(v, 0, &mut |o| {
            if objects.insert(o.address()) {
                pending.push(o.clone());
            }
        });
    }
}

/// Counts the references to objects in the values it is given, not going into objects.
#[derive(Default)]
struct Count {
    trace: Trace,
    held: FxHashMap<usize, usize>,
}

impl Count {
    fn value(&mut self, v: &Dynamic) {
        let held = &mut self.held;
        self.trace
            .objects(v, 0, &mut |o| *held.entry(o.address()).or_default() += 1);
    }
}

/// The values `v` holds: an array's items, a map's values, what a closure captured.
fn children(v: &Dynamic, f: &mut dyn FnMut(&Dynamic)) {
    if let Some(array) = v.read_lock::<Array>() {
        array.iter().for_each(f);
    } else if let Some(map) = v.read_lock::<Map>() {
        map.values().for_each(f);
    } else if let Some(fp) = v.read_lock::<FnPtr>() {
        fp.iter_curry().for_each(f);
    } else if let Some(client) = v.read_lock::<ClientObj>() {
        // A client keeps its handler (an instance that is its own client handler holds the
        // client that holds it).
        f(&client.handler);
    }
}
