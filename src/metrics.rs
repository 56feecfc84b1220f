//! The Prometheus exporter of a mount (`-o metrics=[ADDR:]PORT`): `GET /metrics` answers in
//! Prometheus's text format (0.0.4), or in OpenMetrics text when the request's `Accept` asks
//! for `application/openmetrics-text` (as Prometheus itself does). The numbers are read at each scrape
//! from their owners (the FUSE adapter's `Stats`, the dispatcher's `Counters`, `Core`), and
//! `prometheus-client` encodes them; nothing here counts anything itself.
//!
//! Families (all `lunafs_`, units in the names): FUSE requests, errors by errno and latency
//! per operation; handler calls, failures and latency; bytes read and written; store size;
//! open files; events queued and pending; events delivered, retried and dropped, messages
//! published, per topic too; NATS connection state per topic; trigger and background runs;
//! backend health, its requests, and whether this mount leads. The README lists them.
//!
//! The server is one thread answering one connection at a time (scrapes are seconds apart);
//! a client whose request head does not arrive whole within `IO_TIMEOUT` (or is longer than
//! `MAX_HEAD`) is cut off. It lives as long as the process.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::fs::stats::{LatencySnapshot, Stats};
use crate::notify::Counters;

/// The port when only `metrics` is given (JuiceFS's is 9567; one above, so both can run).
pub const DEFAULT_PORT: u16 = 9568;

/// Longest a client may take to send its request, and to take each part of the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
const OPENMETRICS: &str = "application/openmetrics-text";
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Parses the value of `-o metrics`: none for the default port on loopback, `PORT` for
/// loopback, or `ADDR:PORT` with an IP address given explicitly (the only way to serve on
/// another interface). Host names are refused: what is bound is exactly what was written.
pub fn parse_address(v: Option<&str>) -> Result<SocketAddr> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let bad = |why: &str| Error::Usage(format!("metrics={}: {why}", v.unwrap_or("")));
    match v {
        None => Ok(SocketAddr::new(loopback, DEFAULT_PORT)),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse()
            .map(|port| SocketAddr::new(loopback, port))
            .map_err(|_| bad("not a port number (0 to 65535)")),
        Some(a) => a
            .parse()
            .map_err(|_| bad("give PORT or IP:PORT (e.g. 127.0.0.1:9568, [::1]:9568)")),
    }
}

/// What the exporter reads at each scrape.
pub struct Sources {
    pub stats: Arc<Stats>,
    pub core: Arc<Core>,
    pub delivery: Arc<Counters>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("lunafs metric sources")
    }
}

/// A bound, not yet serving, exporter: bound before the mount so that a taken port fails
/// the mount with nothing mounted.
pub struct Exporter {
    listener: TcpListener,
}

impl Exporter {
    pub fn bind(addr: SocketAddr) -> Result<Exporter> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("metrics: listening on {addr}"), e))?;
        Ok(Exporter { listener })
    }

    /// The address it listens on (the port the system chose, for PORT 0).
    pub fn address(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `GET /metrics` from `sources` on a thread of its own.
    pub fn serve(self, sources: Sources) -> Result<()> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(sources));
        std::thread::Builder::new()
            .name("lunafs-metrics".into())
            .spawn(move || loop {
                match self.listener.accept() {
                    Ok((conn, _)) => {
                        // A panic while encoding must cost one scrape, not the exporter.
                        let answered =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                answer(conn, &registry)
                            }));
                        match answered {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(error = %e, "metrics request failed"),
                            Err(_) => tracing::warn!("answering a metrics request panicked"),
                        }
                    }
                    // Out of descriptors, say: wait rather than spin.
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accepting a connection failed");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| Error::io("starting the metrics thread", e))
    }
}

/// The request line and whether the client asked for OpenMetrics (its `Accept` header),
/// from a request head read whole within `IO_TIMEOUT` and `MAX_HEAD` bytes.
fn read_head(mut conn: &TcpStream) -> std::io::Result<(String, bool)> {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || head.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too slow or too long"));
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let mut lines = text.lines();
    let request = lines.next().unwrap_or("").to_string();
    let openmetrics = lines.any(|h| h.starts_with("accept:") && h.contains(OPENMETRICS));
    Ok((request, openmetrics))
}

