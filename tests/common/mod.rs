//! Test helpers: `TestFs` mounts a real lunafs (the built binary, in the foreground) on a
//! temp dir and unmounts it on drop; `errno_of` and `run_as` check what callers see.
#![allow(dead_code)]

pub mod cluster;
pub mod nats;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const LUNAFS: &str = env!("CARGO_BIN_EXE_lunafs");

pub struct TestFs {
    dir: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
    options: String,
    /// `RUST_LOG` of the daemon: tests log at debug; benchmarks at the default, info.
    log_level: &'static str,
    child: Option<Child>,
}

impl TestFs {
    /// A fresh store mounted with `allow_other` (so tests can act as other users).
    pub fn mount() -> TestFs {
        TestFs::with_options("allow_other")
    }

    pub fn with_options(options: &str) -> TestFs {
        TestFs::new(options, "lunafs=debug")
    }

    /// A mount that logs at the production default (for benchmarks).
    pub fn quiet(options: &str) -> TestFs {
        TestFs::new(options, "lunafs=info")
    }

    /// A mount of the store at `store` (a directory or an `etcd://` URL), e.g. a second
    /// mount of one shared filesystem.
    pub fn of_store(store: &str, options: &str) -> TestFs {
        let mut t = TestFs::unstarted(options, "lunafs=debug");
        t.store = PathBuf::from(store);
        t.start();
        t
    }

    fn new(options: &str, log_level: &'static str) -> TestFs {
        let mut t = TestFs::unstarted(options, log_level);
        t.start();
        t
    }

