//! Value layouts of the notification side of the store: queued events, the eTag record kept
//! with an object, and the values of the scripts' global table. Each starts with a format
//! version byte; older formats still decode.

use serde_json::Value as Json;

use super::{Reader, Timestamp, V1};
use crate::error::{Error, Result};
use crate::store::keys::Ino;

/// Queued events in the binary layout below (version 1 was a JSON document).
const EVENT_V2: u8 = 2;

/// What happened to an object. The numbers are on disk: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put = 1,
    Copy = 2,
    Delete = 3,
    MetadataSet = 4,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Put,
        EventKind::Copy,
        EventKind::Delete,
        EventKind::MetadataSet,
    ];

    /// The S3 event name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Put => "ObjectCreated:Put",
            EventKind::Copy => "ObjectCreated:Copy",
            EventKind::Delete => "ObjectRemoved:Delete",
            EventKind::MetadataSet => "ObjectMetadata:Set",
        }
    }

    fn from_u8(v: u8) -> Result<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| *k as u8 == v)
            .ok_or_else(|| Error::Corrupt(format!("queued event of unknown kind {v}")))
    }

    fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One queued event: a completed change of one object, for one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub kind: EventKind,
    /// The object's inode: events of one inode are delivered in order.
    pub ino: Ino,
    pub bucket: String,
    pub bucket_id: Ino,
    pub bucket_owner: u32,
    /// The object's key (its path inside the bucket), as bytes.
    pub key: Vec<u8>,
    pub size: u64,
    /// MD5 hex of the content ("" for deletes).
    pub etag: String,
    /// uid of the process that made the change.
    pub uid: u32,
    /// When the change happened, in ms since the epoch.
    pub time_ms: u64,
    /// The object's omap as the change left it.
    pub metadata: Vec<(Vec<u8>, Vec<u8>)>,
    /// The notification that wants the event, and where it goes (a topic, or a call).
    pub notification: String,
    pub target: String,
}

fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(&(b.len() as u32).to_be_bytes());
    v.extend_from_slice(b);
}

impl QueuedEvent {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(96 + self.key.len() + self.bucket.len());
        v.push(EVENT_V2);
        v.push(self.kind as u8);
        for n in [self.ino, self.bucket_id, self.size, self.time_ms] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&self.bucket_owner.to_be_bytes());
        v.extend_from_slice(&self.uid.to_be_bytes());
        for b in [
            self.bucket.as_bytes(),
            &self.key,
            self.etag.as_bytes(),
            self.notification.as_bytes(),
            self.target.as_bytes(),
        ] {
            put_bytes(&mut v, b);
        }
        v.extend_from_slice(&(self.metadata.len() as u32).to_be_bytes());
        for (k, val) in &self.metadata {
            put_bytes(&mut v, k);
            put_bytes(&mut v, val);
        }
        v
    }

    pub fn decode(v: &[u8]) -> Result<QueuedEvent> {
        match v.split_first() {
            Some((&EVENT_V2, _)) => decode_v2(v),
            Some((&V1, json)) => decode_v1(json),
            _ => Err(Error::Corrupt("queued event of no known format".into())),
        }
    }
}

/// A cursor that checks every length against what is left.
struct Checked<'a> {
    r: Reader<'a>,
}

impl<'a> Checked<'a> {
    fn need(&self, n: usize) -> Result<()> {
        if self.r.buf.len() - self.r.pos < n {
            return Err(Error::Corrupt("queued event: truncated".into()));
        }
        Ok(())
    }

    fn u64(&mut self) -> Result<u64> {
        self.need(8)?;
        Ok(self.r.u64())
    }

    fn u32(&mut self) -> Result<u32> {
        self.need(4)?;
        Ok(self.r.u32())
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.need(n)?;
        let b = &self.r.buf[self.r.pos..self.r.pos + n];
        self.r.pos += n;
        Ok(b)
    }

    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| Error::Corrupt("queued event: text that is not UTF-8".into()))
    }
}

