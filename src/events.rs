//! `events`: what a bucket notification is made of, with no I/O: the settings (`config`:
//! topics, notifications, filters) and the records (Ceph RGW's S3-compatible JSON) that
//! `core` queues in the same batch as a change and the `notify` dispatcher publishes.
//!
//! A queued entry is JSON: `{"bucket", "ino", "notification", "topic", "queued_ms",
//! "record"}`, where `record` is one element of the S3 `Records` array. Each entry has its
//! own sequence number (its queue key), which is also its `sequencer` and, with the store's
//! id, its `eventId`: unique, increasing per object, and the same on every redelivery, so a
//! JetStream stream deduplicates by it.

pub mod config;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::error::{Error, Result};

pub use config::{Notification, Topic};

/// A completed change of one object, as an event describes it.
#[derive(Debug, Clone)]
pub struct Change {
    /// `ObjectCreated:Put`, `ObjectCreated:Copy` or `ObjectRemoved:Delete`.
    pub event: &'static str,
    pub bucket: String,
    pub bucket_owner: u32,
    pub bucket_id: u64,
    pub key: String,
    /// The object's inode: events of one inode are delivered in order.
    pub ino: u64,
    pub size: u64,
    /// MD5 hex of the content ("" for deletes).
    pub etag: String,
    /// uid of the process that made the change.
    pub uid: u32,
    /// The omap entries (values as UTF-8, lossily); None: read from the store when queued.
    pub metadata: Option<Vec<(String, String)>>,
    pub time: SystemTime,
}

/// The queued entry for `change` sent by notification `n` to `topic`, as sequence `seq`.
pub fn entry(change: &Change, n: &Notification, topic: &Topic, seq: u64, store_id: &str) -> Value {
    let event_id = format!("{seq:016x}.{store_id}");
    let metadata: Vec<Value> = change
        .metadata
        .iter()
        .flatten()
        .map(|(k, v)| json!({"key": k, "val": v}))
        .collect();
    let record = json!({
        "eventVersion": "2.2",
        "eventSource": "lunafs:s3",
        "awsRegion": "",
        "eventTime": iso8601(change.time),
        "eventName": change.event,
        "userIdentity": {"principalId": change.uid.to_string()},
        "requestParameters": {"sourceIPAddress": ""},
        "responseElements": {"x-amz-request-id": event_id, "x-amz-id-2": store_id},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": n.id,
            "bucket": {
                "name": change.bucket,
                "ownerIdentity": {"principalId": change.bucket_owner.to_string()},
                "arn": format!("arn:aws:s3:::{}", change.bucket),
                "id": change.bucket_id.to_string(),
            },
            "object": {
                "key": change.key,
                "size": change.size,
                "eTag": change.etag,
                "versionId": "",
                "sequencer": format!("{seq:016X}"),
                "metadata": metadata,
                "tags": [],
            },
        },
        "eventId": event_id,
        "opaqueData": topic.opaque_data,
    });
    json!({
        "bucket": change.bucket,
        "ino": change.ino,
        "notification": n.id,
        "topic": topic.name,
        "queued_ms": millis(change.time),
        "record": record,
    })
}

/// A queued entry, decoded and checked (the dispatcher and fsck read entries through this).
#[derive(Debug, Clone)]
pub struct Queued {
    pub bucket: String,
    pub ino: u64,
    pub notification: String,
    pub topic: String,
    pub queued_ms: u64,
    pub record: Value,
}

impl Queued {
    pub fn decode(bytes: &[u8]) -> Result<Queued> {
        let bad = |why: &str| Error::Corrupt(format!("queued event: {why}"));
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("no {k}")))
        };
        let num = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| bad(k));
        let q = Queued {
            bucket: text("bucket")?,
            ino: num("ino")?,
            notification: text("notification")?,
            topic: text("topic")?,
            queued_ms: num("queued_ms")?,
            record: v.get("record").cloned().ok_or_else(|| bad("no record"))?,
        };
        if q.event_id().is_empty() || q.record.pointer("/s3/object/key").is_none() {
            return Err(bad("record without eventId or key"));
        }
        Ok(q)
    }

    pub fn event_id(&self) -> &str {
        self.record
            .get("eventId")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The S3 notification body: `{"Records":[record]}`.
    pub fn json(&self) -> String {
        json!({"Records": [self.record]}).to_string()
    }
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-22T15:53:02.123Z`.
pub fn iso8601(t: SystemTime) -> String {
    let ms = millis(t);
    let (secs, ms) = ((ms / 1000) as i64, ms % 1000);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn iso8601_formats_utc_with_milliseconds() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_363_982_123);
        assert_eq!(iso8601(t), "2026-11-22T16:13:02.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn entries_round_trip_and_carry_the_record_fields() {
        let n = config::parse_notifications("b", "[[notification]]\nid=\"n1\"\ntopic=\"t\"")
            .unwrap()
            .remove(0);
        let topic = config::parse_topic(
            "t",
            "url=\"nats://127.0.0.1:1\"\nsubject=\"s\"\nopaque_data=\"x\"",
        )
        .unwrap();
        let change = Change {
            event: "ObjectCreated:Put",
            bucket: "b".into(),
            bucket_owner: 0,
            bucket_id: 2,
            key: "dir/f".into(),
            ino: 9,
            size: 3,
            etag: "900150983cd24fb0d6963f7d28e17f72".into(),
            uid: 1000,
            metadata: Some(vec![("color".into(), "red".into())]),
            time: SystemTime::now(),
        };
        let v = entry(&change, &n, &topic, 0x2a, "abcd");
        let q = Queued::decode(v.to_string().as_bytes()).unwrap();
        assert_eq!(q.event_id(), "000000000000002a.abcd");
        assert_eq!(q.ino, 9);
        let body: Value = serde_json::from_str(&q.json()).unwrap();
        let r = &body["Records"][0];
        assert_eq!(r["eventName"], "ObjectCreated:Put");
        assert_eq!(r["s3"]["object"]["key"], "dir/f");
        assert_eq!(r["s3"]["object"]["sequencer"], "000000000000002A");
        assert_eq!(r["s3"]["object"]["metadata"][0]["val"], "red");
        assert_eq!(r["userIdentity"]["principalId"], "1000");
        assert_eq!(r["opaqueData"], "x");
        assert!(Queued::decode(b"{\"bucket\":1}").is_err());
    }
}
