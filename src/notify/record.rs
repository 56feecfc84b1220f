//! The record an event is published as: Ceph RGW's S3-compatible notification record, built
//! from a queued event when it is delivered. Its `sequencer` is the queue entry's number
//! (increasing per object and overall) and its `eventId` that number and the store's random
//! id: unique, and the same on every redelivery, so a JetStream stream deduplicates by it.
//! Keys and omap values that are not UTF-8 are shown lossily.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::store::codec::events::QueuedEvent;

/// The eventId of queue entry `seq` of the store `store_id`.
pub fn event_id(seq: u64, store_id: &str) -> String {
    format!("{seq:016x}.{store_id}")
}

/// The S3 record of queue entry `seq`; `opaque_data` is the topic's.
pub fn record(e: &QueuedEvent, seq: u64, store_id: &str, opaque_data: &str) -> Value {
    let id = event_id(seq, store_id);
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let metadata: Vec<Value> = e
        .metadata
        .iter()
        .map(|(k, v)| json!({"key": lossy(k), "val": lossy(v)}))
        .collect();
    json!({
        "eventVersion": "2.2",
        "eventSource": "lunafs:s3",
        "awsRegion": "",
        "eventTime": iso8601(e.time_ms),
        "eventName": e.kind.name(),
        "userIdentity": {"principalId": e.uid.to_string()},
        "requestParameters": {"sourceIPAddress": ""},
        "responseElements": {"x-amz-request-id": id, "x-amz-id-2": store_id},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": e.notification,
            "bucket": {
                "name": e.bucket,
                "ownerIdentity": {"principalId": e.bucket_owner.to_string()},
                "arn": format!("arn:aws:s3:::{}", e.bucket),
                "id": e.bucket_id.to_string(),
            },
            "object": {
                "key": lossy(&e.key),
                "size": e.size,
                "eTag": e.etag,
                "versionId": "",
                "sequencer": format!("{seq:016X}"),
                "metadata": metadata,
                "tags": [],
            },
        },
        "eventId": id,
        "opaqueData": opaque_data,
    })
}

/// The notification body: `{"Records":[record]}`.
pub fn body(record: &Value) -> String {
    json!({"Records": [record]}).to_string()
}

/// `2026-11-22T15:53:02.123Z`.
pub fn iso8601(ms: u64) -> String {
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

/// Milliseconds since the epoch of `t`.
pub fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::events::EventKind;

    #[test]
    fn iso8601_formats_utc_with_milliseconds() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_795_363_982_123), "2026-11-22T16:13:02.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn records_carry_cephs_fields() {
        let e = QueuedEvent {
            kind: EventKind::Copy,
            ino: 5,
            bucket: "photos".into(),
            bucket_id: 3,
            bucket_owner: 0,
            key: b"a/b.jpg".to_vec(),
            size: 9,
            etag: "e".into(),
            uid: 1000,
            time_ms: 0,
            metadata: vec![(b"color".to_vec(), b"red".to_vec())],
            notification: "n1".into(),
            target: "t".into(),
        };
        let r = record(&e, 0x2a, "abc", "od");
        assert_eq!(r["eventName"], "ObjectCreated:Copy");
        assert_eq!(r["eventId"], "000000000000002a.abc");
        assert_eq!(r["s3"]["object"]["sequencer"], "000000000000002A");
        assert_eq!(r["s3"]["object"]["key"], "a/b.jpg");
        assert_eq!(r["s3"]["object"]["metadata"][0]["val"], "red");
        assert_eq!(r["s3"]["configurationId"], "n1");
        assert_eq!(r["userIdentity"]["principalId"], "1000");
        assert_eq!(r["opaqueData"], "od");
        assert!(body(&r).starts_with("{\"Records\":[{"));
    }
}