fn decode_v2(v: &[u8]) -> Result<QueuedEvent> {
    let mut c = Checked {
        r: Reader { buf: v, pos: 1 },
    };
    c.need(1)?;
    let kind = EventKind::from_u8(c.r.u8())?;
    let (ino, bucket_id, size, time_ms) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?);
    let (bucket_owner, uid) = (c.u32()?, c.u32()?);
    let bucket = c.string()?;
    let key = c.bytes()?.to_vec();
    let (etag, notification, target) = (c.string()?, c.string()?, c.string()?);
    let n = c.u32()? as usize;
    let mut metadata = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        metadata.push((c.bytes()?.to_vec(), c.bytes()?.to_vec()));
    }
    Ok(QueuedEvent {
        kind,
        ino,
        bucket,
        bucket_id,
        bucket_owner,
        key,
        size,
        etag,
        uid,
        time_ms,
        metadata,
        notification,
        target,
    })
}

/// The first release's entries: `{"bucket", "ino", "notification", "topic", "queued_ms",
/// "record"}` with the S3 record inside; a backlog queued by it is still delivered.
fn decode_v1(json: &[u8]) -> Result<QueuedEvent> {
    let bad = |why: &str| Error::Corrupt(format!("queued event: {why}"));
    let v: Json = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let text = |p: &str| {
        v.pointer(p)
            .and_then(Json::as_str)
            .map(str::to_string)
            .ok_or_else(|| bad(&format!("no {p}")))
    };
    let num = |p: &str| v.pointer(p).and_then(Json::as_u64).ok_or_else(|| bad(p));
    let id = |p: &str| -> Result<u64> {
        text(p)?
            .parse()
            .map_err(|_| bad(&format!("{p} is not a number")))
    };
    let metadata = v
        .pointer("/record/s3/object/metadata")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let k = m.get("key")?.as_str()?;
            let val = m.get("val")?.as_str()?;
            Some((k.as_bytes().to_vec(), val.as_bytes().to_vec()))
        })
        .collect();
    let kind = EventKind::from_name(&text("/record/eventName")?)
        .ok_or_else(|| bad("unknown eventName"))?;
    Ok(QueuedEvent {
        kind,
        ino: num("/ino")?,
        bucket: text("/bucket")?,
        bucket_id: id("/record/s3/bucket/id")?,
        bucket_owner: id("/record/s3/bucket/ownerIdentity/principalId")? as u32,
        key: text("/record/s3/object/key")?.into_bytes(),
        size: num("/record/s3/object/size")?,
        etag: text("/record/s3/object/eTag")?,
        uid: id("/record/userIdentity/principalId")? as u32,
        time_ms: num("/queued_ms")?,
        metadata,
        notification: text("/notification")?,
        target: text("/topic")?,
    })
}

/// The MD5 of an object's content as of its last event (kept under `keys::ETAG`): valid
/// while the object's size and mtime are what they were then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtagRecord {
    pub size: u64,
    pub mtime: Timestamp,
    pub md5: String,
}

impl EtagRecord {
    /// The payload of the (versioned) xattr value: `SIZE SEC NSEC HEX`.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {}",
            self.size, self.mtime.sec, self.mtime.nsec, self.md5
        )
        .into_bytes()
    }

    pub fn decode(payload: &[u8]) -> Option<EtagRecord> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut f = text.split(' ');
        let size = f.next()?.parse().ok()?;
        let sec = f.next()?.parse().ok()?;
        let nsec = f.next()?.parse().ok()?;
        let md5 = f.next()?.to_string();
        Some(EtagRecord {
            size,
            mtime: Timestamp { sec, nsec },
            md5,
        })
    }

    /// The digest, if the object is still as it was when it was recorded.
    pub fn valid_for(&self, size: u64, mtime: Timestamp) -> Option<&str> {
        (self.size == size && self.mtime == mtime).then_some(self.md5.as_str())
    }
}

/// A value of the global table scripts share.
#[derive(Debug, Clone, PartialEq)]
pub enum GlobalValue {
    Str(Vec<u8>),
    Int(i64),
    Num(f64),
    Bool(bool),
}

