//! The `lunafs` command line: parses raw arguments with clap, builds validated configuration
//! (config file, environment, options: see `config`), and runs the command. Messages name the
//! path or option at fault; every failure exits non-zero (2 for usage errors, 1 otherwise;
//! fsck uses fsck(8)'s 0/1/4).

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::config::{Layered, MountConfig};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::store::location::{Access, Location};
use crate::store::{Store, LOG_FILE};

mod calls;
mod notify;
mod status;

#[derive(Debug, Parser)]
#[command(
    name = "lunafs",
    version,
    about = "A FUSE filesystem on RocksDB: buckets, objects and their omap"
)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Config file (default /etc/lunafs/lunafs.toml if it exists; or $LUNAFS_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Mount the store at STORE (created on first mount) on MOUNTPOINT.
    Mount {
        /// Directory holding the store's RocksDB, or etcd://HOST:PORT[,HOST:PORT]/NAME for a
        /// shared filesystem (made with `lunafs format`).
        store: PathBuf,
        /// Existing directory to mount on.
        mountpoint: PathBuf,
        /// Mount options, comma-separated (see README: allow_other, ro, attr_timeout=S, ...).
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// Stay in the foreground and log to stderr (systemd, debugging). Without it, lunafs
        /// returns once the mount answers and logs to STORE/lunafs.log.
        #[arg(short = 'f', long)]
        foreground: bool,
    },
    /// Create a shared filesystem: metadata under NAME on etcd, data in a RADOS pool.
    /// Refuses a NAME that exists.
    Format {
        /// etcd://HOST:PORT[,HOST:PORT]/NAME
        location: String,
        /// Where file data goes: rados://POOL[?conf=/etc/ceph/ceph.conf]
        #[arg(long, value_name = "URL")]
        data: String,
        /// Credentials, as mount options: etcd_user=, etcd_password_file=, etcd_ca=,
        /// etcd_cert=, etcd_key=, ceph_client=, ceph_keyring=, backend_timeout=S.
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
    },
    /// Unmount MOUNTPOINT and wait until its lunafs has flushed and released the store.
    Umount { mountpoint: PathBuf },
    /// Show how a mounted lunafs is doing: health, backend, rates, open files, handler calls,
    /// events and topics. Exit status 0 healthy, 1 not answering, 2 usage errors.
    Status {
        mountpoint: PathBuf,
        /// Print one JSON document (schema in the README) instead of the summary.
        #[arg(long)]
        json: bool,
        /// Seconds between the two readings the rates come from.
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = interval)]
        interval: Duration,
    },
    /// Print a shell completion script for lunafs (source it, or install it where your
    /// shell looks: see the README).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (lunafs.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Check an unmounted store's every invariant; repair what is safe with --repair.
    /// Exit status as fsck(8): 0 clean, 1 errors corrected, 4 errors left.
    Fsck {
        /// A store directory or a shared filesystem's etcd:// URL.
        store: PathBuf,
        /// Apply the safe repairs (dangling entries, link counts, stray data).
        #[arg(long)]
        repair: bool,
        /// Credentials of a shared filesystem, as mount options (see format).
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
    },
    /// Call a handler on an object of a mounted lunafs and print its output. Exits 1 when
    /// the handler's result is negative (the errno is printed).
    Call {
        /// The object (a file inside a lunafs mount).
        file: PathBuf,
        /// CLASS.METHOD of an installed class, or METHOD with --script.
        method: String,
        /// Input for the handler (use --input-file for binary input).
        input: Option<String>,
        /// Read the input from FILE (- for standard input).
        #[arg(long, value_name = "FILE", conflicts_with = "input")]
        input_file: Option<PathBuf>,
        /// Run METHOD of this Lua script instead of a stored class (Ceph's eval).
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
    },
    /// Manage object classes (Lua handlers) of a mounted lunafs.
    Class {
        #[command(subcommand)]
        action: calls::ClassCmd,
        /// The lunafs mount (default: $LUNAFS_MOUNT, else the mount holding the current
        /// directory).
        #[arg(short = 'm', long = "mount", global = true, value_name = "MOUNTPOINT")]
        mount: Option<PathBuf>,
    },
    /// Manage NATS topics (bucket notification destinations) of a mounted lunafs.
    Topic {
        #[command(subcommand)]
        action: notify::TopicCmd,
        /// The lunafs mount (default: $LUNAFS_MOUNT, else the mount holding the current
        /// directory).
        #[arg(short = 'm', long = "mount", global = true, value_name = "MOUNTPOINT")]
        mount: Option<PathBuf>,
    },
    /// Manage bucket notifications, notification scripts and the background script.
    Notification {
        #[command(subcommand)]
        action: notify::NotificationCmd,
        /// The lunafs mount (default: $LUNAFS_MOUNT, else the mount holding the current
        /// directory).
        #[arg(short = 'm', long = "mount", global = true, value_name = "MOUNTPOINT")]
        mount: Option<PathBuf>,
    },
    /// Manage Lua packages (modules for `require`) of a mounted lunafs.
    Package {
        #[command(subcommand)]
        action: calls::PackageCmd,
        /// The lunafs mount (default: $LUNAFS_MOUNT, else the mount holding the current
        /// directory).
        #[arg(short = 'm', long = "mount", global = true, value_name = "MOUNTPOINT")]
        mount: Option<PathBuf>,
    },
}

