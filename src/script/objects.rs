//! Objects as 4D and JavaScript have them: a class instance or a handler is one object,
//! wherever it is held (README, "Objects").
//!
//! Rhai copies a map whenever it is bound, passed or stored, so an object is not a map: it is
//! an [`Object`], a reference (an `Rc`) to its fields and its class. Copying it copies the
//! reference. Scripts read and write its fields through Rhai's indexer (`obj.name` falls back
//! to `obj["name"]` for a type without a getter); the methods of its class are found by
//! `methods.rs`.
//!
//! A field that holds an array, a map or a Blob is kept in a shared cell, so that
//! `this.log.push(x)` changes the one log in place (Rhai hands the cell out and writes it back
//! unchanged) instead of copying it out and back. Storing a value from elsewhere copies it:
//! plain data stays a value, as Rhai has it (`this.a = this.b` then `this.a.push(1)` leaves
//! `this.b` as it was).

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use rhai::{Dynamic, FnPtr, ImmutableString, Map};

/// An object: its class (None for a handler written as a `#{…}` literal) and its fields.
#[derive(Clone)]
pub struct Object(Rc<Data>);

pub struct Data {
    class: Option<ImmutableString>,
    /// The file that made it (where its `Fn("name")`s are), for an object that has no class.
    home: Option<ImmutableString>,
    fields: RefCell<Map>,
}

impl Object {
    /// A new object of `class` with `fields` (stored as [`Object::set`] stores them), made
    /// by code of file `home`.
    pub fn new(class: Option<ImmutableString>, home: Option<ImmutableString>, fields: Map) -> Self {
        Self(Rc::new(Data {
            class,
            home,
            fields: RefCell::new(stored_all(fields)),
        }))
    }

    /// The file that made it.
    pub fn home(&self) -> Option<&str> {
        self.0.home.as_deref()
    }

    /// The object `value` holds (directly or in a shared cell), if it holds one.
    pub fn of(value: &Dynamic) -> Option<Self> {
        value.read_lock::<Object>().map(|o| o.clone())
    }

    /// Its class name (`Room` for `cs.Room.new()`), None for an object written as a literal.
    pub fn class(&self) -> Option<&ImmutableString> {
        self.0.class.as_ref()
    }

    /// Field `name`, `()` when it has none.
    pub fn get(&self, name: &str) -> Dynamic {
        self.0
            .fields
            .borrow()
            .get(name)
            .cloned()
            .unwrap_or(Dynamic::UNIT)
    }

    /// Sets field `name`. The value Rhai writes back after changing a field in place (the same
    /// cell it handed out) is left as it is; any other value is stored as a copy.
    pub fn set(&self, name: &str, value: Dynamic) {
        let mut fields = self.0.fields.borrow_mut();
        if value.is_shared()
            && let Some(current) = fields.get(name)
            && same_cell(current, &value)
        {
            return;
        }
        let value = stored(value.flatten());
        match fields.get_mut(name) {
            Some(slot) => *slot = value,
            None => {
                fields.insert(name.into(), value);
            }
        }
    }

    /// Removes field `name`; returns its value (`()` when it had none).
    pub fn remove(&self, name: &str) -> Dynamic {
        self.0
            .fields
            .borrow_mut()
            .remove(name)
            .map_or(Dynamic::UNIT, Dynamic::flatten)
    }

    /// The function field `name` holds, if it holds one.
    pub fn function(&self, name: &str) -> Option<FnPtr> {
        let fields = self.0.fields.borrow();
        let value = fields.get(name)?;
        value.read_lock::<FnPtr>().map(|f| f.clone())
    }

    /// True if field `name` holds a function.
    pub fn has_function(&self, name: &str) -> bool {
        self.0
            .fields
            .borrow()
            .get(name)
            .is_some_and(Dynamic::is_fnptr)
    }

    /// Runs `f` on the fields (read-only: `f` must not reach this object's fields again).
    pub fn with_fields<T>(&self, f: impl FnOnce(&Map) -> T) -> T {
        f(&self.0.fields.borrow())
    }

