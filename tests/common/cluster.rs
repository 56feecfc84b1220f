//! The shared backend's real engines for tests: etcd and Ceph from `contrib/cluster.sh`.
//!
//! `$LUNAFS_TEST_CLUSTER` names the directory of a running cluster (CI and `contrib/test.sh`
//! start one for the whole suite); without it, the first test that asks starts a private one
//! on free loopback ports, stopped by PID when the test process exits. Each filesystem a test
//! formats has a fresh name, so tests sharing a cluster never see each other's keys or objects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use lunafs::store::location::{Access, Location};
use lunafs::store::Store;

pub struct Cluster {
    pub dir: PathBuf,
    /// `H:P[,H:P]` of the etcd members.
    pub etcd: String,
    /// The data URL for `lunafs format --data`.
    pub rados: String,
}

static PRIVATE: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn stop_private() {
    if let Some(dir) = PRIVATE.get() {
        let _ = Command::new(script()).arg("stop").arg(dir).status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/cluster.sh")
}

/// The cluster for this test process.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = match std::env::var_os("LUNAFS_TEST_CLUSTER") {
            Some(d) => PathBuf::from(d),
            None => start_private(),
        };
        Cluster::of(dir)
    })
}

/// Where private clusters live: in RAM where there is a /dev/shm (etcd fsyncs every commit).
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => shm.to_owned(),
        false => std::env::temp_dir(),
    }
}

fn start_private() -> PathBuf {
    let dir = scratch().join(format!("lunafs-cluster-{}", std::process::id()));
    // Thirty consecutive ports from a free one (the script uses base .. base + 29).
    let base = 40_000 + (std::process::id() % 800) as u16 * 30;
    start_at(&dir, base, 1, 2 << 30);
    let _ = PRIVATE.set(dir.clone());
    // SAFETY: registers a plain extern "C" function, run once at process exit.
    unsafe { libc::atexit(stop_private) };
    dir
}