    fn unstarted(options: &str, log_level: &'static str) -> TestFs {
        let dir = tempfile::Builder::new()
            .prefix("lunafs-test")
            .tempdir()
            .unwrap();
        // Other users must be able to walk to the mountpoint for permission tests.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // LUNAFS_TEST_BACKEND=shared: every mount is of a new filesystem on etcd + Ceph.
        let store = match std::env::var("LUNAFS_TEST_BACKEND").as_deref() {
            Ok("shared") => PathBuf::from(cluster::cluster().format("suite")),
            _ => dir.path().join("store"),
        };
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        TestFs {
            dir,
            store,
            mnt,
            options: options.to_string(),
            log_level,
            child: None,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("lunafs.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(LUNAFS)
            .arg("mount")
            .arg(&self.store)
            .arg(&self.mnt)
            .arg("--foreground")
            .args(["-o", &self.options])
            .env("RUST_LOG", self.log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start lunafs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(&self.mnt) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("lunafs exited ({status}) before mounting:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mount timed out:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Path of `rel` inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The mount's counters, `/.lunafs/stats`.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.path(".lunafs/stats")).unwrap()).unwrap()
    }

    /// Bytes the store holds: the embedded store's files, or a shared filesystem's RADOS
    /// objects (its metadata on etcd is not counted).
    pub fn stored_bytes(&self) -> u64 {
        let store = self.store.to_string_lossy();
        match store.starts_with("etcd://") {
            true => cluster::stored_bytes(&store),
            false => dir_bytes(&self.store),
        }
    }

    /// A copy of the store as it is now (unmounted): its directory, or a shared filesystem's
    /// keys on etcd (its data objects are not copied: restore only what changes no data).
    pub fn copy_store(&self) -> StoreCopy {
        let store = self.store.to_string_lossy();
        if store.starts_with("etcd://") {
            return StoreCopy::Keys(cluster::etcd_keys(&store));
        }
        let copy = self.store.with_file_name("store-copy");
        let cp = Command::new("cp")
            .arg("-a")
            .arg(&self.store)
            .arg(&copy)
            .output();
        succeeded(&cp.unwrap());
        StoreCopy::Dir(copy)
    }

    /// Puts the store back as `copy` found it (unmounted).
    pub fn restore_store(&self, copy: StoreCopy) {
        match copy {
            StoreCopy::Keys(keys) => cluster::etcd_restore(&self.store.to_string_lossy(), keys),
            StoreCopy::Dir(dir) => {
                fs::remove_dir_all(&self.store).unwrap();
                fs::rename(dir, &self.store).unwrap();
            }
        }
    }

    /// Creates a bucket and returns its path.
    pub fn bucket(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir(&p).unwrap();
        p
    }

    /// Clean unmount; waits for the daemon to exit and asserts it exited successfully.
    pub fn unmount(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let out = fusermount_u(&self.mnt);
        assert!(
            out.status.success(),
            "fusermount3 -u: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = wait_timeout(&mut child, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("lunafs did not exit after unmount:\n{}", self.log()));
        assert!(
            status.success(),
            "lunafs exited with {status}:\n{}",
            self.log()
        );
    }

    /// kill -9 of the daemon, then a lazy unmount of the dead mount.
    pub fn kill9(&mut self) {
        self.kill9_leaving_mount();
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .output();
    }

    /// kill -9 of the daemon; its dead mount stays (ENOTCONN) until `kill9` or a remount.
    pub fn kill9_leaving_mount(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.start();
    }

    /// Sends SIGTERM to the daemon (what systemd's stop does).
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("lunafs is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Whether the daemon is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Mounts again after `kill9`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill9 or unmount");
        self.start();
    }
}

/// `fusermount3 -u`, retried while the mount is busy. Tests run in parallel threads of one
/// process: a child that another thread forks holds copies of this thread's descriptors
/// until it execs (CLOEXEC acts only then), so the mount can be busy for a moment after
/// the last close.
fn fusermount_u(mnt: &Path) -> Output {
    let mut tries = 0;
    loop {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .output()
            .unwrap();
        let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
        if out.status.success() || !busy || tries == 50 {
            return out;
        }
        tries += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = fusermount_u(&self.mnt);
            if wait_timeout(&mut child, Duration::from_secs(30)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mnt)
                    .output();
            }
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `fs::write`, but a failing close(2) is an error too (`fs::write` ignores it: with
/// write-back, close is where the data is stored).
pub fn write_and_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    close(f.into_raw_fd())
}

/// Closes `fd`, saying how close(2) went.
pub fn close(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: the caller owns `fd` and gives it up here.
    match unsafe { libc::close(fd) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// What `TestFs::copy_store` saved.
pub enum StoreCopy {
    Dir(PathBuf),
    Keys(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Bytes in the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            match m.is_dir() {
                true => dir_bytes(&e.path()),
                false => m.len(),
            }
        })
        .sum()
}

pub fn is_mounted(mnt: &Path) -> bool {
    match (fs::metadata(mnt), fs::metadata(mnt.parent().unwrap())) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// The errno of a failed call; panics if the call succeeded.
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

/// Asserts that a command succeeded, showing its stderr if not.
pub fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command as another user (uid = gid = `id`).
pub fn run_as(id: u32, args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .uid(id)
        .gid(id)
        .output()
        .unwrap()
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TestFs {
    /// Waits for the daemon after the mount was detached from outside (lazy unmount).
    pub fn unmount_after_detach(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = wait_timeout(&mut child, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("lunafs did not exit after detach:\n{}", self.log()));
        assert!(
            status.success(),
            "lunafs exited with {status}:\n{}",
            self.log()
        );
    }
}

/// An object class whose `incr` method adds one to the object's omap value `n`: a read
/// and a write of the omap that two racing callers would lose an update of if calls were not
/// atomic.
pub const INCR_CLASS: &str = r#"
function incr(input, output)
  local ok, v = pcall(objclass.map_get_val, "n")
  local n = ok and tonumber(v:str()) or 0
  objclass.map_set_val("n", tostring(n + 1))
end
objclass.register(incr)
"#;

/// What a handler call returned: result, output and (on failure) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Called {
    pub result: i32,
    pub output: Vec<u8>,
    pub message: String,
}

impl TestFs {
    /// Installs class `name` by writing `/.lunafs/classes/NAME.lua`.
    pub fn put_class(&self, name: &str, source: &str) {
        fs::write(self.path(&format!(".lunafs/classes/{name}.lua")), source)
            .unwrap_or_else(|e| panic!("installing class {name}: {e}\n{}", self.log()));
    }

    /// Installs a shipped class from the repository's `lua/classes/`.
    pub fn put_shipped_class(&self, name: &str) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("lua/classes/{name}.lua"));
        self.put_class(name, &fs::read_to_string(src).unwrap());
    }

    /// A handler call through `/.lunafs/call` (the control-file protocol).
    pub fn call(&self, object: &str, method: &str, input: &[u8]) -> Called {
        let mut req = format!("exec {method} {} {object}\n", input.len()).into_bytes();
        req.extend_from_slice(input);
        self.exchange(&req)
    }

    /// An inline-script call (eval) through `/.lunafs/call`.
    pub fn eval(&self, object: &str, script: &str, method: &str, input: &[u8]) -> Called {
        let mut req =
            format!("eval {method} {} {} {object}\n", script.len(), input.len()).into_bytes();
        req.extend_from_slice(script.as_bytes());
        req.extend_from_slice(input);
        self.exchange(&req)
    }

    fn exchange(&self, request: &[u8]) -> Called {
        use std::io::{Read, Write};
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(".lunafs/call"))
            .unwrap();
        f.write_all(request).unwrap();
        let mut resp = Vec::new();
        f.read_to_end(&mut resp).unwrap();
        parse_response(&resp)
            .unwrap_or_else(|| panic!("malformed response {:?}", String::from_utf8_lossy(&resp)))
    }
}

/// RESULT OUTPUT_LEN MESSAGE_LEN\n OUTPUT MESSAGE
pub fn parse_response(r: &[u8]) -> Option<Called> {
    let nl = r.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&r[..nl]).ok()?;
    let mut it = head.split(' ');
    let result = it.next()?.parse().ok()?;
    let out_len: usize = it.next()?.parse().ok()?;
    let msg_len: usize = it.next()?.parse().ok()?;
    let body = &r[nl + 1..];
    if body.len() != out_len + msg_len {
        return None;
    }
    Some(Called {
        result,
        output: body[..out_len].to_vec(),
        message: String::from_utf8_lossy(&body[out_len..]).into_owned(),
    })
}
