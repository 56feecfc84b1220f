//! The notification settings in force, parsed from the text core stores, and the routing
//! core asks for on every change in a watched bucket (`Subscriptions`): which notifications
//! want the change, by event type, key filters and omap filters, never the one whose
//! trigger made it. A setting is checked before core stores it; every change of the
//! settings replaces them whole.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::config::{self, Notification, Target, Topic};
use super::nats::{check_stream, StreamCheck};
use crate::core::events::{Change, OmapGet, Route, Setting, Subscriptions};
use crate::error::{Error, Result};
use crate::lua::{Engine, Script};

/// The settings in force.
#[derive(Default)]
pub struct Settings {
    pub topics: BTreeMap<String, Topic>,
    pub buckets: BTreeMap<String, Vec<Notification>>,
    pub scripts: BTreeMap<String, Arc<Script>>,
    pub background: Option<Arc<Script>>,
}

impl Settings {
    /// Notification `id` of `bucket`.
    pub fn notification(&self, bucket: &str, id: &str) -> Option<&Notification> {
        self.buckets.get(bucket)?.iter().find(|n| n.id == id)
    }
}

#[derive(Default)]
pub struct Routes {
    settings: RwLock<Arc<Settings>>,
    generation: AtomicU64,
}

impl Routes {
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().clone()
    }

    /// A script, keeping the compiled copy's generation while its source is unchanged.
    fn script(&self, old: Option<&Arc<Script>>, name: String, source: &[u8]) -> Arc<Script> {
        match old {
            Some(s) if &*s.source == source => s.clone(),
            _ => Arc::new(Script {
                name,
                generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
                source: source.into(),
            }),
        }
    }
}

fn utf8<'a>(setting: &Setting, text: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(text)
        .map_err(|_| Error::InvalidArgument(format!("{}: not UTF-8", setting.describe())))
}

/// A JetStream topic must have a stream for its subject, if its server can tell.
fn check_jetstream(topic: &Topic) -> Result<()> {
    match check_stream(topic) {
        StreamCheck::Captured(_) => Ok(()),
        StreamCheck::NoStream => Err(Error::InvalidArgument(format!(
            "topic {}: no JetStream stream on {} captures subject {:?} (add one, or set \
             jetstream = false)",
            topic.name, topic.url, topic.subject
        ))),
        StreamCheck::Unreachable(why) => {
            tracing::warn!(topic = %topic.name, url = %topic.url, error = %why,
                "JetStream topic stored unchecked: its server did not answer; events wait for it");
            Ok(())
        }
    }
}

impl Subscriptions for Routes {
    fn watches(&self, bucket: &str) -> bool {
        self.settings
            .read()
            .buckets
            .get(bucket)
            .is_some_and(|l| !l.is_empty())
    }

    fn routes(&self, change: &Change, omap: &OmapGet<'_>) -> Result<Vec<Route>> {
        let settings = self.settings();
        let Some(list) = settings.buckets.get(&change.bucket) else {
            return Ok(Vec::new());
        };
        let mut routes = Vec::new();
        for n in list {
            if change.cause.as_deref() == Some(n.id.as_str())
                || !n.wants(change.kind, &change.key)
                || !n.omap_matches(omap)?
            {
                continue;
            }
            if let Some(topic) = n.target.topic() {
                if !settings.topics.contains_key(topic) {
                    tracing::error!(notification = %n.id, topic,
                        "notification names a missing topic; event not queued");
                    continue;
                }
            }
            routes.push(Route {
                notification: n.id.clone(),
                target: n.target.queued_as(),
            });
        }
        Ok(routes)
    }

    fn check_put(&self, setting: &Setting, text: &[u8]) -> Result<()> {
        match setting {
            Setting::Topic(name) => {
                let topic = config::parse_topic(name, utf8(setting, text)?)?;
                if topic.jetstream {
                    check_jetstream(&topic)?;
                }
            }
            Setting::Notifications(bucket) => {
                let settings = self.settings();
                for n in config::parse_notifications(bucket, utf8(setting, text)?)? {
                    if let Target::Topic(t) = &n.target {
                        if !settings.topics.contains_key(t) {
                            return Err(Error::InvalidArgument(format!(
                                "notification {} of bucket {bucket}: no topic {t:?} (add it first)",
                                n.id
                            )));
                        }
                    }
                }
            }
            Setting::Script(bucket) => Engine::check(&format!("notify/{bucket}.lua"), text)?,
            Setting::Background => Engine::check("background.lua", text)?,
        }
        Ok(())
    }

    fn check_remove(&self, setting: &Setting) -> Result<()> {
        let Setting::Topic(topic) = setting else {
            return Ok(());
        };
        let settings = self.settings();
        let user = settings.buckets.iter().find_map(|(b, list)| {
            list.iter()
                .find(|n| n.target.topic() == Some(topic.as_str()))
                .map(|n| (b, n))
        });
        match user {
            Some((bucket, n)) => Err(Error::Busy(format!(
                "topic {topic}: notification {} of bucket {bucket} uses it",
                n.id
            ))),
            None => Ok(()),
        }
    }

    /// Stored settings were checked when written; one that no longer parses (damage) is
    /// logged and skipped rather than stopping the mount.
    fn load(&self, stored: &[(Setting, Vec<u8>)]) {
        let old = self.settings();
        let mut s = Settings::default();
        for (setting, text) in stored {
            let text_str = String::from_utf8_lossy(text);
            match setting {
                Setting::Topic(name) => match config::parse_topic(name, &text_str) {
                    Ok(t) => {
                        s.topics.insert(name.clone(), t);
                    }
                    Err(e) => tracing::error!(error = %e, "skipping a stored topic"),
                },
                Setting::Notifications(bucket) => {
                    match config::parse_notifications(bucket, &text_str) {
                        Ok(list) => {
                            s.buckets.insert(bucket.clone(), list);
                        }
                        Err(e) => tracing::error!(error = %e, "skipping stored notifications"),
                    }
                }
                Setting::Script(bucket) => {
                    let name = format!("notify/{bucket}.lua");
                    let script = self.script(old.scripts.get(bucket), name, text);
                    s.scripts.insert(bucket.clone(), script);
                }
                Setting::Background => {
                    let name = "background.lua".to_string();
                    s.background = Some(self.script(old.background.as_ref(), name, text));
                }
            }
        }
        *self.settings.write() = Arc::new(s);
    }
}
