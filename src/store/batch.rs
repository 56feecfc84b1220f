//! `Batch`: the one way to change the store. A mutating operation builds one batch and commits
//! it once, so it either happens whole or not at all, its events with it. The versions it was
//! told to check (what the operation read) must still hold at the commit, else nothing is
//! written and the commit fails with `Error::Conflict` (the operation runs again).

use super::codec::events::{EtagRecord, GlobalValue, QueuedEvent};
use super::codec::{encode_blob, Dentry, Inode};
use super::data::Edits;
use super::keys::{self, Ino};
use super::meta::{Outcome, Version, Writes};
use super::schema::{Cf, CHUNK_SIZE, SCHEMA_VERSION};
use super::Store;
use crate::error::{Error, Result};

pub struct Batch<'a> {
    store: &'a Store,
    w: Box<dyn Writes + 'a>,
}

impl<'a> Batch<'a> {
    pub(super) fn new(store: &'a Store, w: Box<dyn Writes + 'a>) -> Self {
        Batch { store, w }
    }

    /// The commit happens only if inode `ino` still has `version`.
    pub fn check_inode(&mut self, ino: Ino, version: Version) {
        self.w.check(Cf::Inodes, &keys::inode(ino), version);
    }

    /// The commit happens only if the counter record `key` still has `version`.
    pub fn check_counter(&mut self, key: &[u8], version: Version) {
        self.w.check(Cf::Meta, key, version);
    }

    /// The commit happens only if global-table entry `key` still has `version`.
    pub fn check_global(&mut self, key: &str, version: Version) {
        self.w.check(Cf::Global, key.as_bytes(), version);
    }

    /// Stages `edits` of file `ino`'s bytes.
    pub fn apply(&mut self, ino: Ino, edits: &Edits) -> Result<()> {
        let s = self.store;
        s.data().apply(s.meta(), &mut *self.w, ino, edits)
    }

    /// fsck repair: drops whatever `ino` stores at or past `size`.
    pub fn trim_data(&mut self, ino: Ino, size: u64) -> Result<()> {
        let s = self.store;
        s.data().trim(s.meta(), &mut *self.w, ino, size)
    }

    /// Marks the store as initialized with this release's format and chunk size.
    pub fn put_schema(&mut self) {
        self.w
            .put(Cf::Meta, keys::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes());
        self.w
            .put(Cf::Meta, keys::META_CHUNK_SIZE, &CHUNK_SIZE.to_be_bytes());
        self.put_inode_names_done();
    }

    /// Marks that every inode record carries its name (see `keys::META_INODE_NAMES`).
    pub fn put_inode_names_done(&mut self) {
        self.w.put(Cf::Meta, keys::META_INODE_NAMES, &[1u8]);
    }

    /// Sets a reserve-ahead counter's high-water mark.
    pub fn put_reserved(&mut self, counter: &[u8], below: u64) {
        self.w.put(Cf::Meta, counter, &keys::counter(below));
    }

    pub fn put_inode(&mut self, inode: &Inode) {
        self.w
            .put(Cf::Inodes, &keys::inode(inode.ino), &inode.encode());
    }

    pub fn put_dentry(&mut self, parent: Ino, name: &[u8], d: Dentry) {
        self.w
            .put(Cf::Dentries, &keys::named(parent, name), &d.encode());
    }

    pub fn delete_dentry(&mut self, parent: Ino, name: &[u8]) {
        self.w.delete(Cf::Dentries, &keys::named(parent, name));
    }

    pub fn put_omap(&mut self, ino: Ino, key: &[u8], value: &[u8]) {
        self.w
            .put(Cf::Omap, &keys::named(ino, key), &encode_blob(value));
    }

    pub fn delete_omap(&mut self, ino: Ino, key: &[u8]) {
        self.w.delete(Cf::Omap, &keys::named(ino, key));
    }

