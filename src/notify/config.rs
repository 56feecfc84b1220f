//! Topics and per-bucket notifications: their TOML text (as written to `/.lunafs` files and
//! by the CLI), parsed and validated into typed settings, and the matching of an event
//! against a notification's event types and filters.
//!
//! ```toml
//! # /.lunafs/topics/NAME.toml
//! url = "nats://127.0.0.1:4222"       # required; nats:// only
//! subject = "lunafs.events"          # required
//! user = "u"  password = "p"  token = "t"   # optional credentials
//! jetstream = false                   # publish with a PubAck and Nats-Msg-Id = eventId
//! persistent = true                   # always: events are queued in the store
//! max_retries = 0                     # 0: retry until delivered
//! time_to_live = 0                    # seconds an event may wait; 0: no limit
//! retry_sleep_duration = 1            # seconds before the first retry (doubling, max 60)
//! opaque_data = ""                    # copied into each record
//!
//! # /.lunafs/notifications/BUCKET.toml
//! [[notification]]
//! id = "images"                       # required, unique in the bucket
//! topic = "NAME"                      # an existing topic, or:
//! call = "thumb.make"  input = "200x150"   # a trigger: an object-class method run in place
//! max_retries = 3  retry_sleep_duration = 1   # a failed trigger: tries again (0: forever)
//! events = ["ObjectCreated:*"]        # default: every event type
//! prefix = "img/"  suffix = ".jpg"  regex = "^img/[0-9]+"   # key filters, all optional
//! omap = { color = "red" }            # the object's omap must hold these values
//! ```
//!
//! A topic's URL is parsed into a server address when the topic is written, so delivery
//! never meets one it cannot use.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::ServerAddr;
use regex::Regex;

use crate::core::events::EventKind;
use crate::error::{Error, Result};

/// A named NATS destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    pub name: String,
    /// The URL as written (for logs and stats).
    pub url: String,
    /// The server it names, parsed when the topic was written.
    pub addr: ServerAddr,
    pub subject: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub jetstream: bool,
    /// How its failed events are retried (max_retries 0: until time_to_live, if any).
    pub retry: Retry,
    pub time_to_live: Option<Duration>,
    pub opaque_data: String,
}

impl Topic {
    /// The connection this topic publishes on: topics with the same server and credentials
    /// share one.
    pub fn connection_key(&self) -> String {
        format!(
            "{}\0{}\0{}\0{}",
            self.url,
            self.user.as_deref().unwrap_or(""),
            self.password.as_deref().unwrap_or(""),
            self.token.as_deref().unwrap_or("")
        )
    }
}

/// Where a notification sends what it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Publish the event to a topic.
    Topic(String),
    /// Run an object-class method on the event's object (a trigger).
    Call {
        class: String,
        method: String,
        input: Vec<u8>,
    },
}

/// How a failed event is retried (a trigger's by its notification, a topic's by the topic):
/// `max_retries` times (0: forever), after a wait doubling from `retry_sleep` up to a minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    pub max_retries: u32,
    pub retry_sleep: Duration,
}

impl Retry {
    /// What a notification with a topic has (its topic decides).
    fn default_for_topic() -> Retry {
        Retry {
            max_retries: 3,
            retry_sleep: Duration::from_secs(1),
        }
    }

    /// The wait before retry number `attempt` (1-based): doubling from retry_sleep, at most
    /// a minute.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        (self.retry_sleep * factor).min(Duration::from_secs(60))
    }
}

impl Target {
    /// How the queue names it: the topic, or `call:CLASS.METHOD`.
    pub fn queued_as(&self) -> String {
        match self {
            Target::Topic(t) => t.clone(),
            Target::Call { class, method, .. } => format!("call:{class}.{method}"),
        }
    }

    pub fn topic(&self) -> Option<&str> {
        match self {
            Target::Topic(t) => Some(t),
            Target::Call { .. } => None,
        }
    }
}

/// One notification of a bucket.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: String,
    pub target: Target,
    /// For a trigger: how a failed call is retried.
    pub retry: Retry,
    /// Event type patterns: `ObjectCreated:Put`, `ObjectCreated:*`, `*`.
    pub events: Vec<String>,
    pub prefix: String,
    pub suffix: String,
    pub regex: Option<Regex>,
    pub omap: BTreeMap<String, String>,
}

