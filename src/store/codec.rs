//! Value layouts of the store: inode records, directory entries and chunk values.
//!
//! Every value starts with a format-version byte so that a later release can read old stores
//! and `fsck` can tell garbage from data. Fields are fixed-width big-endian; the only
//! variable-length field (a symlink target) comes last.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::store::keys::Ino;

pub mod events;

const V1: u8 = 1;
/// Inode records since names were kept in them.
const INODE_V2: u8 = 2;

/// What an inode is. The numbers are on disk: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    /// Device nodes carry their device number in the inode's `rdev`.
    BlockDev = 6,
    CharDev = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Kind> {
        Ok(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::BlockDev,
            7 => Kind::CharDev,
            other => return Err(Error::Corrupt(format!("unknown inode kind {other}"))),
        })
    }
}

/// A point in time with nanosecond precision, able to hold dates before 1970 (tar restores
/// whatever the archive says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Timestamp { sec, nsec }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.sec >= 0 {
            UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
                + Duration::from_nanos(t.nsec as u64)
        }
    }
}

/// One inode: a file, directory, symlink or special file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: Ino,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    pub rdev: u32,
    /// The directory holding this inode under `name`: for a directory its one parent (it
    /// answers `..` and the rename loop check), for anything else the directory of its
    /// primary name (the name it was created, linked or last renamed under).
    pub parent: Ino,
    /// The inode's primary name in `parent`, so its bucket and key follow from the inode
    /// alone. Empty when unknown: a store from before names were kept, or a hard-linked file
    /// whose primary name was removed (then a scan finds another).
    pub name: Vec<u8>,
    /// The bucket (top-level directory) this inode lives in, by its inode number; 0 for the
    /// root. Rename and link compare it to refuse crossing buckets with EXDEV.
    pub bucket: Ino,
    /// Symlink target; empty for everything else.
    pub target: Vec<u8>,
}

const INODE_FIXED: usize = 1 + 1 + 2 + 4 + 4 + 4 + 8 + 4 * 12 + 4 + 8 + 8;

impl Inode {
    /// v2: the fixed fields, the name (a u16 length, then the bytes), then the target.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(INODE_FIXED + 2 + self.name.len() + self.target.len());
        v.push(INODE_V2);
        v.push(self.kind as u8);
        v.extend_from_slice(&self.perm.to_be_bytes());
        v.extend_from_slice(&self.uid.to_be_bytes());
        v.extend_from_slice(&self.gid.to_be_bytes());
        v.extend_from_slice(&self.nlink.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            v.extend_from_slice(&t.sec.to_be_bytes());
            v.extend_from_slice(&t.nsec.to_be_bytes());
        }
        v.extend_from_slice(&self.rdev.to_be_bytes());
        v.extend_from_slice(&self.parent.to_be_bytes());
        v.extend_from_slice(&self.bucket.to_be_bytes());
        // Names are at most 255 bytes (NAME_MAX); anything longer is not stored.
        let name = if self.name.len() <= u16::MAX as usize {
            &self.name[..]
        } else {
            &[]
        };
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name);
        v.extend_from_slice(&self.target);
        v
    }

    pub fn decode(ino: Ino, v: &[u8]) -> Result<Inode> {
        let corrupt = || Error::Corrupt(format!("inode {ino}: bad record of {} bytes", v.len()));
        if v.len() < INODE_FIXED || (v[0] != V1 && v[0] != INODE_V2) {
            return Err(corrupt());
        }
        let mut r = Reader { buf: v, pos: 1 };
        let kind = Kind::from_u8(r.u8())?;
        let perm = r.u16();
        let uid = r.u32();
        let gid = r.u32();
        let nlink = r.u32();
        let size = r.u64();
        let mut times = [Timestamp::default(); 4];
        for t in &mut times {
            *t = Timestamp {
                sec: r.u64() as i64,
                nsec: r.u32(),
            };
        }
        let rdev = r.u32();
        let parent = r.u64();
        let bucket = r.u64();
        let mut name = Vec::new();
        if v[0] == INODE_V2 {
            if v.len() < r.pos + 2 {
                return Err(corrupt());
            }
            let len = r.u16() as usize;
            name = v.get(r.pos..r.pos + len).ok_or_else(corrupt)?.to_vec();
            r.pos += len;
        }
        Ok(Inode {
            ino,
            kind,
            perm,
            uid,
            gid,
            nlink,
            size,
            atime: times[0],
            mtime: times[1],
            ctime: times[2],
            crtime: times[3],
            rdev,
            parent,
            name,
            bucket,
            target: v[r.pos..].to_vec(),
        })
    }
}

/// Cursor over a record whose length was checked up front.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
}

/// A directory entry's value: the child and its kind, so readdir needs no inode reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dentry {
    pub ino: Ino,
    pub kind: Kind,
}

impl Dentry {
    pub fn encode(&self) -> [u8; 10] {
        let mut v = [0u8; 10];
        v[0] = V1;
        v[1] = self.kind as u8;
        v[2..].copy_from_slice(&self.ino.to_be_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Result<Dentry> {
        if v.len() != 10 || v[0] != V1 {
            return Err(Error::Corrupt(format!(
                "bad directory entry of {} bytes",
                v.len()
            )));
        }
        Ok(Dentry {
            kind: Kind::from_u8(v[1])?,
            ino: u64::from_be_bytes(v[2..].try_into().expect("length checked above")),
        })
    }
}

/// Chunk, omap and xattr values: a version byte, then the bytes as written.
pub fn encode_blob(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + data.len());
    v.push(V1);
    v.extend_from_slice(data);
    v
}

pub fn decode_blob(v: &[u8]) -> Result<&[u8]> {
    match v.split_first() {
        Some((&V1, rest)) => Ok(rest),
        _ => Err(Error::Corrupt(
            "value without a known format version".into(),
        )),
    }
}

/// One piece of a chunk: bytes `pos..pos + len` of the chunk are bytes `skip..skip + len` of
/// RADOS object `id` (`data/slices.rs` names the object), or of the list's own inline bytes
/// when `id` is `INLINE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub pos: u32,
    pub len: u32,
    pub skip: u32,
    pub id: u64,
}