/// `contrib/cluster.sh start DIR` on ports from `base`, with `members` etcd members and OSDs
/// of `osd_bytes` each.
fn start_at(dir: &Path, base: u16, members: u32, osd_bytes: u64) {
    let out = Command::new(script())
        .arg("start")
        .arg(dir)
        .args(["--members", &members.to_string()])
        .env("LUNAFS_CLUSTER_PORT", base.to_string())
        .env("LUNAFS_CLUSTER_OSD_BYTES", osd_bytes.to_string())
        .output()
        .expect("run contrib/cluster.sh");
    assert!(
        out.status.success(),
        "contrib/cluster.sh start failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster of three etcd members and three OSDs (pool size 3, min_size 2) of one test's
/// own, for killing members of; stopped when dropped.
pub struct Threes {
    pub cluster: Cluster,
}

impl Threes {
    pub fn start() -> Threes {
        let dir = scratch().join(format!("lunafs-threes-{}", std::process::id()));
        // Below the single clusters' ports (40,000 and up), above the suite's (23790).
        let base = 30_000 + (std::process::id() % 300) as u16 * 30;
        start_at(&dir, base, 3, 1 << 30);
        Threes {
            cluster: Cluster::of(dir),
        }
    }

    /// kill -9 of one process of the cluster, by its pid file (`etcd-e0`, `ceph-osd.1`).
    pub fn kill(&self, name: &str) {
        let file = self.cluster.dir.join("pids").join(format!("{name}.pid"));
        let pid =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        // Dead, so stop leaves it alone (its pid could be reused meanwhile).
        std::fs::remove_file(file).unwrap();
    }

    /// The name (`e0`..`e2`) of the etcd member that leads now.
    pub fn etcd_leader(&self) -> String {
        let out = Command::new("etcdctl")
            .args([
                "--endpoints",
                &self.cluster.etcd,
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let members = status.as_array().unwrap();
        let position = members
            .iter()
            .position(|m| m["Status"]["header"]["member_id"] == m["Status"]["leader"]);
        format!("e{}", position.expect("an etcd leader"))
    }
}

impl Drop for Threes {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(&self.cluster.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.cluster.dir);
    }
}

impl Cluster {
    /// The cluster whose `contrib/cluster.sh` directory is `dir`.
    fn of(dir: PathBuf) -> Cluster {
        let env = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("{}/env: {e} (is the cluster running?)", dir.display()));
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} missing from {}/env", dir.display()))
                .trim_matches('\'')
                .to_owned()
        };
        Cluster {
            etcd: var("LUNAFS_ETCD"),
            rados: var("LUNAFS_RADOS"),
            dir,
        }
    }

    /// A name no other filesystem of this cluster has.
    pub fn fresh_name(&self, what: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!(
            "{what}-{}-{}-{nanos:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub fn url(&self, name: &str) -> String {
        format!("etcd://{}/{name}", self.etcd)
    }

    /// Formats a new filesystem; returns its URL.
    pub fn format(&self, what: &str) -> String {
        let url = self.url(&self.fresh_name(what));
        let loc = Location::parse(&url).unwrap();
        Store::format(&loc, &self.rados, &Access::default()).unwrap();
        url
    }

    /// Opens the filesystem at `url` (another "mount" of it, in this process).
    pub fn open(&self, url: &str) -> Store {
        Store::open_at(&Location::parse(url).unwrap(), &Access::default()).unwrap()
    }
}

/// Bytes in the RADOS objects of the shared filesystem at `url` (its namespace in the pool).
pub fn stored_bytes(url: &str) -> u64 {
    let c = cluster();
    let name = url.rsplit('/').next().unwrap();
    let conf = c.rados.split("conf=").nth(1).unwrap();
    let rados = |args: &[&str]| {
        let out = Command::new("rados")
            .args(["-c", conf, "-p", "lunafs", "-N", name])
            .args(args)
            .output()
            .unwrap();
        super::succeeded(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    rados(&["ls"])
        .lines()
        .map(|oid| {
            // "lunafs/OID mtime 2026-..., size N"
            let stat = rados(&["stat", oid]);
            let size = stat.rsplit("size ").next().unwrap().trim();
            size.parse::<u64>()
                .unwrap_or_else(|_| panic!("rados stat: {stat}"))
        })
        .sum()
}

/// etcd's endpoints and the key prefix of the shared filesystem at `url`.
fn etcd_of(url: &str) -> (Vec<String>, Vec<u8>) {
    let rest = url.strip_prefix("etcd://").unwrap();
    let (hosts, name) = rest.split_once('/').unwrap();
    let endpoints = hosts.split(',').map(|h| format!("http://{h}")).collect();
    (endpoints, format!("/{name}/").into_bytes())
}

/// Runs `f` with an etcd client of the filesystem at `url` and its key prefix.
fn with_etcd<T, F: std::future::Future<Output = T>>(
    url: &str,
    f: impl FnOnce(etcd_client::Client, Vec<u8>) -> F,
) -> T {
    let (endpoints, prefix) = etcd_of(url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = etcd_client::Client::connect(endpoints, None).await.unwrap();
        f(client, prefix).await
    })
}

/// Whether a key is held under a lease (a mount's session, the leadership): a copy of it
/// would outlive its process.
fn leased(prefix: &[u8], key: &[u8]) -> bool {
    let rest = &key[prefix.len()..];
    rest.starts_with(b"sessions/") || rest == b"leader"
}

/// Every key and value of the shared filesystem at `url`, but its leased ones.
pub fn etcd_keys(url: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    with_etcd(url, |mut client, prefix| async move {
        let opts = etcd_client::GetOptions::new().with_prefix();
        let resp = client.get(prefix.clone(), Some(opts)).await.unwrap();
        resp.kvs()
            .iter()
            .filter(|kv| !leased(&prefix, kv.key()))
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect()
    })
}

/// Replaces the keys of the shared filesystem at `url` (unmounted) with `keys`.
pub fn etcd_restore(url: &str, keys: Vec<(Vec<u8>, Vec<u8>)>) {
    with_etcd(url, |mut client, prefix| async move {
        let opts = etcd_client::DeleteOptions::new().with_prefix();
        client.delete(prefix, Some(opts)).await.unwrap();
        for (k, v) in keys {
            client.put(k, v, None).await.unwrap();
        }
    })
}

/// `lunafs fsck URL` finds nothing wrong.
pub fn fsck_clean(url: &str) {
    let out = Command::new(super::LUNAFS)
        .args(["fsck", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck {url}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An etcd of one test's own, on free loopback ports (for failure tests that stop it).
pub struct PrivateEtcd {
    pub endpoint: String,
    _dir: tempfile::TempDir,
    child: std::process::Child,
}

impl PrivateEtcd {
    pub fn start() -> PrivateEtcd {
        let dir = tempfile::tempdir_in(Path::new("/dev/shm")).unwrap();
        let (client, peer) = (super::nats::free_port(), super::nats::free_port());
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "solo", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url(client)])
            .args(["--advertise-client-urls", &url(client)])
            .args(["--listen-peer-urls", &url(peer)])
            .args(["--initial-advertise-peer-urls", &url(peer)])
            .args(["--initial-cluster", &format!("solo={}", url(peer))])
            .args(["--max-txn-ops", "10000", "--max-request-bytes", "33554432"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (apt install etcd-server)");
        let endpoint = format!("127.0.0.1:{client}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !Command::new("etcdctl")
            .args(["--endpoints", &endpoint, "endpoint", "health"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(std::time::Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        PrivateEtcd {
            endpoint,
            _dir: dir,
            child,
        }
    }

    /// SIGSTOP (true) or SIGCONT (false): etcd stops answering, keeping its state.
    pub fn pause(&self, paused: bool) {
        let sig = match paused {
            true => nix::sys::signal::Signal::SIGSTOP,
            false => nix::sys::signal::Signal::SIGCONT,
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.pause(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
