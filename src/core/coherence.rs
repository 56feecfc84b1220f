//! What a mount does when other mounts of a shared store change it: the store's watch
//! (`Meta::watch`) reports each changed key, and this turns keys into cache invalidations.
//! Core's own caches (classes, packages, notification settings, the global table's count)
//! are dropped here; what the kernel caches (attributes, entries, pages) is the FUSE
//! adapter's, told through `Seen`. On the embedded store nothing is ever reported.

use std::sync::{Arc, Weak};

use super::Core;
use crate::store::keys::{self, Ino};
use crate::store::schema::Cf;

/// A change another mount made that the kernel may have cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// An inode's attributes or data.
    Inode(Ino),
    /// A name in a directory (added, removed or repointed).
    Entry(Ino, &'a [u8]),
}

/// Where `Seen` changes go.
pub type Kernel = dyn Fn(Seen<'_>) + Send + Sync;

impl Core {
    /// From now on, drops what other mounts make stale and tells `kernel` of it.
    pub fn follow_other_mounts(self: &Arc<Self>, kernel: Arc<Kernel>) -> crate::error::Result<()> {
        let core: Weak<Core> = Arc::downgrade(self);
        self.store.watch(Arc::new(move |change| {
            if let Some(core) = core.upgrade() {
                core.changed_elsewhere(change, &*kernel);
            }
        }))
    }

    fn changed_elsewhere(&self, change: Option<(Cf, &[u8])>, kernel: &Kernel) {
        let Some((cf, key)) = change else {
            // Changes were missed: every cache of ours may be stale (the kernel's expire
            // within attr_timeout).
            self.registry.clear();
            self.global_forget_count();
            self.reload_notifications();
            return;
        };
        match cf {
            Cf::Inodes => {
                if let Some(ino) = keys::decode_inode(key) {
                    kernel(Seen::Inode(ino));
                }
            }
            Cf::Dentries => {
                if let Some((parent, name)) = keys::decode_named(key) {
                    kernel(Seen::Entry(parent, name));
                    if parent == super::ROOT {
                        self.root_changed();
                    }
                }
            }
            Cf::Classes | Cf::Packages => self.registry.clear(),
            Cf::Notify => self.reload_notifications(),
            Cf::Global => self.global_forget_count(),
            Cf::Queue => {
                if let Some(seq) = keys::decode_event(key) {
                    self.queue_changed_elsewhere(seq);
                }
            }
            _ => {}
        }
    }
}