    /// The fields, copied (their cells shared): for iteration while scripts may run.
    pub fn fields(&self) -> Map {
        self.0.fields.borrow().clone()
    }

    /// Replaces every field (hot reload of a handler written as a literal).
    pub fn replace_fields(&self, fields: Map) {
        let old = std::mem::replace(&mut *self.0.fields.borrow_mut(), stored_all(fields));
        // Dropped after the borrow ends: a dropped value may reach this object.
        drop(old);
    }

    /// Empties the object (the collector breaking a cycle nobody reaches).
    pub fn clear(&self) {
        let old = std::mem::take(&mut *self.0.fields.borrow_mut());
        drop(old);
    }

    /// The same object (4D's and JavaScript's `===` on objects).
    pub fn ptr_eq(&self, other: &Object) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// A number naming this object while it lives (cycle detection, the collector).
    pub fn address(&self) -> usize {
        Rc::as_ptr(&self.0) as usize
    }

    pub fn downgrade(&self) -> Weak<Data> {
        Rc::downgrade(&self.0)
    }

    pub fn upgrade(weak: &Weak<Data>) -> Option<Self> {
        weak.upgrade().map(Self)
    }

    /// How many holders it has (the collector).
    pub fn holders(&self) -> usize {
        Rc::strong_count(&self.0)
    }

    /// The object as a script value.
    pub fn into_dynamic(self) -> Dynamic {
        Dynamic::from(self)
    }
}

/// How a field keeps `value`: containers in a cell of their own (changed in place), the rest
/// as they are.
fn stored(value: Dynamic) -> Dynamic {
    if value.is_shared() {
        return stored(value.flatten());
    }
    if value.is_array() || value.is_map() || value.is_blob() {
        value.into_shared()
    } else {
        value
    }
}

fn stored_all(fields: Map) -> Map {
    fields.into_iter().map(|(k, v)| (k, stored(v))).collect()
}

/// True if `a` and `b` are the same shared cell (its contents' address names it).
fn same_cell(a: &Dynamic, b: &Dynamic) -> bool {
    if !a.is_shared() {
        return false;
    }
    match (a.read_lock::<Dynamic>(), b.read_lock::<Dynamic>()) {
        (Some(x), Some(y)) => std::ptr::eq(&*x, &*y),
        // One is being written now: only the cell Rhai handed out can be.
        _ => true,
    }
}

/// A handler given as a map (`WebSocketServer.new(h)` with `h` built field by field) as an
/// object. A closure of the map that captured the variable the map came from (`let h = #{};
/// h.onMessage = |ws, e| h.count += 1`, the JavaScript habit) sees the object from now on: the
/// captured variable is made to hold it, so `h` in the closure and the handler are one object.
pub fn from_map(table: &Table, home: Option<&str>, map: Map) -> Object {
    from_map_and(table, home, map, None)
}

/// [`from_map`], where the closures that captured the map's variable may also be in
/// `function`, about to be stored in the object.
fn from_map_and(table: &Table, home: Option<&str>, map: Map, function: Option<&Dynamic>) -> Object {
    let keys: Vec<ImmutableString> = map.keys().map(|k| k.as_str().into()).collect();
    let functions: Vec<Dynamic> = map
        .values()
        .chain(function)
        .filter(|v| v.is_fnptr())
        .cloned()
        .collect();
    let object = table.make(None, home, map);
    adopt_captured(&object, &keys, &functions);
    object
}

/// A closure among `functions` that captured the variable the map with `keys` came from
/// sees `object` in it from now on.
fn adopt_captured(object: &Object, keys: &[ImmutableString], functions: &[Dynamic]) {
    let captured = functions
        .iter()
        .filter_map(|v| v.read_lock::<FnPtr>().map(|f| f.clone()))
        .flat_map(|f| f.iter_curry().cloned().collect::<Vec<_>>())
        .filter(|v| v.is_shared() && !in_use(v));
    for mut cell in captured {
        let same = cell.read_lock::<Map>().is_some_and(|m| {
            m.len() == keys.len() && keys.iter().all(|k| m.contains_key(k.as_str()))
        });
        if same && let Some(mut inner) = cell.write_lock::<Dynamic>() {
            *inner = object.clone().into_dynamic();
        }
    }
}