    pub fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) {
        self.w
            .put(Cf::Xattrs, &keys::named(ino, name), &encode_blob(value));
    }

    pub fn delete_xattr(&mut self, ino: Ino, name: &[u8]) {
        self.w.delete(Cf::Xattrs, &keys::named(ino, name));
    }

    pub fn put_omap_header(&mut self, ino: Ino, value: &[u8]) {
        self.put_xattr(ino, keys::OMAP_HEADER, value);
    }

    pub fn delete_omap_header(&mut self, ino: Ino) {
        self.delete_xattr(ino, keys::OMAP_HEADER);
    }

    /// Deletes every omap entry of `ino` (not its header).
    pub fn clear_omap(&mut self, ino: Ino) {
        let (lo, hi) = keys::named_range(ino);
        self.w.delete_range(Cf::Omap, &lo, &hi);
    }

    pub fn put_class(&mut self, name: &str, source: &[u8]) {
        self.w
            .put(Cf::Classes, &keys::class(name), &encode_blob(source));
    }

    pub fn delete_class(&mut self, name: &str) {
        self.w.delete(Cf::Classes, &keys::class(name));
    }

    pub fn put_package(&mut self, name: &str, version: &str, module: &str, source: &[u8]) {
        let key = keys::package(name, version, module);
        self.w.put(Cf::Packages, &key, &encode_blob(source));
    }

    pub fn delete_package(&mut self, name: &str, version: &str, module: &str) {
        self.w
            .delete(Cf::Packages, &keys::package(name, version, module));
    }

    /// Records that `ino` has no names left but is still open.
    pub fn put_orphan(&mut self, ino: Ino) {
        // The session that has it open: another mount starting up leaves it alone.
        self.w
            .put(Cf::Orphans, &keys::inode(ino), self.store.session());
    }

    pub fn delete_orphan(&mut self, ino: Ino) {
        self.w.delete(Cf::Orphans, &keys::inode(ino));
    }

    /// Deletes an inode and everything it owns: data, omap, xattrs, orphan record.
    pub fn purge_inode(&mut self, ino: Ino) -> Result<()> {
        self.w.delete(Cf::Inodes, &keys::inode(ino));
        self.w.delete(Cf::Orphans, &keys::inode(ino));
        let (lo, hi) = keys::named_range(ino);
        self.w.delete_range(Cf::Omap, &lo, &hi);
        self.w.delete_range(Cf::Xattrs, &lo, &hi);
        let s = self.store;
        s.data().purge(s.meta(), &mut *self.w, ino)
    }

    /// Queues an event (see `Cf::Queue`).
    pub fn put_event(&mut self, seq: u64, event: &QueuedEvent) {
        self.w.put(Cf::Queue, &keys::event(seq), &event.encode());
    }

    pub fn delete_event(&mut self, seq: u64) {
        self.w.delete(Cf::Queue, &keys::event(seq));
    }

    pub fn put_store_id(&mut self, id: &[u8]) {
        self.w.put(Cf::Meta, keys::META_STORE_ID, id);
    }

    /// Records the MD5 of `ino`'s content (see `keys::ETAG`).
    pub fn put_etag(&mut self, ino: Ino, record: &EtagRecord) {
        self.put_xattr(ino, keys::ETAG, &record.encode());
    }

    pub fn put_notify(&mut self, kind: u8, name: &str, value: &[u8]) {
        self.w.put(
            Cf::Notify,
            &keys::notify_item(kind, name),
            &encode_blob(value),
        );
    }

    pub fn delete_notify(&mut self, kind: u8, name: &str) {
        self.w.delete(Cf::Notify, &keys::notify_item(kind, name));
    }

    pub fn put_global(&mut self, key: &str, value: &GlobalValue) {
        self.w.put(Cf::Global, key.as_bytes(), &value.encode());
    }

    pub fn delete_global(&mut self, key: &str) {
        self.w.delete(Cf::Global, key.as_bytes());
    }

    /// Commits every write at once, or none: `Error::Conflict` if a checked version changed.
    pub fn commit(self) -> Result<()> {
        match self.w.commit()? {
            Outcome::Done => Ok(()),
            Outcome::Conflict => Err(Error::Conflict),
        }
    }
}
