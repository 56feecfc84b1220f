//! Bringing a store written by an earlier release up to date at mount, once: each step
//! checks a `meta` marker, does its work in bounded batches, and sets the marker in the
//! last one, so a crash midway repeats only what was not done.

use crate::error::Result;
use crate::store::codec::Inode;
use crate::store::keys::Ino;
use crate::store::Store;

/// Inode records changed per batch.
const BATCH: usize = 10_000;

/// Every step, in order.
pub fn run(store: &Store) -> Result<()> {
    fill_inode_names(store)
}

/// Gives every inode from before names were kept the name (and directory) of one of its
/// entries, so events find an object's key without scanning directories.
fn fill_inode_names(store: &Store) -> Result<()> {
    if store.inode_names_done()? {
        return Ok(());
    }
    let mut named: Vec<(Ino, Vec<u8>, Ino)> = Vec::new();
    store.scan_dentries(|parent, name, d| {
        if let Ok(d) = d {
            named.push((parent, name.to_vec(), d.ino));
        }
    })?;
    let mut fixed = 0usize;
    let mut batch = store.batch();
    let mut in_batch = 0;
    for (parent, name, ino) in named {
        let Some(mut inode) = store.inode(ino).ok().flatten() else {
            continue; // dangling: fsck's business
        };
        if !inode.name.is_empty() {
            continue;
        }
        set_name(&mut inode, parent, name);
        batch.put_inode(&inode);
        in_batch += 1;
        fixed += 1;
        if in_batch == BATCH {
            batch.commit()?;
            batch = store.batch();
            in_batch = 0;
        }
    }
    batch.put_inode_names_done();
    batch.commit()?;
    if fixed > 0 {
        tracing::info!(inodes = fixed, "recorded inode names for events");
    }
    Ok(())
}

fn set_name(inode: &mut Inode, parent: Ino, name: Vec<u8>) {
    inode.parent = parent;
    inode.name = name;
}
