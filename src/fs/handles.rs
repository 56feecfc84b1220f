//! Open file and directory handles: what a `fh` number means between open and release.
//! A directory handle keeps the listing taken at the first readdir so that offsets stay
//! stable while the directory changes underneath (POSIX allows entries added or removed
//! after opendir to be missed, never to be listed twice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use fuser::FileType;
use parking_lot::Mutex;

use super::control::Node;
use super::invoke::CallFile;
use crate::store::keys::Ino;

#[derive(Debug, Clone)]
pub struct Listed {
    pub ino: Ino,
    pub kind: FileType,
    pub name: Vec<u8>,
}

pub enum Handle {
    /// A regular file in the store, opened for writing (or created) or not: a writing
    /// handle's closes record its `ObjectCreated:Put`, its release confirms it.
    File { ino: Ino, writing: bool },
    /// A directory, with its listing once read.
    Dir {
        ino: Ino,
        listing: Mutex<Option<Arc<Vec<Listed>>>>,
    },
    /// A read-only file of the virtual `/.lunafs` tree, with its contents as of open.
    Control { data: Vec<u8> },
    /// A class or module file open for writing: the new contents, stored at close.
    Script {
        node: Node,
        data: Mutex<Vec<u8>>,
        dirty: AtomicBool,
    },
    /// An open `/.lunafs/call`.
    Call { file: Arc<Mutex<CallFile>> },
}

pub struct Handles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl Default for Handles {
    fn default() -> Self {
        Self::new()
    }
}

impl Handles {
    pub fn new() -> Self {
        Handles {
            next: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().insert(fh, Arc::new(handle));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open.lock().get(&fh).cloned()
    }

    /// Every open handle (a snapshot).
    pub fn all(&self) -> Vec<Arc<Handle>> {
        self.open.lock().values().cloned().collect()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open.lock().remove(&fh)
    }
}
