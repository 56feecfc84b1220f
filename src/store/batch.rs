//! `Batch`: the one way to change the store. A mutating operation builds one batch and commits
//! it once, so it either happens whole or not at all (and, later, its events ride in the same
//! batch).

use rocksdb::WriteBatch;

use super::codec::events::{EtagRecord, GlobalValue, QueuedEvent};
use super::codec::{encode_blob, Dentry, Inode};
use super::keys::{self, Ino};
use super::schema::{Cf, CHUNK_SIZE, SCHEMA_VERSION};
use super::Store;
use crate::error::Result;

pub struct Batch<'a> {
    store: &'a Store,
    wb: WriteBatch,
}

impl<'a> Batch<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Batch {
            store,
            wb: WriteBatch::default(),
        }
    }

    /// Marks the store as initialized with this release's format and chunk size.
    pub fn put_schema(&mut self) {
        let meta = self.store.cf(Cf::Meta);
        self.wb
            .put_cf(meta, keys::META_SCHEMA, SCHEMA_VERSION.to_be_bytes());
        self.wb
            .put_cf(meta, keys::META_CHUNK_SIZE, CHUNK_SIZE.to_be_bytes());
        self.put_inode_names_done();
    }

    /// Marks that every inode record carries its name (see `keys::META_INODE_NAMES`).
    pub fn put_inode_names_done(&mut self) {
        self.wb
            .put_cf(self.store.cf(Cf::Meta), keys::META_INODE_NAMES, [1u8]);
    }

    pub fn put_ino_reserved(&mut self, below: Ino) {
        self.wb.put_cf(
            self.store.cf(Cf::Meta),
            keys::META_INO_RESERVED,
            keys::inode(below),
        );
    }

    pub fn put_inode(&mut self, inode: &Inode) {
        self.wb.put_cf(
            self.store.cf(Cf::Inodes),
            keys::inode(inode.ino),
            inode.encode(),
        );
    }

    pub fn put_dentry(&mut self, parent: Ino, name: &[u8], d: Dentry) {
        self.wb.put_cf(
            self.store.cf(Cf::Dentries),
            keys::named(parent, name),
            d.encode(),
        );
    }

    pub fn delete_dentry(&mut self, parent: Ino, name: &[u8]) {
        self.wb
            .delete_cf(self.store.cf(Cf::Dentries), keys::named(parent, name));
    }

    pub fn put_chunk(&mut self, ino: Ino, index: u64, data: &[u8]) {
        self.wb.put_cf(
            self.store.cf(Cf::Chunks),
            keys::chunk(ino, index),
            encode_blob(data),
        );
    }

    /// Deletes chunks `first..` of `ino`.
    pub fn delete_chunks_from(&mut self, ino: Ino, first: u64) {
        self.wb.delete_range_cf(
            self.store.cf(Cf::Chunks),
            keys::chunk(ino, first),
            keys::chunk(ino + 1, 0),
        );
    }

    pub fn put_omap(&mut self, ino: Ino, key: &[u8], value: &[u8]) {
        self.wb.put_cf(
            self.store.cf(Cf::Omap),
            keys::named(ino, key),
            encode_blob(value),
        );
    }

    pub fn delete_omap(&mut self, ino: Ino, key: &[u8]) {
        self.wb
            .delete_cf(self.store.cf(Cf::Omap), keys::named(ino, key));
    }

    pub fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) {
        self.wb.put_cf(
            self.store.cf(Cf::Xattrs),
            keys::named(ino, name),
            encode_blob(value),
        );
    }

    pub fn delete_xattr(&mut self, ino: Ino, name: &[u8]) {
        self.wb
            .delete_cf(self.store.cf(Cf::Xattrs), keys::named(ino, name));
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
        self.wb.delete_range_cf(self.store.cf(Cf::Omap), lo, hi);
    }

    pub fn put_class(&mut self, name: &str, source: &[u8]) {
        self.wb.put_cf(
            self.store.cf(Cf::Classes),
            keys::class(name),
            encode_blob(source),
        );
    }

    pub fn delete_class(&mut self, name: &str) {
        self.wb
            .delete_cf(self.store.cf(Cf::Classes), keys::class(name));
    }

    pub fn put_package(&mut self, name: &str, version: &str, module: &str, source: &[u8]) {
        self.wb.put_cf(
            self.store.cf(Cf::Packages),
            keys::package(name, version, module),
            encode_blob(source),
        );
    }

    pub fn delete_package(&mut self, name: &str, version: &str, module: &str) {
        self.wb.delete_cf(
            self.store.cf(Cf::Packages),
            keys::package(name, version, module),
        );
    }

    /// Records that `ino` has no names left but is still open.
    pub fn put_orphan(&mut self, ino: Ino) {
        self.wb
            .put_cf(self.store.cf(Cf::Orphans), keys::inode(ino), []);
    }

    pub fn delete_orphan(&mut self, ino: Ino) {
        self.wb
            .delete_cf(self.store.cf(Cf::Orphans), keys::inode(ino));
    }

    /// Deletes an inode and everything it owns: data, omap, xattrs, orphan record.
    pub fn purge_inode(&mut self, ino: Ino) {
        let s = self.store;
        self.wb.delete_cf(s.cf(Cf::Inodes), keys::inode(ino));
        self.wb.delete_cf(s.cf(Cf::Orphans), keys::inode(ino));
        self.delete_chunks_from(ino, 0);
        let (lo, hi) = keys::named_range(ino);
        self.wb.delete_range_cf(s.cf(Cf::Omap), lo, hi);
        self.wb.delete_range_cf(s.cf(Cf::Xattrs), lo, hi);
    }

    /// Queues an event (see `Cf::Queue`).
    pub fn put_event(&mut self, seq: u64, event: &QueuedEvent) {
        self.wb
            .put_cf(self.store.cf(Cf::Queue), keys::event(seq), event.encode());
    }

    pub fn delete_event(&mut self, seq: u64) {
        self.wb
            .delete_cf(self.store.cf(Cf::Queue), keys::event(seq));
    }

    pub fn put_event_reserved(&mut self, below: u64) {
        self.wb.put_cf(
            self.store.cf(Cf::Meta),
            keys::META_EVENT_RESERVED,
            below.to_be_bytes(),
        );
    }

    pub fn put_store_id(&mut self, id: &[u8]) {
        self.wb
            .put_cf(self.store.cf(Cf::Meta), keys::META_STORE_ID, id);
    }

    /// Records the MD5 of `ino`'s content (see `keys::ETAG`).
    pub fn put_etag(&mut self, ino: Ino, record: &EtagRecord) {
        self.put_xattr(ino, keys::ETAG, &record.encode());
    }

    pub fn put_notify(&mut self, kind: u8, name: &str, value: &[u8]) {
        self.wb.put_cf(
            self.store.cf(Cf::Notify),
            keys::notify_item(kind, name),
            encode_blob(value),
        );
    }

    pub fn delete_notify(&mut self, kind: u8, name: &str) {
        self.wb
            .delete_cf(self.store.cf(Cf::Notify), keys::notify_item(kind, name));
    }

    pub fn put_global(&mut self, key: &str, value: &GlobalValue) {
        self.wb
            .put_cf(self.store.cf(Cf::Global), key.as_bytes(), value.encode());
    }

    pub fn delete_global(&mut self, key: &str) {
        self.wb.delete_cf(self.store.cf(Cf::Global), key.as_bytes());
    }

    pub fn commit(self) -> Result<()> {
        self.store.write(self.wb)
    }
}