/// Runs the command; Ok holds the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Cmd::Mount {
            store,
            mountpoint,
            options,
            foreground,
        } => {
            let layered = Layered::load(cli.config.as_deref())?;
            let mut all = layered.options;
            all.extend(options);
            let level = cli.log_level.or(layered.log_level);
            let mut config = MountConfig::new(store_arg(&store)?, absolute(&mountpoint)?);
            config.apply_options(&all)?;
            check_mountpoint(&config.mountpoint)?;
            if foreground {
                // Before any thread starts, so only the signal thread ever sees them.
                crate::telemetry::block_termination_signals()?;
                crate::telemetry::init(level.as_deref())?;
                mount_foreground(&config)?;
            } else {
                mount_background(&config, &all, level.as_deref(), cli.config.as_deref())?;
            }
            Ok(0)
        }
        Cmd::Umount { mountpoint } => umount(&absolute(&mountpoint)?).map(|_| 0),
        Cmd::Status {
            mountpoint,
            json,
            interval,
        } => status::status(&absolute(&mountpoint)?, json, interval),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into memory first: the generator panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "lunafs", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .map_err(|e| Error::io("writing the completion script", e))?;
            Ok(0)
        }
        Cmd::Manpages { dir } => manpages(&dir).map(|_| 0),
        Cmd::Format {
            location,
            data,
            options,
        } => format(&location, &data, &options),
        Cmd::Fsck {
            store,
            repair,
            options,
        } => fsck(&store_arg(&store)?, repair, &options),
        Cmd::Call {
            file,
            method,
            input,
            input_file,
            script,
        } => calls::call(
            &file,
            &method,
            input,
            input_file.as_deref(),
            script.as_deref(),
        ),
        Cmd::Class { action, mount } => calls::class(action, mount.as_deref()),
        Cmd::Package { action, mount } => calls::package(action, mount.as_deref()),
        Cmd::Topic { action, mount } => notify::topic(action, mount.as_deref()),
        Cmd::Notification { action, mount } => notify::notification(action, mount.as_deref()),
    }
}

/// A store argument: a URL as given, a directory made absolute.
fn store_arg(p: &Path) -> Result<PathBuf> {
    match p.to_string_lossy().contains("://") {
        true => Ok(p.to_owned()),
        false => absolute(p),
    }
}

/// `p` made absolute, without a trailing slash (`/mnt/x/` is the mount `/mnt/x`).
fn absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(format!("{}", p.display()), e))?;
    Ok(abs.components().collect())
}

fn check_mountpoint(mp: &Path) -> Result<()> {
    // A dead FUSE mount, left by a lunafs that was killed, answers statfs with ENOTCONN
    // (stat may still be served from the kernel's cache): detach it, as remounting after any
    // crash must work.
    if let Err(nix::errno::Errno::ENOTCONN) = nix::sys::statfs::statfs(mp) {
        Command::new("fusermount3").arg("-uz").arg(mp).status().ok();
    }
    let meta =
        fs::metadata(mp).map_err(|e| Error::io(format!("mountpoint {}", mp.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "mountpoint {} is not a directory",
            mp.display()
        )));
    }
    if is_mount_point(mp)? {
        return Err(Error::Usage(format!(
            "mountpoint {} is busy: something is already mounted there",
            mp.display()
        )));
    }
    Ok(())
}

/// True when `mp` is on another device than its parent directory.
fn is_mount_point(mp: &Path) -> Result<bool> {
    let dev = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.dev())
            .map_err(|e| Error::io(format!("{}", p.display()), e))
    };
    let parent = mp.parent().unwrap_or(Path::new("/"));
    Ok(mp != Path::new("/") && dev(mp)? != dev(parent)?)
}