/// `value` as an object: an object is itself, a map becomes one ([`from_map`]); anything
/// else is not an object.
pub fn to_object(table: &Table, home: Option<&str>, value: Dynamic) -> Option<Object> {
    if let Some(o) = Object::of(&value) {
        return Some(o);
    }
    let map = value.flatten().try_cast::<Map>()?;
    Some(from_map(table, home, map))
}

/// The object whose method or callback runs now: what a closure made there sees as `this`
/// when it runs later (`setTimeout(|| this.tick(), 10)`), as JavaScript's arrow functions do.
/// (An object is kept as itself: a copy of a script value of a native type costs two
/// allocations, on every callback.)
#[derive(Default)]
pub struct ThisStack(RefCell<Vec<This>>);

enum This {
    Object(Object),
    Value(Dynamic),
}

impl ThisStack {
    /// `this` of the code running now, if it has one.
    pub fn current(&self) -> Option<Dynamic> {
        self.0.borrow().last().map(|t| match t {
            This::Object(o) => o.clone().into_dynamic(),
            This::Value(v) => v.clone(),
        })
    }

    /// Runs `f` with `this` as the current object.
    pub fn with<T>(&self, this: &Dynamic, f: impl FnOnce() -> T) -> T {
        self.push(this.clone());
        let out = f();
        self.pop();
        out
    }

    /// `this` is the current object until the matching [`pop`](Self::pop).
    pub fn push(&self, this: Dynamic) {
        let this = match Object::of(&this) {
            Some(o) => This::Object(o),
            None => This::Value(this),
        };
        self.0.borrow_mut().push(this);
    }

    /// `this` is `object` until the matching [`pop`](Self::pop).
    pub fn push_object(&self, object: Object) {
        self.0.borrow_mut().push(This::Object(object));
    }

    pub fn pop(&self) {
        self.0.borrow_mut().pop();
    }

    /// The objects on the stack (roots for the collector: none between callbacks).
    pub fn each(&self, f: &mut dyn FnMut(&Dynamic)) {
        for t in self.0.borrow().iter() {
            match t {
                This::Object(o) => f(&o.clone().into_dynamic()),
                This::Value(v) => f(v),
            }
        }
    }
}

/// Every object a worker's scripts made, for the collector (collect.rs).
#[derive(Default)]
pub struct Table {
    objects: RefCell<Vec<Weak<Data>>>,
    /// Objects at the last sweep: the next one waits until there are twice as many.
    swept_at: std::cell::Cell<usize>,
    /// Entries after the list last forgot the objects gone: it does again at twice as many (a
    /// `Weak` keeps its object's memory block, so a loop making objects that die at once
    /// must not keep them all).
    compacted_at: std::cell::Cell<usize>,
}

impl Table {
    /// Notes a new object.
    pub fn track(&self, object: &Object) {
        let mut objects = self.objects.borrow_mut();
        objects.push(object.downgrade());
        if objects.len() >= 64.max(2 * self.compacted_at.get()) {
            objects.retain(|w| w.strong_count() > 0);
            self.compacted_at.set(objects.len());
        }
    }

    /// A new object, noted.
    pub fn make(&self, class: Option<ImmutableString>, home: Option<&str>, fields: Map) -> Object {
        let object = Object::new(class, home.map(ImmutableString::from), fields);
        self.track(&object);
        object
    }

    /// Objects noted so far (some may be gone).
    pub fn len(&self) -> usize {
        self.objects.borrow().len()
    }

    /// True when as many objects were made since the last sweep as were left by it (and at
    /// least `min` in all).
    pub fn sweep_due(&self, min: usize) -> bool {
        self.len() >= min.max(2 * self.swept_at.get())
    }

    /// The objects alive now; forgets those gone.
    pub fn live(&self) -> Vec<Object> {
        let mut objects = self.objects.borrow_mut();
        let live: Vec<Object> = objects.iter().filter_map(Object::upgrade).collect();
        objects.retain(|w| w.strong_count() > 0);
        self.compacted_at.set(objects.len());
        live
    }

