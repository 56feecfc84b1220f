//! `lunafs topic ...` and `lunafs notification ...`: bucket notification settings of a
//! mounted lunafs, written as the `/.lunafs` files they are (see `notify::config` for the
//! formats), so the mount validates them exactly as it does a file written by hand.

use std::fs;
use std::io::Write;
use std::path::Path;

use clap::Subcommand;

use super::calls::{chosen_mount, list, read_file, write_checked};
use crate::error::{Error, Result};

#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Add or replace topic NAME.
    Put {
        name: String,
        /// nats://HOST:PORT
        #[arg(long)]
        url: String,
        #[arg(long)]
        subject: String,
        /// Publish with JetStream (PubAck, Nats-Msg-Id = eventId for deduplication).
        #[arg(long)]
        jetstream: bool,
        /// Attempts after the first before an event is dropped (0: no limit).
        #[arg(long, default_value_t = 0)]
        max_retries: u32,
        /// Seconds an event may wait before it is dropped (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        time_to_live: f64,
        /// Seconds before the first retry (doubling up to a minute).
        #[arg(long, default_value_t = 1.0)]
        retry_sleep_duration: f64,
        #[arg(long, default_value = "")]
        opaque_data: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        token: Option<String>,
    },
    /// Print a topic's settings.
    Get { name: String },
    /// List the topics.
    Ls,
    /// Remove a topic (refused while a notification uses it).
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NotificationCmd {
    /// Add or replace notification ID of BUCKET: to a topic, or a trigger (--call).
    Put {
        bucket: String,
        id: String,
        /// The topic its events are published to.
        #[arg(long, required_unless_present = "call", conflicts_with = "call")]
        topic: Option<String>,
        /// CLASS.METHOD to run on the event's object instead (a trigger).
        #[arg(long)]
        call: Option<String>,
        /// The trigger's input.
        #[arg(long, requires = "call")]
        input: Option<String>,
        /// Event type or pattern (repeatable): ObjectCreated:Put, ObjectCreated:*, ...
        /// Default: every event type.
        #[arg(long = "event")]
        events: Vec<String>,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        suffix: Option<String>,
        #[arg(long)]
        regex: Option<String>,
        /// KEY=VALUE the object's omap must hold (repeatable).
        #[arg(long = "omap")]
        omap: Vec<String>,
    },
    /// Print BUCKET's notifications (TOML).
    Get { bucket: String },
    /// List the buckets with notifications.
    Ls,
    /// Remove notification ID of BUCKET.
    Rm { bucket: String, id: String },
    /// Install BUCKET's notification script from a Lua file (or remove it with --rm).
    Script {
        bucket: String,
        file: Option<std::path::PathBuf>,
        #[arg(long)]
        rm: bool,
    },
    /// Install the background script from a Lua file (or remove it with --rm).
    Background {
        file: Option<std::path::PathBuf>,
        #[arg(long)]
        rm: bool,
    },
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn print(path: &Path, what: &str) -> Result<()> {
    let text = fs::read(path).map_err(|e| Error::io(what.to_string(), e))?;
    std::io::stdout()
        .write_all(&text)
        .map_err(|e| Error::io("writing to standard output", e))
}

fn remove(path: &Path, what: &str) -> Result<()> {
    fs::remove_file(path).map_err(|e| Error::io(what.to_string(), e))
}

pub fn topic(action: TopicCmd, mount: Option<&Path>) -> Result<i32> {
    let dir = chosen_mount(mount)?.join(".lunafs/topics");
    let file = |name: &str| dir.join(format!("{name}.toml"));
    match action {
        TopicCmd::Put {
            name,
            url,
            subject,
            jetstream,
            max_retries,
            time_to_live,
            retry_sleep_duration,
            opaque_data,
            user,
            password,
            token,
        } => {
            let mut text = format!(
                "url = {}\nsubject = {}\njetstream = {jetstream}\nmax_retries = {max_retries}\n\
                 time_to_live = {time_to_live:?}\nretry_sleep_duration = {retry_sleep_duration:?}\n\
                 opaque_data = {}\n",
                toml_string(&url),
                toml_string(&subject),
                toml_string(&opaque_data)
            );
            for (k, v) in [("user", user), ("password", password), ("token", token)] {
                if let Some(v) = v {
                    text.push_str(&format!("{k} = {}\n", toml_string(&v)));
                }
            }
            crate::notify::config::parse_topic(&name, &text)?;
            write_checked(&file(&name), text.as_bytes())?;
        }
        TopicCmd::Get { name } => print(&file(&name), &format!("topic {name}"))?,
        TopicCmd::Ls => {
            for n in list(&dir)? {
                println!("{}", n.strip_suffix(".toml").unwrap_or(&n));
            }
        }
        TopicCmd::Rm { name } => remove(&file(&name), &format!("topic {name}"))?,
    }
    Ok(0)
}

pub fn notification(action: NotificationCmd, mount: Option<&Path>) -> Result<i32> {
    let root = chosen_mount(mount)?.join(".lunafs");
    let file = |bucket: &str| root.join(format!("notifications/{bucket}.toml"));
    let current = |bucket: &str| -> Result<toml::Table> {
        match fs::read_to_string(file(bucket)) {
            Ok(text) => text
                .parse::<toml::Table>()
                .map_err(|e| Error::Usage(format!("notifications of {bucket}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
            Err(e) => Err(Error::io(format!("notifications of {bucket}"), e)),
        }
    };
    let list_of = |t: &mut toml::Table| -> Vec<toml::Value> {
        match t.remove("notification") {
            Some(toml::Value::Array(a)) => a,
            _ => Vec::new(),
        }
    };
    let id_of = |v: &toml::Value| v.get("id").and_then(|i| i.as_str()).map(str::to_string);
    let store = |bucket: &str, mut t: toml::Table, items: Vec<toml::Value>| -> Result<()> {
        t.insert("notification".into(), toml::Value::Array(items));
        let text = toml::to_string(&t).map_err(|e| Error::Usage(e.to_string()))?;
        crate::notify::config::parse_notifications(bucket, &text)?;
        write_checked(&file(bucket), text.as_bytes())
    };
    match action {
        NotificationCmd::Put {
            bucket,
            id,
            topic,
            call,
            input,
            events,
            prefix,
            suffix,
            regex,
            omap,
        } => {
            let mut n = toml::Table::new();
            n.insert("id".into(), id.clone().into());
            for (k, v) in [("topic", topic), ("call", call), ("input", input)] {
                if let Some(v) = v {
                    n.insert(k.into(), v.into());
                }
            }
            if !events.is_empty() {
                n.insert("events".into(), events.into());
            }
            for (k, v) in [("prefix", prefix), ("suffix", suffix), ("regex", regex)] {
                if let Some(v) = v {
                    n.insert(k.into(), v.into());
                }
            }
            if !omap.is_empty() {
                let mut m = toml::Table::new();
                for kv in omap {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| Error::Usage(format!("--omap {kv:?}: use KEY=VALUE")))?;
                    m.insert(k.into(), v.into());
                }
                n.insert("omap".into(), m.into());
            }
            let mut t = current(&bucket)?;
            let mut items: Vec<toml::Value> = list_of(&mut t)
                .into_iter()
                .filter(|v| id_of(v).as_deref() != Some(&id))
                .collect();
            items.push(n.into());
            store(&bucket, t, items)?;
        }
        NotificationCmd::Get { bucket } => {
            print(&file(&bucket), &format!("notifications of {bucket}"))?
        }
        NotificationCmd::Ls => {
            for n in list(&root.join("notifications"))? {
                println!("{}", n.strip_suffix(".toml").unwrap_or(&n));
            }
        }
        NotificationCmd::Rm { bucket, id } => {
            let mut t = current(&bucket)?;
            let items = list_of(&mut t);
            let before = items.len();
            let items: Vec<toml::Value> = items
                .into_iter()
                .filter(|v| id_of(v).as_deref() != Some(&id))
                .collect();
            if items.len() == before {
                return Err(Error::NotFound(format!("notification {id} of {bucket}")));
            }
            store(&bucket, t, items)?;
        }
        NotificationCmd::Script { bucket, file, rm } => {
            let path = root.join(format!("notify/{bucket}.lua"));
            install(&path, file.as_deref(), rm, &format!("script of {bucket}"))?;
        }
        NotificationCmd::Background { file, rm } => {
            install(
                &root.join("background.lua"),
                file.as_deref(),
                rm,
                "background script",
            )?;
        }
    }
    Ok(0)
}

/// Writes a script file from `file`, or removes it with `rm`.
fn install(path: &Path, file: Option<&Path>, rm: bool, what: &str) -> Result<()> {
    match (file, rm) {
        (None, true) => remove(path, what),
        (Some(f), false) => {
            let source = read_file(f)?;
            crate::lua::Engine::check(&f.display().to_string(), &source)?;
            write_checked(path, &source)
        }
        _ => Err(Error::Usage(format!("{what}: give a FILE or --rm"))),
    }
}