impl Notification {
    /// Whether the notification wants this event type for this key (omap filters aside).
    pub fn wants(&self, event: EventKind, key: &[u8]) -> bool {
        self.events.iter().any(|p| type_matches(p, event.name()))
            && key.starts_with(self.prefix.as_bytes())
            && key.ends_with(self.suffix.as_bytes())
            && self
                .regex
                .as_ref()
                .is_none_or(|r| r.is_match(&String::from_utf8_lossy(key)))
    }

    /// Whether the object's omap (looked up by key) satisfies the omap filters.
    pub fn omap_matches(&self, get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>>) -> Result<bool> {
        for (k, want) in &self.omap {
            if get(k.as_bytes())?.as_deref() != Some(want.as_bytes()) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// `ObjectCreated:*` matches every `ObjectCreated:` type; `*` matches all.
fn type_matches(pattern: &str, event: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event.starts_with(prefix),
        None => pattern == event,
    }
}

fn table(text: &str, what: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>()
        .map_err(|e| Error::InvalidArgument(format!("{what}: {}", e.message())))
}

/// Reads the fields of one TOML table, refusing unknown and mistyped ones by name.
struct Fields<'a> {
    what: String,
    table: &'a toml::Table,
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(what: String, table: &'a toml::Table) -> Self {
        Fields {
            what,
            table,
            known: Vec::new(),
        }
    }

    fn bad(&self, field: &str, why: &str) -> Error {
        Error::InvalidArgument(format!("{}: {field}: {why}", self.what))
    }

    fn get(&mut self, field: &'static str) -> Option<&'a toml::Value> {
        self.known.push(field);
        self.table.get(field)
    }

    fn string(&mut self, field: &'static str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(field, "expected a string")),
        }
    }

    fn required(&mut self, field: &'static str) -> Result<String> {
        match self.string(field)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.bad(field, "required")),
        }
    }

    fn bool(&mut self, field: &'static str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(_) => Err(self.bad(field, "expected true or false")),
        }
    }

    fn seconds(&mut self, field: &'static str) -> Result<Option<f64>> {
        let v = match self.get(field) {
            None => return Ok(None),
            Some(toml::Value::Integer(n)) => *n as f64,
            Some(toml::Value::Float(f)) => *f,
            Some(_) => return Err(self.bad(field, "expected a number")),
        };
        if !(0.0..=1e9).contains(&v) {
            return Err(self.bad(field, "must be between 0 and 1e9"));
        }
        Ok(Some(v))
    }

    /// Refuses fields no getter asked for (typos would otherwise be silently ignored).
    fn finish(self) -> Result<()> {
        match self
            .table
            .keys()
            .find(|k| !self.known.contains(&k.as_str()))
        {
            Some(k) => Err(Error::InvalidArgument(format!(
                "{}: unknown field {k:?} (known: {})",
                self.what,
                self.known.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

/// A topic's server address, checked when the topic is written so the dispatcher never
/// meets one it cannot connect to: `nats://HOST[:PORT]` (port 1-65535, 4222 by default).
fn nats_url(f: &Fields<'_>, url: &str) -> Result<ServerAddr> {
    let bad = |why: &str| f.bad("url", &format!("{url:?}: {why}"));
    let Some(rest) = url.strip_prefix("nats://") else {
        return Err(bad("expected nats://HOST:PORT"));
    };
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        // An IPv6 address: [::1] or [::1]:4222.
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, p.strip_prefix(':').or(Some("x"))),
            None => ("", None),
        },
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    if host.is_empty() || host.contains(['/', ' ', ',']) {
        return Err(bad("expected nats://HOST:PORT with a host name or address"));
    }
    if let Some(p) = port {
        if !p.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(bad("the port must be a number from 1 to 65535"));
        }
    }
    url.parse::<ServerAddr>().map_err(|e| bad(&e.to_string()))
}

/// Parses topic `name` from its TOML text.
pub fn parse_topic(name: &str, text: &str) -> Result<Topic> {
    check_name(name, "topic")?;
    let what = format!("topic {name}");
    let t = table(text, &what)?;
    let mut f = Fields::new(what, &t);
    let url = f.required("url")?;
    let addr = nats_url(&f, &url)?;
    let topic = Topic {
        name: name.to_string(),
        url,
        addr,
        subject: f.required("subject")?,
        user: f.string("user")?,
        password: f.string("password")?,
        token: f.string("token")?,
        jetstream: f.bool("jetstream", false)?,
        retry: Retry {
            max_retries: f.seconds("max_retries")?.map_or(0, |n| n as u32),
            retry_sleep: Duration::from_secs_f64(f.seconds("retry_sleep_duration")?.unwrap_or(1.0)),
        },
        time_to_live: f
            .seconds("time_to_live")?
            .filter(|&s| s > 0.0)
            .map(Duration::from_secs_f64),
        opaque_data: f.string("opaque_data")?.unwrap_or_default(),
    };
    if !f.bool("persistent", true)? {
        return Err(f.bad(
            "persistent",
            "lunafs queues every event in the store; false is not supported",
        ));
    }
    f.finish()?;
    Ok(topic)
}

/// Parses the notifications of `bucket` from its TOML text.
pub fn parse_notifications(bucket: &str, text: &str) -> Result<Vec<Notification>> {
    let what = format!("notifications of {bucket}");
    let t = table(text, &what)?;
    let mut f = Fields::new(what.clone(), &t);
    let list = match f.get("notification") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items.clone(),
        Some(_) => return Err(f.bad("notification", "expected [[notification]] tables")),
    };
    f.finish()?;
    let mut out: Vec<Notification> = Vec::new();
    for item in &list {
        let toml::Value::Table(item) = item else {
            return Err(Error::InvalidArgument(format!(
                "{what}: expected [[notification]] tables"
            )));
        };
        let n = parse_notification(&what, item)?;
        if out.iter().any(|o| o.id == n.id) {
            return Err(Error::InvalidArgument(format!(
                "{what}: id {:?} is used twice",
                n.id
            )));
        }
        out.push(n);
    }
    Ok(out)
}

fn parse_notification(what: &str, t: &toml::Table) -> Result<Notification> {
    let mut f = Fields::new(what.to_string(), t);
    let id = f.required("id")?;
    f.what = format!("{what}: notification {id}");
    check_name(&id, "notification id")?;
    let target = target(&mut f)?;
    let events = match f.get("events") {
        None => vec!["*".to_string()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                toml::Value::String(s) if known_pattern(s) => Ok(s.clone()),
                _ => Err(f.bad(
                    "events",
                    &format!(
                        "{v} is not one of {:?} or a pattern like ObjectCreated:*",
                        EventKind::ALL.map(EventKind::name)
                    ),
                )),
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(f.bad("events", "expected a list of event types")),
    };
    let regex = match f.string("regex")? {
        Some(r) => Some(Regex::new(&r).map_err(|e| f.bad("regex", &e.to_string()))?),
        None => None,
    };
    let omap = match f.get("omap") {
        None => BTreeMap::new(),
        Some(toml::Value::Table(m)) => m
            .iter()
            .map(|(k, v)| match v {
                toml::Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(f.bad("omap", &format!("{k}: expected a string value"))),
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(f.bad("omap", "expected a table of key = \"value\"")),
    };
    let retry = Retry {
        max_retries: f.seconds("max_retries")?.map_or(3, |n| n as u32),
        retry_sleep: Duration::from_secs_f64(f.seconds("retry_sleep_duration")?.unwrap_or(1.0)),
    };
    if matches!(target, Target::Topic(_)) && retry != Retry::default_for_topic() {
        return Err(f.bad(
            "max_retries",
            "retries of a topic's events are the topic's settings",
        ));
    }
    let n = Notification {
        id,
        target,
        retry,
        events,
        prefix: f.string("prefix")?.unwrap_or_default(),
        suffix: f.string("suffix")?.unwrap_or_default(),
        regex,
        omap,
    };
    f.finish()?;
    Ok(n)
}

fn known_pattern(p: &str) -> bool {
    EventKind::ALL.iter().any(|t| type_matches(p, t.name()))
}

/// `topic = "T"`, or `call = "CLASS.METHOD"` with an optional `input`: exactly one.
fn target(f: &mut Fields<'_>) -> Result<Target> {
    let topic = f.string("topic")?;
    let call = f.string("call")?;
    let input = f.string("input")?;
    match (topic, call) {
        (Some(t), None) if input.is_none() => Ok(Target::Topic(t)),
        (Some(_), None) => Err(f.bad("input", "only a call takes an input")),
        (None, Some(c)) => {
            let (class, method) = c
                .split_once('.')
                .filter(|(c, m)| !c.is_empty() && !m.is_empty())
                .ok_or_else(|| f.bad("call", &format!("{c:?} is not CLASS.METHOD")))?;
            crate::core::class::check_class_name(class)?;
            Ok(Target::Call {
                class: class.to_string(),
                method: method.to_string(),
                input: input.unwrap_or_default().into_bytes(),
            })
        }
        (Some(_), Some(_)) => Err(f.bad("call", "a notification has a topic or a call, not both")),
        (None, None) => Err(f.bad("topic", "missing (or a call)")),
    }
}

/// Topic names and notification ids become file names and NATS-facing ids: a safe set.
pub fn check_name(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} {name:?}: use 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_with_defaults_and_refuse_unknown_fields() {
        let t = parse_topic("t1", "url = \"nats://127.0.0.1:4222\"\nsubject = \"s\"\n").unwrap();
        assert_eq!(t.retry.max_retries, 0);
        assert_eq!(t.retry.retry_sleep, Duration::from_secs(1));
        assert!(!t.jetstream && t.time_to_live.is_none());
        assert_eq!(t.retry.backoff(1), Duration::from_secs(1));
        assert_eq!(t.retry.backoff(3), Duration::from_secs(4));
        assert_eq!(t.retry.backoff(30), Duration::from_secs(60));
        let e = parse_topic(
            "t1",
            "url = \"nats://h:1\"\nsubject = \"s\"\nsubjct = \"x\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field \"subjct\""), "{e}");
        for bad in [
            "nats://h:99999",
            "nats://h:0",
            "nats://h:x",
            "nats://:4222",
            "nats://a b:1",
        ] {
            let e = parse_topic("t1", &format!("url = {bad:?}\nsubject = \"s\"\n")).unwrap_err();
            assert!(e.to_string().contains("url"), "{bad}: {e}");
            assert_eq!(e.errno(), libc::EINVAL);
        }
        let e = parse_topic("t1", "url = \"http://h\"\nsubject = \"s\"\n").unwrap_err();
        assert!(e.to_string().contains("nats://"), "{e}");
        assert!(parse_topic("../x", "").is_err());
    }

    #[test]
    fn notifications_match_types_keys_and_omap() {
        let list = parse_notifications(
            "b",
            r#"
[[notification]]
id = "n1"
topic = "t"
events = ["ObjectCreated:*"]
prefix = "img/"
suffix = ".jpg"
regex = "^img/[0-9]+"
omap = { color = "red" }
"#,
        )
        .unwrap();
        let n = &list[0];
        use EventKind::*;
        assert_eq!(n.target, Target::Topic("t".into()));
        assert!(n.wants(Put, b"img/12.jpg"));
        assert!(n.wants(Copy, b"img/12.jpg"));
        assert!(!n.wants(Delete, b"img/12.jpg"));
        assert!(!n.wants(MetadataSet, b"img/12.jpg"));
        assert!(!n.wants(Put, b"img/x.jpg"));
        assert!(!n.wants(Put, b"img/12.png"));
        let red = |k: &[u8]| Ok((k == b"color").then(|| b"red".to_vec()));
        assert!(n.omap_matches(red).unwrap());
        assert!(!n.omap_matches(|_| Ok(Some(b"blue".to_vec()))).unwrap());
        assert!(!n.omap_matches(|_| Ok(None)).unwrap());
        let e = parse_notifications(
            "b",
            "[[notification]]\nid=\"a\"\ntopic=\"t\"\nevents=[\"Bogus\"]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("Bogus"), "{e}");
        let e = parse_notifications(
            "b",
            "[[notification]]\nid=\"a\"\ntopic=\"t\"\n[[notification]]\nid=\"a\"\ntopic=\"t\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
    }

    #[test]
    fn a_notification_has_a_topic_or_a_call() {
        let list = parse_notifications(
            "b",
            "[[notification]]\nid = \"t\"\ncall = \"thumb.make\"\ninput = \"200x150\"\nevents = [\"ObjectMetadata:Set\"]",
        )
        .unwrap();
        let want = Target::Call {
            class: "thumb".into(),
            method: "make".into(),
            input: b"200x150".to_vec(),
        };
        assert_eq!(list[0].target, want);
        assert_eq!(list[0].target.queued_as(), "call:thumb.make");
        for bad in [
            "topic = \"x\"\ncall = \"a.b\"",
            "call = \"nomethod\"",
            "topic = \"x\"\ninput = \"i\"",
            "",
        ] {
            let text = format!("[[notification]]\nid = \"n\"\n{bad}");
            assert!(parse_notifications("b", &text).is_err(), "{bad}");
        }
    }
}
