//! Every key byte of the store is encoded here, and nowhere else.
//!
//! Integers are big-endian so that RocksDB's bytewise order is numeric order: the dentries of a
//! directory, the chunks of a file and the omap of an object are each one contiguous key range
//! starting with the owning inode number, so readdir is a prefix scan and deleting a file's data
//! is one range delete.

pub type Ino = u64;

/// `inodes` and `orphans`: the inode number.
pub fn inode(ino: Ino) -> [u8; 8] {
    ino.to_be_bytes()
}

pub fn decode_inode(key: &[u8]) -> Option<Ino> {
    Some(Ino::from_be_bytes(key.try_into().ok()?))
}

/// `dentries`, `omap`, `xattrs`: the owning inode followed by the raw name bytes.
pub fn named(owner: Ino, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    key.extend_from_slice(&owner.to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// Splits a `named` key into owner and name.
pub fn decode_named(key: &[u8]) -> Option<(Ino, &[u8])> {
    if key.len() < 8 {
        return None;
    }
    let (owner, name) = key.split_at(8);
    Some((Ino::from_be_bytes(owner.try_into().ok()?), name))
}

/// The half-open key range `[owner, owner + 1)` holding every `named` key of `owner`.
pub fn named_range(owner: Ino) -> ([u8; 8], [u8; 8]) {
    (owner.to_be_bytes(), (owner + 1).to_be_bytes())
}

/// `chunks`: inode then chunk index.
pub fn chunk(ino: Ino, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&ino.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

pub fn decode_chunk(key: &[u8]) -> Option<(Ino, u64)> {
    if key.len() != 16 {
        return None;
    }
    Some((
        Ino::from_be_bytes(key[..8].try_into().ok()?),
        u64::from_be_bytes(key[8..].try_into().ok()?),
    ))
}

/// `xattrs`: the omap header of an inode (Ceph's map_read_header/map_write_header). xattr
/// names from the filesystem always start with `trusted.` or `security.`, so a name that
/// starts with NUL can never collide with one; listxattr skips it.
pub const OMAP_HEADER: &[u8] = b"\0omap_header";

/// `classes`: the class name.
pub fn class(name: &str) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// `packages`: name, version and module, NUL-separated (none of them may contain NUL), so
/// every version of a package and every module of a version are contiguous.
pub fn package(name: &str, version: &str, module: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + version.len() + module.len() + 2);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(version.as_bytes());
    key.push(0);
    key.extend_from_slice(module.as_bytes());
    key
}

/// Splits a `package` key into name, version and module.
pub fn decode_package(key: &[u8]) -> Option<(String, String, String)> {
    let mut parts = key.split(|&b| b == 0);
    let mut next = || String::from_utf8(parts.next()?.to_vec()).ok();
    let out = (next()?, next()?, next()?);
    Some(out)
}

/// `meta`: the schema version record.
pub const META_SCHEMA: &[u8] = b"schema_version";

/// `meta`: the chunk size the store was created with.
pub const META_CHUNK_SIZE: &[u8] = b"chunk_size";

/// `meta`: every inode number below this value may have been handed out (a high-water mark
/// reserved ahead of use, so numbers are never reused after a restart).
pub const META_INO_RESERVED: &[u8] = b"ino_reserved";

/// `meta`: every event sequence number below this value may have been handed out.
pub const META_EVENT_RESERVED: &[u8] = b"event_reserved";

/// `meta`: a random id made when the store is created; event ids carry it, so that two
/// stores publishing to one JetStream stream never share an id.
pub const META_STORE_ID: &[u8] = b"store_id";

/// `meta`: a shared filesystem's data engine (`rados://POOL[?conf=FILE]`), written by
/// `lunafs format`; absent in an embedded store (its data is inline).
pub const META_DATA_URL: &[u8] = b"data_url";

/// `meta`: present once every inode record carries its name (`Inode::name`): a store from
/// before names were kept gets them filled in once, at its next mount.
pub const META_INODE_NAMES: &[u8] = b"inode_names";

/// `xattrs`: the MD5 of an object's content as of its last event (size, mtime and digest),
/// so a rename need not read the object again. NUL-prefixed like `OMAP_HEADER`.
pub const ETAG: &[u8] = b"\0etag";

/// `meta`: the value of a reserve-ahead counter's record (`META_INO_RESERVED`,
/// `META_EVENT_RESERVED`).
pub fn counter(below: u64) -> [u8; 8] {
    below.to_be_bytes()
}

pub fn decode_counter(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// `queue`: the event sequence number.
pub fn event(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn decode_event(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// `notify` kinds: a topic, a bucket's notifications, a bucket's notification script, the
/// background script (whose name is empty).
pub const SETTING_TOPIC: u8 = b't';
pub const SETTING_NOTIFICATIONS: u8 = b'n';
pub const SETTING_SCRIPT: u8 = b's';
pub const SETTING_BACKGROUND: u8 = b'b';

/// `notify`: a one-byte kind and the item's name.
pub fn notify_item(kind: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(kind);
    key.extend_from_slice(name.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip_and_sort_numerically() {
        let keys: Vec<[u8; 16]> = [(1, 0), (1, 1), (1, 255), (1, 256), (2, 0), (1 << 40, 7)]
            .iter()
            .map(|&(i, c)| chunk(i, c))
            .collect();
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
        }
        assert_eq!(decode_chunk(&chunk(42, 9)), Some((42, 9)));
        assert_eq!(decode_chunk(b"short"), None);
    }

    #[test]
    fn named_keys_group_by_owner_and_sort_by_name() {
        let a = named(7, b"a");
        let b = named(7, b"b");
        let next_owner = named(8, b"");
        assert!(a < b && b < next_owner);
        let (lo, hi) = named_range(7);
        assert!(a.as_slice() >= &lo[..] && b.as_slice() < &hi[..]);
        assert_eq!(decode_named(&named(7, b"x\0y")), Some((7, &b"x\0y"[..])));
        assert_eq!(decode_named(b"1234"), None);
    }

    #[test]
    fn package_keys_round_trip_and_group_by_package() {
        let k = package("json", "1.2.0", "json.util");
        assert_eq!(
            decode_package(&k),
            Some(("json".into(), "1.2.0".into(), "json.util".into()))
        );
        // "json" < "json2": the NUL separator keeps one package's keys together.
        assert!(package("json", "9", "json") < package("json2", "0", "json2"));
        assert_eq!(decode_package(b"no-separators"), None);
    }

    #[test]
    fn inode_keys_round_trip() {
        assert_eq!(decode_inode(&inode(123456789)), Some(123456789));
        assert!(inode(255) < inode(256));
    }
}