impl GlobalValue {
    /// The version byte, a type tag, and the value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![V1];
        match self {
            GlobalValue::Str(s) => {
                out.push(b's');
                out.extend_from_slice(s);
            }
            GlobalValue::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(&i.to_be_bytes());
            }
            GlobalValue::Num(n) => {
                out.push(b'n');
                out.extend_from_slice(&n.to_bits().to_be_bytes());
            }
            GlobalValue::Bool(b) => out.extend_from_slice(&[b'b', u8::from(*b)]),
        }
        out
    }

    pub fn decode(v: &[u8]) -> Result<GlobalValue> {
        let bad = || Error::Corrupt("global table value".into());
        let rest = match v.split_first() {
            Some((&V1, rest)) => rest,
            _ => return Err(bad()),
        };
        let (&tag, rest) = rest.split_first().ok_or_else(bad)?;
        let eight = || -> Result<[u8; 8]> { rest.try_into().map_err(|_| bad()) };
        Ok(match tag {
            b's' => GlobalValue::Str(rest.to_vec()),
            b'i' => GlobalValue::Int(i64::from_be_bytes(eight()?)),
            b'n' => GlobalValue::Num(f64::from_bits(u64::from_be_bytes(eight()?))),
            b'b' => GlobalValue::Bool(rest.first() == Some(&1)),
            _ => return Err(bad()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QueuedEvent {
        QueuedEvent {
            kind: EventKind::MetadataSet,
            ino: 42,
            bucket: "photos".into(),
            bucket_id: 7,
            bucket_owner: 1000,
            key: b"2024/cat\xff.jpg".to_vec(),
            size: 5 << 30,
            etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
            uid: 33,
            time_ms: 1_795_363_982_123,
            metadata: vec![
                (b"color".to_vec(), b"red".to_vec()),
                (b"k".to_vec(), vec![0, 1]),
            ],
            notification: "n1".into(),
            target: "topic".into(),
        }
    }

    #[test]
    fn queued_events_round_trip_and_refuse_truncation() {
        let e = sample();
        let enc = e.encode();
        assert_eq!(QueuedEvent::decode(&enc).unwrap(), e);
        for cut in [1, 10, enc.len() - 1] {
            assert!(QueuedEvent::decode(&enc[..cut]).is_err(), "{cut}");
        }
        assert!(QueuedEvent::decode(b"").is_err());
        assert!(QueuedEvent::decode(&[9, 1, 2]).is_err());
    }

    #[test]
    fn first_release_json_entries_still_decode() {
        let json = br#"{"bucket":"b","ino":5,"notification":"n","topic":"t","queued_ms":77,
          "record":{"eventName":"ObjectCreated:Put","userIdentity":{"principalId":"1000"},
          "s3":{"bucket":{"id":"3","ownerIdentity":{"principalId":"0"}},
          "object":{"key":"a/b","size":9,"eTag":"x","metadata":[{"key":"c","val":"red"}]}}}}"#;
        let v = [&[V1][..], json].concat();
        let e = QueuedEvent::decode(&v).unwrap();
        assert_eq!(
            (e.kind, e.ino, e.bucket_id, e.uid),
            (EventKind::Put, 5, 3, 1000)
        );
        assert_eq!((e.key.as_slice(), e.size, e.time_ms), (&b"a/b"[..], 9, 77));
        assert_eq!(e.metadata, vec![(b"c".to_vec(), b"red".to_vec())]);
        assert_eq!((e.notification.as_str(), e.target.as_str()), ("n", "t"));
    }

    #[test]
    fn etag_records_and_global_values_round_trip() {
        let r = EtagRecord {
            size: 3,
            mtime: Timestamp { sec: -1, nsec: 9 },
            md5: "abc".into(),
        };
        assert_eq!(EtagRecord::decode(&r.encode()), Some(r.clone()));
        assert_eq!(r.valid_for(3, r.mtime), Some("abc"));
        assert_eq!(r.valid_for(4, r.mtime), None);
        for v in [
            GlobalValue::Str(b"x\0".to_vec()),
            GlobalValue::Int(-5),
            GlobalValue::Num(0.5),
            GlobalValue::Bool(true),
        ] {
            assert_eq!(GlobalValue::decode(&v.encode()).unwrap(), v);
        }
        assert!(GlobalValue::decode(b"\x01z").is_err());
    }
}