    /// A sweep left `remaining` objects.
    pub fn swept(&self, remaining: usize) {
        self.swept_at.set(remaining);
    }
}

type Res<T> = Result<T, Box<rhai::EvalAltResult>>;

/// Registers the `Object` type: fields through the indexer (`o.name`, `o["name"]`), `==` as
/// "the same object", printing, and `object(…)`. The map functions an object has too
/// ([`builtin`]) are not registered: a native function would answer before a class method of
/// the same name (methods.rs asks for them after the class).
pub fn register(engine: &mut rhai::Engine, table: &Rc<Table>) {
    engine.register_type_with_name::<Object>("object");
    engine.register_indexer_get(|o: &mut Object, name: &str| -> Res<Dynamic> {
        let value = o.get(name);
        // A field Rhai holds now, through a call made through it (`hall.rooms.a.count()`,
        // and `count` reached `hall.rooms` again): Rhai cannot read it until that call ends.
        if value.is_shared() && value.is_locked() {
            return Err(rhai::EvalAltResult::ErrorDataRace(
                format!("field {name}"),
                rhai::Position::NONE,
            )
            .into());
        }
        Ok(value)
    });
    engine.register_indexer_set(|o: &mut Object, name: &str, value: Dynamic| o.set(name, value));
    engine.register_fn("==", |a: &mut Object, b: Object| a.ptr_eq(&b));
    engine.register_fn("!=", |a: &mut Object, b: Object| !a.ptr_eq(&b));
    engine.register_fn("==", |_: &mut Object, _: ()| false);
    engine.register_fn("!=", |_: &mut Object, _: ()| true);
    // `object(#{…})`: a map as an object (a `#{…}` literal with a function in it is one
    // already, lint.rs's rewrite).
    let t = table.clone();
    engine.register_fn(
        "object",
        move |ncc: rhai::NativeCallContext, value: Dynamic| -> Res<Dynamic> {
            match Object::of(&value) {
                Some(o) => Ok(o.into_dynamic()),
                None => match value.flatten().try_cast::<Map>() {
                    Some(map) => Ok(from_map(&t, ncc.call_source(), map).into_dynamic()),
                    None => Err(super::error::api_error(
                        "object(…): give a map (#{…}) or an object",
                    )),
                },
            }
        },
    );
    let t = table.clone();
    engine.register_fn("object", move |ncc: rhai::NativeCallContext| {
        t.make(None, ncc.call_source(), Map::new()).into_dynamic()
    });
    // `h.name = <function>` (rewrite.rs): the map `h` holds becomes an object first.
    let t = table.clone();
    engine.register_fn(
        "__wshost_set_function",
        move |ncc: rhai::NativeCallContext,
              target: &mut Dynamic,
              name: ImmutableString,
              value: Dynamic|
              -> Res<()> {
            if let Some(o) = Object::of(target) {
                o.set(&name, value);
                return Ok(());
            }
            let Some(map) = target.read_lock::<Map>().map(|m| m.clone()) else {
                return Err(super::error::api_error(format!(
                    "cannot set field {name} of a value of type {}",
                    super::convert::script_type_name(target)
                )));
            };
            // (Rhai passes a variable that a closure captured as a copy: the closure being
            // stored is what reaches it.)
            let object = from_map_and(&t, ncc.call_source(), map, Some(&value));
            object.set(&name, value);
            let object = object.into_dynamic();
            if target.is_shared() {
                if let Some(mut inner) = target.write_lock::<Dynamic>() {
                    *inner = object;
                }
            } else {
                *target = object;
            }
            Ok(())
        },
    );
    // JSON of an object's data, as `send(o)` sends it (registered: an error names the line).
    engine.register_fn("to_json", |o: &mut Object| -> Res<String> {
        let data = to_data(&o.clone().into_dynamic(), 0, &mut Vec::new())
            .map_err(|e| super::error::api_error(format!("to_json: {e}")))?;
        serde_json::to_string(&data).map_err(|e| super::error::api_error(format!("to_json: {e}")))
    });
}

