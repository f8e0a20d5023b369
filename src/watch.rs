//! Watches script files for hot reload and tells the worker which ones changed.
//!
//! Directories are watched rather than files, so editors that save by writing a temporary file
//! and renaming it over the original are seen every time. A change counts when a file is
//! closed after writing or renamed into place (not on every partial write); changes to the
//! same files within `debounce` of each other make one reload.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::event::Event;

/// The file watcher of one worker.
pub struct Watcher {
    notify: Mutex<RecommendedWatcher>,
    dirs: Mutex<HashSet<PathBuf>>,
    files: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Watcher {
    /// Starts watching (nothing yet); changes of watched files go to `events` as `Reload`.
    pub fn start(events: flume::Sender<Event>, debounce: Duration) -> anyhow::Result<Arc<Self>> {
        let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let watched = files.clone();
        let notify = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if !is_save(&event.kind) {
                return;
            }
            let files = watched.lock().unwrap();
            for path in event.paths {
                if files.contains(&path) {
                    let _ = tx.send(path);
                }
            }
        })?;
        std::thread::Builder::new()
            .name("wshost-watch".into())
            .spawn(move || debounce_loop(rx, events, debounce))?;
        Ok(Arc::new(Self {
            notify: Mutex::new(notify),
            dirs: Mutex::default(),
            files,
        }))
    }

    /// Watches `file` from now on (its folder, once).
    pub fn watch(&self, file: &Path) {
        let Ok(file) = file.canonicalize() else {
            return;
        };
        let Some(dir) = file.parent().map(Path::to_path_buf) else {
            return;
        };
        self.files.lock().unwrap().insert(file);
        let mut dirs = self.dirs.lock().unwrap();
        if dirs.insert(dir.clone())
            && let Err(e) = self
                .notify
                .lock()
                .unwrap()
                .watch(&dir, RecursiveMode::NonRecursive)
        {
            tracing::warn!("cannot watch {} for changes: {e}", dir.display());
        }
    }
}

/// A file was saved: closed after writing, or renamed / created in place.
fn is_save(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Create(CreateKind::File)
    )
}

fn debounce_loop(rx: mpsc::Receiver<PathBuf>, events: flume::Sender<Event>, debounce: Duration) {
    while let Ok(first) = rx.recv() {
        let mut changed = vec![first];
        while let Ok(more) = rx.recv_timeout(debounce) {
            if !changed.contains(&more) {
                changed.push(more);
            }
        }
        if events.send(Event::Reload { files: changed }).is_err() {
            return;
        }
    }
}
