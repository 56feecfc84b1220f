//! Running a bucket's notification script for one event, and the background script: what
//! they can reach outside their VM (`ScriptCtx`: the global table through core, and an
//! outbox of messages published only if the script returns without error). Without a script
//! the built-in default publishes the record as JSON to the topic's subject.

use std::sync::Arc;

use serde_json::{json, Value};

use super::config::Topic;
use super::nats::Msg;
use super::routes::Settings;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::lua::{Notifier, NotifyRun, Script, TableValue};
use crate::store::codec::events::GlobalValue;

/// What a running script can reach: the global table (through core) and its outbox.
struct ScriptCtx<'a> {
    core: &'a Core,
    settings: &'a Settings,
    default_topic: Option<&'a str>,
    messages: Vec<Msg>,
}

impl Notifier for ScriptCtx<'_> {
    fn publish(
        &mut self,
        subject: &str,
        payload: &[u8],
        headers: Vec<(String, String)>,
        topic: Option<&str>,
    ) -> Result<()> {
        let topic = topic.or(self.default_topic).ok_or_else(|| {
            Error::InvalidArgument(
                "nats.publish: name a topic (4th argument) in the background script".into(),
            )
        })?;
        if !self.settings.topics.contains_key(topic) {
            return Err(Error::NotFound(format!("nats.publish: topic {topic}")));
        }
        if subject.is_empty() || subject.contains(char::is_whitespace) {
            return Err(Error::InvalidArgument(format!(
                "nats.publish: subject {subject:?}"
            )));
        }
        self.messages.push(Msg {
            topic: topic.to_string(),
            subject: subject.to_string(),
            payload: payload.to_vec(),
            headers,
        });
        Ok(())
    }

    fn table_get(&mut self, key: &str) -> Result<Option<TableValue>> {
        Ok(self.core.global_get(key)?.map(to_script))
    }

    fn table_set(&mut self, key: &str, value: Option<TableValue>) -> Result<()> {
        self.core.global_set(key, value.map(to_stored))
    }

    fn table_add(&mut self, key: &str, delta: f64) -> Result<TableValue> {
        Ok(to_script(self.core.global_add(key, delta)?))
    }
}

fn to_script(v: GlobalValue) -> TableValue {
    match v {
        GlobalValue::Str(s) => TableValue::Str(s),
        GlobalValue::Int(i) => TableValue::Int(i),
        GlobalValue::Num(n) => TableValue::Num(n),
        GlobalValue::Bool(b) => TableValue::Bool(b),
    }
}

fn to_stored(v: TableValue) -> GlobalValue {
    match v {
        TableValue::Str(s) => GlobalValue::Str(s),
        TableValue::Int(i) => GlobalValue::Int(i),
        TableValue::Num(n) => GlobalValue::Num(n),
        TableValue::Bool(b) => GlobalValue::Bool(b),
    }
}

/// The messages for one event bound for `topic`: the bucket's script's, or the default.
/// Err is the script's error message.
pub fn event_messages(
    core: &Core,
    settings: &Settings,
    script: Option<&Arc<Script>>,
    record: &Value,
    topic: &Topic,
) -> std::result::Result<Vec<Msg>, String> {
    let body = super::record::body(record);
    let Some(script) = script else {
        return Ok(vec![Msg {
            topic: topic.name.clone(),
            subject: topic.subject.clone(),
            payload: body.into_bytes(),
            headers: Vec::new(),
        }]);
    };
    let topic_table = json!({
        "name": topic.name, "subject": topic.subject,
        "jetstream": topic.jetstream, "opaque_data": topic.opaque_data,
    });
    let run = NotifyRun {
        script,
        event: Some(record),
        event_json: Some(&body),
        topic: Some(&topic_table),
    };
    run_script(core, settings, &run, Some(&topic.name))
}

/// The messages of one run of the background script.
pub fn background_messages(
    core: &Core,
    settings: &Settings,
    script: &Arc<Script>,
) -> std::result::Result<Vec<Msg>, String> {
    let run = NotifyRun {
        script,
        event: None,
        event_json: None,
        topic: None,
    };
    run_script(core, settings, &run, None)
}

fn run_script(
    core: &Core,
    settings: &Settings,
    run: &NotifyRun<'_>,
    default_topic: Option<&str>,
) -> std::result::Result<Vec<Msg>, String> {
    let mut ctx = ScriptCtx {
        core,
        settings,
        default_topic,
        messages: Vec::new(),
    };
    core.run_script(run, &mut ctx)?;
    Ok(ctx.messages)
}
