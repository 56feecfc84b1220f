//! NATS for the dispatcher: one connection per server and credentials, made on first use,
//! held for the mount's life and reconnected by async-nats on its own (named `lunafs` in the
//! server's `/connz`); publishing a round's messages (core NATS into the connection's
//! buffer, JetStream with a PubAck to wait for); flushing and waiting. All of it runs on a
//! small tokio runtime owned here, driven from the dispatcher's thread.
//!
//! Also the check made when a JetStream topic is written: whether a stream on its server
//! captures its subject.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::{Client, ConnectOptions, HeaderMap};

use super::config::Topic;
use crate::error::{Error, Result};

/// How long a flush or a PubAck may take before the messages count as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a topic check waits for its server.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A message a script asked for (or the default one).
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub subject: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// What a round sent for one event, still to be flushed or acknowledged.
#[derive(Default)]
pub struct Outgoing {
    pub acks: Vec<PublishAckFuture>,
    /// Connections (by `Topic::connection_key`) with core NATS messages to flush.
    pub conns: Vec<String>,
    pub messages: u64,
}

pub struct Nats {
    rt: tokio::runtime::Runtime,
    conns: HashMap<String, Client>,
    /// Set by any connection when it (re)connects: waiting events may go now.
    pub connected: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

fn options(topic: &Topic) -> ConnectOptions {
    let mut opts = ConnectOptions::new().name("lunafs");
    if let (Some(u), Some(p)) = (&topic.user, &topic.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &topic.token {
        opts = opts.token(t.clone());
    }
    opts
}

impl Nats {
    /// `wake` is called when a connection comes up.
    pub fn new(wake: Arc<dyn Fn() + Send + Sync>) -> Result<Nats> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lunafs-nats")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the NATS runtime", e))?;
        Ok(Nats {
            rt,
            conns: HashMap::new(),
            connected: Arc::new(AtomicBool::new(false)),
            wake,
        })
    }

    /// The runtime, for entering its context (client and JetStream handles are made and
    /// dropped inside it).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }

    /// The held connection for `topic`'s server and credentials. Err only for an address
    /// that cannot be used at all (topics are checked when written: a damaged one).
    pub fn connection(&mut self, topic: &Topic) -> std::result::Result<Client, String> {
        let key = topic.connection_key();
        if let Some(c) = self.conns.get(&key) {
            return Ok(c.clone());
        }
        let (flag, wake) = (self.connected.clone(), self.wake.clone());
        let opts = options(topic)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    flag.store(true, Ordering::Release);
                    wake();
                }
                std::future::ready(())
            });
        let addr = topic.addr.clone();
        let client = self
            .rt
            .block_on(async move { opts.connect(addr).await })
            .map_err(|e| format!("topic {}: cannot use {}: {e}", topic.name, topic.url))?;
        // Give a server that is up a moment to answer, so the first round can publish.
        let probe = client.clone();
        self.rt.block_on(async move {
            for _ in 0..50 {
                if probe.connection_state() == async_nats::connection::State::Connected {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        self.conns.insert(key, client.clone());
        Ok(client)
    }

    /// Whether `topic`'s connection is up.
    pub fn is_up(&mut self, topic: &Topic) -> bool {
        self.connection(topic)
            .is_ok_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// Sends `messages` (with `Nats-Msg-Id` = the event id, and `.N` for the N-th after
    /// the first, on JetStream topics; none for the background script's).
    pub fn publish(
        &mut self,
        messages: &[Msg],
        event_id: Option<&str>,
        topics: &std::collections::BTreeMap<String, Topic>,
    ) -> std::result::Result<Outgoing, String> {
        let mut out = Outgoing {
            messages: messages.len() as u64,
            ..Outgoing::default()
        };
        for (i, m) in messages.iter().enumerate() {
            let topic = topics
                .get(&m.topic)
                .ok_or_else(|| format!("no topic {}", m.topic))?;
            let client = self.connection(topic)?;
            if client.connection_state() != async_nats::connection::State::Connected {
                return Err(format!("not connected to {}", topic.url));
            }
            let headers = headers(m, topic, event_id, i);
            let (subject, payload) = (m.subject.clone(), m.payload.clone().into());
            if topic.jetstream {
                let js = async_nats::jetstream::new(client);
                let ack = self
                    .rt
                    .block_on(js.publish_with_headers(subject, headers, payload))
                    .map_err(|e| format!("JetStream publish to {}: {e}", m.subject))?;
                out.acks.push(ack);
            } else {
                self.rt
                    .block_on(client.publish_with_headers(subject, headers, payload))
                    .map_err(|e| format!("publish to {}: {e}", m.subject))?;
                let key = topic.connection_key();
                if !out.conns.contains(&key) {
                    out.conns.push(key);
                }
            }
        }
        Ok(out)
    }

    /// Flushes one connection's buffer to its server.
    pub fn flush(&self, key: &str) -> std::result::Result<(), String> {
        let Some(c) = self.conns.get(key).cloned() else {
            return Err("the connection went away before its flush".to_string());
        };
        self.rt
            .block_on(async { tokio::time::timeout(PUBLISH_TIMEOUT, c.flush()).await })
            .map_err(|_| "flush timed out".to_string())
            .and_then(|r| r.map_err(|e| format!("flush: {e}")))
    }

    /// Waits for a PubAck.
    pub fn ack(&self, ack: PublishAckFuture) -> std::result::Result<(), String> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(PUBLISH_TIMEOUT, ack).await })
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("no PubAck: {e}")),
            Err(_) => Err("PubAck timed out".into()),
        }
    }
}

fn headers(m: &Msg, topic: &Topic, event_id: Option<&str>, i: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in &m.headers {
        headers.insert(k.as_str(), v.as_str());
    }
    // Events deduplicate by their id; the background script's messages have none (a fixed
    // id would make the stream drop every later run's messages).
    if let Some(event_id) = event_id.filter(|_| topic.jetstream) {
        if headers.get("Nats-Msg-Id").is_none() {
            let id = match i {
                0 => event_id.to_string(),
                i => format!("{event_id}.{i}"),
            };
            headers.insert("Nats-Msg-Id", id.as_str());
        }
    }
    headers
}

/// What the check of a JetStream topic found.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamCheck {
    /// The stream that captures the subject.
    Captured(String),
    /// The server answered: no stream captures the subject.
    NoStream,
    /// The server could not be asked (down, refused, slow): why.
    Unreachable(String),
}

/// Asks `topic`'s server which JetStream stream captures its subject (bounded by a short
/// timeout: this runs when a topic is written).
pub fn check_stream(topic: &Topic) -> StreamCheck {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return StreamCheck::Unreachable(e.to_string()),
    };
    let (opts, addr, subject) = (options(topic), topic.addr.clone(), topic.subject.clone());
    rt.block_on(async move {
        let client = match tokio::time::timeout(CHECK_TIMEOUT, opts.connect(addr)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return StreamCheck::Unreachable(e.to_string()),
            Err(_) => return StreamCheck::Unreachable("no answer in 2 s".into()),
        };
        let js = async_nats::jetstream::new(client);
        match tokio::time::timeout(CHECK_TIMEOUT, js.stream_by_subject(subject)).await {
            Ok(Ok(name)) => StreamCheck::Captured(name),
            Ok(Err(e))
                if e.kind()
                    == async_nats::jetstream::context::GetStreamByNameErrorKind::NotFound =>
            {
                StreamCheck::NoStream
            }
            Ok(Err(e)) => StreamCheck::Unreachable(e.to_string()),
            Err(_) => StreamCheck::Unreachable("no answer in 2 s".into()),
        }
    })
}