fn mount_foreground(config: &MountConfig) -> Result<()> {
    // SAFETY: getuid/getgid cannot fail.
    let owner = unsafe { (libc::getuid(), libc::getgid()) };
    let store = Store::open_at(&config.location()?, &config.access)?;
    let core = Arc::new(Core::with_store(store, owner)?);
    core.set_lua_limits(config.lua_limits);
    crate::mount::serve(core, config)
}

/// Starts `lunafs mount --foreground` as a detached child logging to STORE/lunafs.log, and
/// returns once the mount answers, or with the child's own error message if it exits first.
fn mount_background(
    config: &MountConfig,
    options: &[String],
    level: Option<&str>,
    config_file: Option<&Path>,
) -> Result<()> {
    let store = &config.store;
    let log_path = log_path(&config.location()?)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(format!("opening log {}", log_path.display()), e))?;
    let start = log.seek(SeekFrom::End(0)).unwrap_or(0);
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the lunafs binary", e))?;
    let mut cmd = Command::new(exe);
    if let Some(level) = level {
        cmd.args(["--log-level", level]);
    }
    if let Some(file) = config_file {
        cmd.arg("--config").arg(file);
    }
    cmd.arg("mount")
        .arg(store)
        .arg(&config.mountpoint)
        .arg("--foreground");
    for o in options {
        cmd.arg("-o").arg(o);
    }
    let err_log = log.try_clone().map_err(|e| Error::io("log file", e))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(err_log.try_clone().map_err(|e| Error::io("log file", e))?)
        .stderr(err_log)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("starting the lunafs daemon", e))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("waiting for the daemon", e))?
        {
            let mut text = String::new();
            let _ = fs::File::open(&log_path).and_then(|mut f| {
                f.seek(SeekFrom::Start(start))?;
                f.read_to_string(&mut text)
            });
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(Error::Usage(format!(
                "the lunafs daemon exited ({status}) before mounting: {last}"
            )));
        }
        if is_mount_point(&config.mountpoint)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Usage(format!(
                "the mount at {} did not answer within 60 s (pid {}, log {})",
                config.mountpoint.display(),
                child.id(),
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where a background mount logs: in the store's directory, or for a shared filesystem in
/// `/var/log/lunafs/NAME.log` (`$LUNAFS_LOG_DIR` overrides the directory).
fn log_path(loc: &Location) -> Result<PathBuf> {
    let (dir, file) = match loc {
        Location::Embedded(store) => (store.clone(), LOG_FILE.to_owned()),
        Location::Etcd { name, .. } => {
            let dir =
                std::env::var_os("LUNAFS_LOG_DIR").map_or("/var/log/lunafs".into(), PathBuf::from);
            (dir, format!("{name}.log"))
        }
    };
    if !dir.exists() {
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    Ok(dir.join(file))
}

/// `lunafs format`: a new shared filesystem, its root owned by the caller.
fn format(location: &str, data: &str, options: &[String]) -> Result<i32> {
    let loc = Location::parse(location)?;
    let access = access_of(options)?;
    let store = Store::format(&loc, data, &access)?;
    // SAFETY: getuid/getgid cannot fail.
    let owner = unsafe { (libc::getuid(), libc::getgid()) };
    drop(Core::with_store(store, owner)?);
    println!("formatted {} (data in {data})", loc.describe());
    Ok(0)
}

/// Credentials given as `-o` options (the config file's and environment's first).
fn access_of(options: &[String]) -> Result<Access> {
    let mut all = Layered::load(None)?.options;
    all.extend(options.iter().cloned());
    let mut config = MountConfig::new(PathBuf::new(), PathBuf::new());
    config.apply_options(&all)?;
    Ok(config.access)
}

/// The store behind a lunafs mount, from /proc/self/mountinfo.
fn mounted_store(mp: &Path) -> Result<Option<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    let want = mp.to_string_lossy();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype), Some(source)) =
            (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        // fuser mounts as plain "fuse" when root mounts directly, "fuse.lunafs" through
        // fusermount3; the source names the store either way.
        if unescape(point) == want && fstype.starts_with("fuse") && source.starts_with("lunafs:") {
            return Ok(source
                .strip_prefix("lunafs:")
                .map(|s| PathBuf::from(unescape(s))));
        }
    }
    Ok(None)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn umount(mp: &Path) -> Result<()> {
    let store = mounted_store(mp)?
        .ok_or_else(|| Error::Usage(format!("{} is not a lunafs mount", mp.display())))?;
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(mp)
        .output()
        .map_err(|e| Error::io("running fusermount3 (is the fuse3 package installed?)", e))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "unmounting {}: {}",
            mp.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // The daemon flushes the store after the kernel lets go; wait for its RocksDB lock so
    // that a remount right after this command finds the store free.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store_locked(&store) {
        if Instant::now() > deadline {
            return Err(Error::StoreLocked(store));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// fsck's progress as a bar on stderr when it is a terminal; nothing when it is not.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar = indicatif::ProgressBar::new_spinner();
        // Steps with no items to count (the data check) still show that work goes on.
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar(bar)
    }

    fn style(template: &str) -> indicatif::ProgressStyle {
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
    }
}

impl crate::core::fsck::Progress for Bar {
    fn step(&self, name: &'static str, total: Option<u64>) {
        let b = &self.0;
        match total {
            Some(n) => {
                b.set_style(Bar::style(
                    "{msg:>15} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
                ));
                b.set_length(n);
            }
            None => {
                b.set_style(Bar::style("{spinner} {msg:>13}: {human_pos} {per_sec}"));
                b.unset_length();
            }
        }
        b.set_message(name);
        b.reset();
    }

    fn item(&self) {
        self.0.inc(1);
    }
}

/// `--interval`: seconds, at least 0.1 and at most an hour.
fn interval(v: &str) -> std::result::Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if (0.1..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err("expected seconds between 0.1 and 3600".into()),
    }
}

