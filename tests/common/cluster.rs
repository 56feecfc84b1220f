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
    })
}

fn start_private() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    let dir = tmp.join(format!("lunafs-cluster-{}", std::process::id()));
    // Thirty consecutive ports from a free one (the script uses base .. base + 29).
    let base = 40_000 + (std::process::id() % 800) as u16 * 30;
    let out = Command::new(script())
        .arg("start")
        .arg(&dir)
        .env("LUNAFS_CLUSTER_PORT", base.to_string())
        .output()
        .expect("run contrib/cluster.sh");
    assert!(
        out.status.success(),
        "contrib/cluster.sh start failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = PRIVATE.set(dir.clone());
    // SAFETY: registers a plain extern "C" function, run once at process exit.
    unsafe { libc::atexit(stop_private) };
    dir
}

impl Cluster {
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
