//! A real `nats-server` (the Debian package) on free loopback ports, with JetStream and the
//! monitoring port, stopped by PID on drop; and a real async-nats subscriber.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

pub struct Nats {
    pub port: u16,
    pub monitor: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A loopback port nothing listens on, never the same twice in this process. Taken below the
/// kernel's ephemeral range (32768 and up), so neither another test's free port nor the local
/// end of some outgoing connection can take it while a stopped server waits to start on it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 500) as u16 * 20,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            port < 32_768,
            "no free loopback port below the ephemeral range"
        );
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl super::TestFs {
    /// Writes topic `name`: `nats`'s URL, `subject`, quick retries, and `extra` TOML lines.
    pub fn put_topic(&self, name: &str, nats: &Nats, subject: &str, extra: &str) {
        std::fs::write(
            self.path(&format!(".lunafs/topics/{name}.toml")),
            format!(
                "url = \"{}\"\nsubject = \"{subject}\"\nretry_sleep_duration = 0.2\n{extra}",
                nats.url()
            ),
        )
        .unwrap();
    }

    /// Writes `bucket`'s notification settings.
    pub fn put_notifications(&self, bucket: &str, toml: &str) {
        std::fs::write(
            self.path(&format!(".lunafs/notifications/{bucket}.toml")),
            toml,
        )
        .unwrap();
    }
}

/// Notification settings sending every event to `topic`.
pub fn all_events(id: &str, topic: &str) -> String {
    format!("[[notification]]\nid = \"{id}\"\ntopic = \"{topic}\"\n")
}

impl Nats {
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Nats {
            port: free_port(),
            monitor: free_port(),
            dir,
            child: None,
        };
        n.run();
        n
    }

    /// Ports reserved for a server that is not running yet (`run` starts it).
    pub fn stopped() -> Nats {
        Nats {
            port: free_port(),
            monitor: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    pub fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("nats.log")).unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string(), "-js", "-sd"])
            .arg(self.store_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (apt install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let client_port = || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        while self.monitor_get("/healthz").is_none() || !client_port() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nats-server exited ({status}); see its log in {:?}",
                    self.dir.path()
                );
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// GET of a monitoring endpoint (`/connz`, `/jsz?streams=true`), as JSON.
    pub fn monitor_get(&self, path: &str) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.monitor)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }

    /// The names of the clients connected (from /connz).
    pub fn connection_names(&self) -> Vec<String> {
        let v = self.monitor_get("/connz").expect("connz");
        v["connections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["name"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.close();
    }
}

/// A subscriber on its own runtime, collecting messages of one subject pattern.
pub struct Sub {
    sub: Option<async_nats::Subscriber>,
    pub client: async_nats::Client,
    rt: tokio::runtime::Runtime,
}

pub struct Received {
    pub subject: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }

    /// The first record of an S3 notification body.
    pub fn record(&self) -> serde_json::Value {
        self.json()["Records"][0].clone()
    }
}

impl Sub {
    pub fn new(url: &str, subject: &str) -> Sub {
        // A worker of its own reads the connection while the test does other work: a client
        // read only inside `take` would fall behind a long burst of writes (the shared
        // backend's creates take seconds), and the server drops a slow consumer.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (client, sub) = rt.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .name("test-subscriber")
                .connect(url)
                .await
                .expect("connect subscriber");
            let sub = client.subscribe(subject.to_string()).await.unwrap();
            client.flush().await.unwrap();
            (client, sub)
        });
        Sub {
            sub: Some(sub),
            client,
            rt,
        }
    }

    /// Waits until `n` messages arrived (or `timeout` passed), and returns them.
    pub fn take(&mut self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let sub = self.sub.as_mut().expect("subscribed");
        self.rt.block_on(async {
            let mut out = Vec::new();
            while out.len() < n {
                match tokio::time::timeout_at(deadline, sub.next()).await {
                    Ok(Some(m)) => out.push(Received {
                        subject: m.subject.to_string(),
                        payload: m.payload.to_vec(),
                        headers: m
                            .headers
                            .iter()
                            .flat_map(|h| {
                                h.iter()
                                    .flat_map(|(k, vs)| {
                                        vs.iter()
                                            .map(|v| (k.to_string(), v.to_string()))
                                            .collect::<Vec<_>>()
                                    })
                                    .collect::<Vec<_>>()
                            })
                            .collect(),
                    }),
                    _ => break,
                }
            }
            out
        })
    }

    /// Closing a subscription needs the runtime's context.
    fn close(&mut self) {
        let _entered = self.rt.enter();
        self.sub.take();
    }

    /// Creates a JetStream stream over `subjects` (the default 2-minute dedup window).
    pub fn create_stream(&self, name: &str, subjects: &[&str]) {
        let _entered = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        self.rt
            .block_on(js.create_stream(async_nats::jetstream::stream::Config {
                name: name.to_string(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }))
            .expect("create stream");
    }

    /// Deletes JetStream stream `name`: publishes to its subjects fail from then on.
    pub fn delete_stream(&self, name: &str) {
        let _entered = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        let deleted = self
            .rt
            .block_on(js.delete_stream(name))
            .expect("delete stream");
        assert!(deleted.success, "stream {name} deleted");
    }

    /// How many messages stream `name` holds.
    pub fn stream_messages(&self, name: &str) -> u64 {
        let _entered = self.rt.enter();
        let _entered = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        self.rt.block_on(async {
            let mut s = js.get_stream(name).await.expect("stream");
            s.info().await.expect("stream info").state.messages
        })
    }
}