/// Writes `lunafs.1` and `lunafs-SUBCOMMAND.1` (nested ones too) into `dir`.
fn manpages(dir: &Path) -> Result<()> {
    fn write(dir: &Path, name: &str, cmd: clap::Command) -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .title(name)
            .render(&mut page)
            .map_err(|e| Error::io(format!("rendering {}", path.display()), e))?;
        fs::write(&path, page).map_err(|e| Error::io(format!("{}", path.display()), e))?;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            let sub_name = format!("{name}-{}", sub.get_name());
            write(dir, &sub_name, sub.clone())?;
        }
        Ok(())
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("{}", dir.display()), e))?;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    write(dir, "lunafs", cmd)
}

fn fsck(store_path: &Path, repair: bool, options: &[String]) -> Result<i32> {
    let loc = Location::parse(&store_path.to_string_lossy())?;
    if matches!(loc, Location::Embedded(_)) && !store_path.join("CURRENT").exists() {
        return Err(Error::NotAStore {
            path: store_path.to_owned(),
            why: "no RocksDB database there".into(),
        });
    }
    let store = Store::open_at(&loc, &access_of(options)?)?;
    // An embedded store is locked by its mount; a shared one is checked for live mounts.
    let mounted = store.other_sessions()?;
    if repair && mounted > 0 {
        return Err(Error::Busy(format!(
            "{}: mounted by {mounted} lunafs process(es); unmount it everywhere before --repair",
            loc.describe()
        )));
    }
    let bar = Bar::new();
    let report = crate::core::fsck::fsck_showing(&store, repair, &bar);
    bar.0.finish_and_clear();
    let report = report?;
    if repair {
        // Data objects nothing references (slice stores only), old enough that no
        // operation in flight can still be about to reference them.
        let removed = store.collect_garbage(crate::core::housekeeping::GARBAGE_GRACE)?;
        if removed > 0 {
            println!("removed {removed} unreferenced data object(s)");
        }
    }
    for f in &report.findings {
        let tag = match (f.repairable, report.repaired) {
            (true, true) => "repaired",
            (true, false) => "repairable",
            (false, _) => "NOT repairable",
        };
        println!("{tag}: {}", f.problem);
    }
    println!(
        "{}: {} inodes, {} entries, {} chunks, {} orphans to purge at next mount, {} events \
         queued; {} problem(s)",
        store_path.display(),
        report.inodes,
        report.entries,
        report.chunks,
        report.orphans,
        report.events,
        report.findings.len()
    );
    Ok(report.exit_code())
}

/// Whether some process holds RocksDB's lock on the store (an fcntl write lock on LOCK).
pub fn store_locked(store: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(store.join("LOCK"))
    else {
        return false;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: flock is plain data; F_GETLK only reads and writes it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: fd is open for the duration of the call, fl is a valid flock.
    let rc = unsafe { libc::fcntl(fd, libc::F_GETLK, &mut fl) };
    rc == 0 && fl.l_type != libc::F_UNLCK as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/my\040photos"), "/mnt/my photos");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }
}