/// Reads one HTTP/1.x request and answers it; the connection is closed after.
fn answer(conn: TcpStream, registry: &Registry) -> std::io::Result<()> {
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let (request, openmetrics) = read_head(&conn)?;
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let method = method.to_ascii_uppercase();
    let method = method.as_str();
    let path = target.split('?').next().unwrap_or("");
    let plain = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let mut text = String::new();
            let encoded = match openmetrics {
                true => prometheus_client::encoding::text::encode(&mut text, registry),
                false => prometheus_client::encoding::prometheus_text::encode(&mut text, registry),
            };
            encoded.map_err(|_| std::io::Error::other("encoding the metrics failed"))?;
            let kind = if openmetrics {
                OPENMETRICS_TYPE
            } else {
                PROMETHEUS_TYPE
            };
            ("200 OK", kind, text)
        }
        (_, "/metrics") => (
            "405 Method Not Allowed",
            plain,
            "only GET /metrics\n".into(),
        ),
        _ => (
            "404 Not Found",
            plain,
            "lunafs serves /metrics only\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let mut out = &conn;
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    ConstCounter::new(value).encode(enc.encode_descriptor(name, help, unit, MetricType::Counter)?)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> fmt::Result {
    ConstGauge::new(value).encode(enc.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

fn histogram(m: &mut MetricEncoder, h: &LatencySnapshot) -> fmt::Result {
    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_requests(&mut enc)?;
        self.encode_mount(&mut enc)?;
        self.encode_delivery(&mut enc)
    }
}

impl Sources {
    /// FUSE requests and handler calls.
    fn encode_requests(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = self.stats.snapshot();
        let help = "FUSE requests handled, by operation";
        let mut m =
            enc.encode_descriptor("lunafs_fuse_requests", help, None, MetricType::Counter)?;
        for op in &s.ops {
            ConstCounter::new(op.calls).encode(m.encode_family(&[("op", op.name)])?)?;
        }
        let help = "FUSE requests that failed, by operation and the errno the caller saw";
        let mut m = enc.encode_descriptor("lunafs_fuse_errors", help, None, MetricType::Counter)?;
        for (op, errno, n) in &s.errnos {
            let errno = format!("{:?}", nix::errno::Errno::from_raw(*errno));
            let labels = [("op", op.to_string()), ("errno", errno)];
            ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
        }
        let (seconds, help) = (Unit::Seconds, "Time to answer a FUSE request, by operation");
        let name = "lunafs_fuse_request_duration";
        let mut m = enc.encode_descriptor(name, help, Some(&seconds), MetricType::Histogram)?;
        for op in &s.ops {
            histogram(&mut m.encode_family(&[("op", op.name)])?, &op.latency)?;
        }
        let help = "Handler calls (object class methods) run";
        counter(enc, "lunafs_handler_calls", help, None, s.handler_calls)?;
        let help = "Handler calls that returned a negative result or could not run";
        counter(
            enc,
            "lunafs_handler_failures",
            help,
            None,
            s.handler_failures,
        )?;
        let help = "Time of a handler call that ran (triggers too), its commit included";
        let name = "lunafs_handler_call_duration";
        let mut m = enc.encode_descriptor(name, help, Some(&seconds), MetricType::Histogram)?;
        histogram(&mut m, &s.handler_latency)?;
        let bytes = Unit::Bytes;
        counter(
            enc,
            "lunafs_read",
            "Bytes read from files",
            Some(&bytes),
            s.bytes_read,
        )?;
        let help = "Bytes written to files";
        counter(enc, "lunafs_written", help, Some(&bytes), s.bytes_written)?;
        let help = "Seconds since the mount started";
        let up = signed(s.started.elapsed().as_secs());
        gauge(enc, "lunafs_uptime", help, Some(&seconds), up)
    }

    /// The store and the mount's state.
    fn encode_mount(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let core = &self.core;
        let (backend, answers, _) = core.backend();
        let help = "1 when the store's engines answer, else 0 (label: the backend)";
        let mut m = enc.encode_descriptor("lunafs_backend_up", help, None, MetricType::Gauge)?;
        ConstGauge::new(i64::from(answers)).encode(m.encode_family(&[("backend", backend)])?)?;
        let help = "Requests sent to the metadata engine's servers (0 on the embedded store)";
        counter(
            enc,
            "lunafs_backend_requests",
            help,
            None,
            core.backend_requests(),
        )?;
        let help = "1 when this mount delivers events and runs the background script";
        gauge(enc, "lunafs_leader", help, None, i64::from(core.leads()))?;
        let help = "The store's size, roughly (on disk, or in the data pool)";
        let size = signed(core.store_bytes());
        gauge(enc, "lunafs_store_size", help, Some(&Unit::Bytes), size)?;
        let help = "Files open through this mount";
        let open = i64::try_from(core.open_file_count()).unwrap_or(i64::MAX);
        gauge(enc, "lunafs_open_files", help, None, open)?;
        let help = "Events waiting for delivery (committed, not yet delivered or dropped)";
        gauge(
            enc,
            "lunafs_events_pending",
            help,
            None,
            signed(core.events_pending()),
        )?;
        let help = "Events queued by this mount's changes";
        counter(
            enc,
            "lunafs_events_queued",
            help,
            None,
            core.events_queued(),
        )
    }

    /// Notification delivery, triggers and the background script.
    fn encode_delivery(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.delivery;
        let totals = [
            ("lunafs_events_delivered", "Events delivered", &c.delivered),
            (
                "lunafs_events_retried",
                "Failed event deliveries to be retried",
                &c.retried,
            ),
            (
                "lunafs_events_dropped",
                "Events given up (max_retries, script errors)",
                &c.dropped,
            ),
            (
                "lunafs_messages_published",
                "NATS messages published",
                &c.published,
            ),
            (
                "lunafs_script_errors",
                "Notification script errors",
                &c.script_errors,
            ),
            (
                "lunafs_background_runs",
                "Background script runs",
                &c.background_runs,
            ),
            (
                "lunafs_trigger_runs",
                "Trigger handler calls run",
                &c.triggers_run,
            ),
            (
                "lunafs_trigger_failures",
                "Trigger handler calls failed",
                &c.triggers_failed,
            ),
            (
                "lunafs_trigger_skipped",
                "Trigger calls skipped",
                &c.triggers_skipped,
            ),
        ];
        for (name, help, v) in totals {
            counter(enc, name, help, None, v.load(Relaxed))?;
        }
        let topics = c.topics();
        type Field = fn(&crate::notify::TopicState) -> u64;
        let per_topic: [(&str, &str, Field); 5] = [
            (
                "lunafs_topic_delivered_events",
                "Events delivered, by topic",
                |t| t.delivered,
            ),
            (
                "lunafs_topic_published_messages",
                "Messages published, by topic",
                |t| t.published,
            ),
            (
                "lunafs_topic_failures",
                "Failed delivery attempts, by topic",
                |t| t.failures,
            ),
            (
                "lunafs_topic_retried_events",
                "Events to be retried, by topic",
                |t| t.retried,
            ),
            (
                "lunafs_topic_dropped_events",
                "Events given up, by topic",
                |t| t.dropped,
            ),
        ];
        for (name, help, field) in per_topic {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (topic, t) in &topics {
                ConstCounter::new(field(t)).encode(m.encode_family(&[("topic", topic)])?)?;
            }
        }
        let help = "1 when the topic's NATS connection is up, 0 when down (tried topics only)";
        let mut m =
            enc.encode_descriptor("lunafs_nats_connected", help, None, MetricType::Gauge)?;
        for (topic, t) in &topics {
            if let (Some(up), false) = (t.connected, topic.starts_with("call:")) {
                ConstGauge::new(i64::from(up)).encode(m.encode_family(&[("topic", topic)])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses_default_to_loopback_and_refuse_host_names() {
        let lo = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        assert_eq!(parse_address(None).unwrap(), lo(DEFAULT_PORT));
        assert_eq!(parse_address(Some("9100")).unwrap(), lo(9100));
        assert_eq!(
            parse_address(Some("0.0.0.0:9100")).unwrap(),
            "0.0.0.0:9100".parse().unwrap()
        );
        assert_eq!(
            parse_address(Some("[::1]:9100")).unwrap(),
            "[::1]:9100".parse().unwrap()
        );
        for bad in ["localhost:9100", "70000", "", "1.2.3.4", "host"] {
            let e = parse_address(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("metrics={bad}")), "{bad}: {e}");
        }
    }
}