/// The `id` of a slice whose bytes are in its list's value, not in an object.
pub const INLINE: u64 = u64::MAX;

/// A chunk's slice list: disjoint slices in `pos` order, and the bytes of its inline ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkList {
    pub slices: Vec<Slice>,
    pub inline: Vec<u8>,
}

const SLICE_BYTES: usize = 4 + 4 + 4 + 8;
/// A list with inline bytes: `[V_INLINE][count u32][slices][inline bytes]`. Without any, a
/// list is `[V1][slices]`, as before inline bytes existed.
const V_INLINE: u8 = 2;

pub fn encode_chunk_list(list: &ChunkList) -> Vec<u8> {
    let n = list.slices.len();
    let mut v = Vec::with_capacity(5 + n * SLICE_BYTES + list.inline.len());
    match list.inline.is_empty() {
        true => v.push(V1),
        false => {
            v.push(V_INLINE);
            v.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    for s in &list.slices {
        v.extend_from_slice(&s.pos.to_be_bytes());
        v.extend_from_slice(&s.len.to_be_bytes());
        v.extend_from_slice(&s.skip.to_be_bytes());
        v.extend_from_slice(&s.id.to_be_bytes());
    }
    v.extend_from_slice(&list.inline);
    v
}

pub fn decode_chunk_list(v: &[u8]) -> Result<ChunkList> {
    let bad = || Error::Corrupt(format!("slice list of {} bytes", v.len()));
    let (slices, inline) = match v.split_first() {
        Some((&V_INLINE, rest)) if rest.len() >= 4 => {
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let end = n.checked_mul(SLICE_BYTES).and_then(|b| b.checked_add(4));
            let end = end.filter(|&e| e <= rest.len()).ok_or_else(bad)?;
            (&rest[4..end], &rest[end..])
        }
        _ => (decode_blob(v)?, &[][..]),
    };
    if slices.len() % SLICE_BYTES != 0 {
        return Err(bad());
    }
    let u32_at = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let slices = slices
        .chunks_exact(SLICE_BYTES)
        .map(|b| Slice {
            pos: u32_at(b, 0),
            len: u32_at(b, 4),
            skip: u32_at(b, 8),
            id: u64::from_be_bytes(b[12..20].try_into().unwrap_or_default()),
        })
        .collect();
    Ok(ChunkList {
        slices,
        inline: inline.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inode {
        Inode {
            ino: 9,
            kind: Kind::Symlink,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            nlink: 3,
            size: 5 << 30,
            atime: Timestamp {
                sec: -86_400,
                nsec: 5,
            },
            mtime: Timestamp {
                sec: 1,
                nsec: 999_999_999,
            },
            ctime: Timestamp::now(),
            crtime: Timestamp { sec: 0, nsec: 0 },
            rdev: 0,
            parent: 4,
            name: b"link".to_vec(),
            bucket: 2,
            target: b"../x\0y".to_vec(),
        }
    }

    #[test]
    fn chunk_lists_round_trip_with_and_without_inline_bytes() {
        let slice = |id| Slice {
            pos: 3,
            len: 4,
            skip: 0,
            id,
        };
        let plain = ChunkList {
            slices: vec![slice(9)],
            inline: Vec::new(),
        };
        let v = encode_chunk_list(&plain);
        assert_eq!(
            v[0], V1,
            "a list without inline bytes keeps the first format"
        );
        assert_eq!(decode_chunk_list(&v).unwrap(), plain);
        let inline = ChunkList {
            slices: vec![slice(INLINE), Slice { pos: 9, ..slice(5) }],
            inline: b"data".to_vec(),
        };
        let v = encode_chunk_list(&inline);
        assert_eq!(decode_chunk_list(&v).unwrap(), inline);
        assert!(decode_chunk_list(&v[..7]).is_err(), "a cut list is refused");
        assert!(decode_chunk_list(&[V_INLINE, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn inode_round_trips() {
        let ino = sample();
        assert_eq!(Inode::decode(9, &ino.encode()).unwrap(), ino);
    }

    #[test]
    fn a_v1_inode_reads_with_no_name() {
        let mut ino = sample();
        let mut v1 = ino.encode();
        // A v1 record: no name field, version 1.
        v1[0] = V1;
        let at = INODE_FIXED;
        v1.drain(at..at + 2 + ino.name.len());
        ino.name.clear();
        assert_eq!(Inode::decode(9, &v1).unwrap(), ino);
    }

    #[test]
    fn truncated_or_unversioned_inode_is_corrupt() {
        let enc = sample().encode();
        assert!(Inode::decode(9, &enc[..10]).is_err());
        let mut bad = enc.clone();
        bad[0] = 99;
        assert!(Inode::decode(9, &bad).is_err());
    }

    #[test]
    fn dentry_and_blob_round_trip() {
        let d = Dentry {
            ino: 77,
            kind: Kind::Dir,
        };
        assert_eq!(Dentry::decode(&d.encode()).unwrap(), d);
        assert_eq!(decode_blob(&encode_blob(b"a\0b")).unwrap(), b"a\0b");
        assert!(decode_blob(b"").is_err());
    }

    #[test]
    fn timestamps_before_the_epoch_round_trip_through_system_time() {
        let t = Timestamp { sec: -2, nsec: 250 };
        assert_eq!(Timestamp::from(SystemTime::from(t)), t);
    }
}