/// The map functions objects have, for a method call `name(args)` on `o` that its class does
/// not answer: `keys()`, `values()`, `len()`, `is_empty()`, `contains(name)` (and so `name in
/// o`), `remove(name)`, `to_json()`, `class_name()` (4D's `OB Class(o).name`).
pub fn builtin(o: &Object, name: &str, args: &[Dynamic]) -> Option<Res<Dynamic>> {
    let text = |i: usize| {
        args.get(i)
            .and_then(|a| a.read_lock::<ImmutableString>().map(|s| s.clone()))
    };
    Some(Ok(match (name, args.len()) {
        ("keys", 0) => o
            .with_fields(|m| {
                m.keys()
                    .map(|k| Dynamic::from(ImmutableString::from(k.as_str())))
                    .collect::<rhai::Array>()
            })
            .into(),
        ("values", 0) => o
            .with_fields(|m| {
                m.values()
                    .map(Dynamic::flatten_clone)
                    .collect::<rhai::Array>()
            })
            .into(),
        ("len", 0) => Dynamic::from(o.with_fields(|m| m.len() as rhai::INT)),
        ("is_empty", 0) => Dynamic::from(o.with_fields(Map::is_empty)),
        ("contains", 1) => {
            let key = text(0)?;
            Dynamic::from(o.with_fields(|m| m.contains_key(key.as_str())))
        }
        ("remove", 1) => o.remove(text(0)?.as_str()),
        ("class_name", 0) => o.class().map_or(Dynamic::UNIT, |c| c.clone().into()),
        _ => return None,
    }))
}

/// True if `value` is a shared cell that Rhai is writing to now (a field a method call goes
/// through): nothing may look inside it until the call ends (Rhai panics on a look).
pub fn in_use(value: &Dynamic) -> bool {
    value.is_shared() && value.is_locked()
}

/// True if `value` is or holds an object (to `depth` levels), or a cell in use.
pub fn holds_object(value: &Dynamic, depth: usize) -> bool {
    // (Discriminant checks first: on the path of every `send`.)
    if value.is_shared() {
        if in_use(value) {
            return true;
        }
        let inner = value.read_lock::<Dynamic>().expect("not in use");
        return holds_object(&inner, depth);
    }
    if value.is_map() {
        let map = value.read_lock::<Map>().expect("a map");
        return depth > 0 && map.values().any(|v| holds_object(v, depth - 1));
    }
    if value.is_array() {
        let array = value.read_lock::<rhai::Array>().expect("an array");
        return depth > 0 && array.iter().any(|v| holds_object(v, depth - 1));
    }
    value.is::<Object>()
}

/// `value` as plain data, for JSON: an object becomes a map of its fields that are not
/// functions. An object that holds itself cannot be data: the error names its class.
pub fn to_data(value: &Dynamic, depth: usize, open: &mut Vec<usize>) -> Result<Dynamic, String> {
    if depth > super::bounds::MAX_DEPTH {
        return Err(format!(
            "data nested deeper than {} levels",
            super::bounds::MAX_DEPTH
        ));
    }
    if in_use(value) {
        return Err("a field is in use by a method called through it".into());
    }
    if let Some(object) = Object::of(value) {
        if open.contains(&object.address()) {
            let name = object.class().map_or("an object", |c| c.as_str());
            return Err(format!("{name} holds itself (a cycle)"));
        }
        open.push(object.address());
        let mut map = Map::new();
        for (k, v) in object.fields() {
            if !v.is_fnptr() {
                map.insert(k, to_data(&v, depth + 1, open)?);
            }
        }
        open.pop();
        return Ok(map.into());
    }
    if let Some(array) = value.read_lock::<rhai::Array>() {
        return array
            .iter()
            .map(|v| to_data(v, depth + 1, open))
            .collect::<Result<rhai::Array, _>>()
            .map(Dynamic::from_array);
    }
    if let Some(map) = value.read_lock::<Map>() {
        return map
            .iter()
            .map(|(k, v)| Ok((k.clone(), to_data(v, depth + 1, open)?)))
            .collect::<Result<Map, String>>()
            .map(Dynamic::from_map);
    }
    Ok(value.flatten_clone())
}
