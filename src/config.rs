//! Mount configuration from its three sources, parsed once into a validated `MountConfig`.
//! Precedence, lowest first: built-in defaults, the config file (`/etc/lunafs/lunafs.toml` or
//! `--config`/`$LUNAFS_CONFIG`), `$LUNAFS_OPTIONS`, then `-o` on the command line (and so
//! fstab, through `mount.lunafs`). Every source is turned into `-o`-style options and goes
//! through the one parser below, so a setting means the same wherever it is written. Every
//! option is in the README's configuration table; an unknown one is an error naming it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuser::{MountOption, SessionACL};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct MountConfig {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    /// Let users other than the one who mounted use the filesystem.
    pub allow_other: bool,
    /// Like allow_other, but only for root besides the owner.
    pub allow_root: bool,
    pub read_only: bool,
    /// Kernel attribute and entry cache lifetime.
    pub attr_timeout: Duration,
    /// Let the kernel gather writes in its page cache (see fs::init).
    /// None: on for the embedded store, off for a shared one (see `writeback`).
    pub writeback_cache: Option<bool>,
    /// FUSE worker threads.
    pub threads: usize,
    /// Threads that run handler calls (apart from the FUSE workers).
    pub call_threads: usize,
    /// Kernel mount flags passed through as given (nosuid, nodev, noexec, noatime, ...).
    pub flags: Vec<MountOption>,
    /// Per-call limits of Lua handlers (and notification scripts).
    pub lua_limits: crate::lua::Limits,
    /// How often the background script runs.
    pub background_interval: Duration,
    /// Credentials and limits for a shared store's etcd and Ceph.
    pub access: crate::store::location::Access,
    /// Where to serve Prometheus metrics (`crate::metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

impl MountConfig {
    pub fn new(store: PathBuf, mountpoint: PathBuf) -> Self {
        MountConfig {
            store,
            mountpoint,
            allow_other: false,
            allow_root: false,
            read_only: false,
            attr_timeout: Duration::from_secs(1),
            writeback_cache: None,
            threads: 4,
            call_threads: 4,
            flags: Vec::new(),
            lua_limits: crate::lua::Limits::default(),
            background_interval: Duration::from_secs(10),
            access: Default::default(),
            metrics: None,
        }
    }

    /// Whether the kernel gathers writes in its page cache. It then trusts its own idea of
    /// a file's size and mtime over ours for as long as it caches the inode, so a file that
    /// another mount grew would look cut short: off by default on a shared store.
    pub fn writeback(&self) -> bool {
        self.writeback_cache.unwrap_or_else(|| {
            matches!(
                self.location(),
                Ok(crate::store::location::Location::Embedded(_))
            )
        })
    }

    /// Where the store is: a directory, or a shared filesystem's `etcd://` URL.
    pub fn location(&self) -> Result<crate::store::location::Location> {
        crate::store::location::Location::parse(&self.store.to_string_lossy())
    }

    /// Applies comma-separated `-o` option lists, in order (a later option wins).
    pub fn apply_options<S: AsRef<str>>(&mut self, lists: &[S]) -> Result<()> {
        for list in lists {
            for opt in list.as_ref().split(',').filter(|o| !o.is_empty()) {
                self.apply(opt)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, opt: &str) -> Result<()> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let bad = |why: &str| Error::Usage(format!("mount option {opt:?}: {why}"));
        match (key, value) {
            ("allow_other", None) => self.allow_other = true,
            ("allow_root", None) => self.allow_root = true,
            ("ro", None) => self.read_only = true,
            ("rw", None) => self.read_only = false,
            ("writeback_cache", None) => self.writeback_cache = Some(true),
            ("no_writeback_cache", None) => self.writeback_cache = Some(false),
            ("attr_timeout", Some(v)) => {
                let secs: f64 = v.parse().map_err(|_| bad("expected seconds"))?;
                if !(0.0..=3600.0).contains(&secs) {
                    return Err(bad("must be between 0 and 3600 seconds"));
                }
                self.attr_timeout = Duration::from_secs_f64(secs);
            }
            ("threads", Some(v)) => {
                self.threads = thread_count(v).ok_or_else(|| bad("expected 1 to 64"))?
            }
            ("call_threads", Some(v)) => {
                self.call_threads = thread_count(v).ok_or_else(|| bad("expected 1 to 64"))?
            }
            ("lua_memory", Some(v)) => {
                self.lua_limits.memory = parse_size(v)
                    .filter(|&n| n >= 1 << 20)
                    .ok_or_else(|| bad("expected a size of at least 1M (e.g. 64M)"))?;
            }
            ("lua_instructions", Some(v)) => {
                self.lua_limits.instructions = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1000)
                    .ok_or_else(|| bad("expected a count of at least 1000"))?;
            }
            ("lua_timeout", Some(v)) => {
                let secs: f64 = v.parse().map_err(|_| bad("expected seconds"))?;
                if !(0.001..=3600.0).contains(&secs) {
                    return Err(bad("must be between 0.001 and 3600 seconds"));
                }
                self.lua_limits.time = Duration::from_secs_f64(secs);
            }
            ("background_interval", Some(v)) => {
                let secs: f64 = v.parse().map_err(|_| bad("expected seconds"))?;
                if !(0.01..=86400.0).contains(&secs) {
                    return Err(bad("must be between 0.01 and 86400 seconds"));
                }
                self.background_interval = Duration::from_secs_f64(secs);
            }
            ("backend_timeout", Some(v)) => {
                let secs: f64 = v.parse().map_err(|_| bad("expected seconds"))?;
                if !(0.1..=3600.0).contains(&secs) {
                    return Err(bad("must be between 0.1 and 3600 seconds"));
                }
                self.access.timeout = Duration::from_secs_f64(secs);
            }
            ("metrics", v) => self.metrics = Some(crate::metrics::parse_address(v)?),
            ("nometrics", None) => self.metrics = None,
            ("etcd_user", Some(v)) => self.access.etcd_user = Some(v.to_owned()),
            ("etcd_password_file", Some(v)) => self.access.etcd_password_file = Some(v.into()),
            ("etcd_ca", Some(v)) => self.access.etcd_ca = Some(v.into()),
            ("etcd_cert", Some(v)) => self.access.etcd_cert = Some(v.into()),
            ("etcd_key", Some(v)) => self.access.etcd_key = Some(v.into()),
            ("ceph_client", Some(v)) => self.access.ceph_client = Some(v.to_owned()),
            ("ceph_keyring", Some(v)) => self.access.ceph_keyring = Some(v.into()),
            // Always on: permission checks are the kernel's, from the mode bits we store.
            ("default_permissions", None) => {}
            // For mount(8) and systemd, not for us.
            (
                "defaults"
                | "nofail"
                | "_netdev"
                | "auto"
                | "noauto"
                | "user"
                | "nouser"
                | "users"
                | "x-systemd.automount",
                None,
            ) => {}
            ("suid", None) => self.flag(MountOption::Suid, MountOption::NoSuid),
            ("nosuid", None) => self.flag(MountOption::NoSuid, MountOption::Suid),
            ("dev", None) => self.flag(MountOption::Dev, MountOption::NoDev),
            ("nodev", None) => self.flag(MountOption::NoDev, MountOption::Dev),
            ("exec", None) => self.flag(MountOption::Exec, MountOption::NoExec),
            ("noexec", None) => self.flag(MountOption::NoExec, MountOption::Exec),
            ("atime", None) => self.flag(MountOption::Atime, MountOption::NoAtime),
            ("noatime", None) => self.flag(MountOption::NoAtime, MountOption::Atime),
            ("sync", None) => self.flag(MountOption::Sync, MountOption::Async),
            ("async", None) => self.flag(MountOption::Async, MountOption::Sync),
            ("noallow_other", None) => self.allow_other = false,
            ("noallow_root", None) => self.allow_root = false,
            // What mount(8)/libmount add on their own; atime flavours map to relatime, which
            // lunafs always does (see README).
            ("relatime" | "strictatime" | "lazytime" | "nodiratime" | "diratime", None) => {}
            ("user" | "comment", Some(_)) => {}
            (k, _) if k.starts_with("x-") => {} // fstab comments for other tools
            _ => return Err(bad("unknown option (see the README's configuration table)")),
        }
        Ok(())
    }

    /// Sets a kernel flag, replacing an earlier setting of it or its opposite (later wins).
    fn flag(&mut self, on: MountOption, opposite: MountOption) {
        self.flags.retain(|f| *f != on && *f != opposite);
        self.flags.push(on);
    }

    pub fn fuser_config(&self) -> fuser::Config {
        let mut c = fuser::Config::default();
        c.mount_options = vec![
            MountOption::FSName(format!("lunafs:{}", self.store.display())),
            MountOption::Subtype("lunafs".into()),
            MountOption::DefaultPermissions,
        ];
        if self.read_only {
            c.mount_options.push(MountOption::RO);
        }
        c.mount_options.extend(self.flags.iter().cloned());
        c.acl = if self.allow_other {
            SessionACL::All
        } else if self.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        c.n_threads = Some(self.threads);
        c.clone_fd = true;
        c
    }
}

/// A thread count option: 1 to 64.
fn thread_count(v: &str) -> Option<usize> {
    v.parse().ok().filter(|n| (1..=64).contains(n))
}

/// A byte size: a number with an optional K, M or G suffix (powers of 1024).
fn parse_size(v: &str) -> Option<usize> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    digits.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// Where the config file is read from when neither `--config` nor `$LUNAFS_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/lunafs/lunafs.toml";

/// What the config file and environment contribute before the command line.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Layered {
    /// `-o`-style options, in precedence order (later wins).
    pub options: Vec<String>,
    pub log_level: Option<String>,
}

impl Layered {
    /// Reads the config file (`explicit` must exist; the default path may be absent) and the
    /// LUNAFS_OPTIONS / LUNAFS_LOG_LEVEL environment variables.
    pub fn load(explicit: Option<&Path>) -> Result<Layered> {
        let env_path = std::env::var_os("LUNAFS_CONFIG").map(PathBuf::from);
        let mut layered = match explicit.map(Path::to_path_buf).or(env_path) {
            Some(path) => Layered::from_file(&path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Layered::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Layered::default(),
        };
        if let Ok(opts) = std::env::var("LUNAFS_OPTIONS") {
            layered.options.push(opts);
        }
        if let Ok(level) = std::env::var("LUNAFS_LOG_LEVEL") {
            layered.log_level = Some(level);
        }
        Ok(layered)
    }

    pub fn from_file(path: &Path) -> Result<Layered> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("config file {}", path.display()), e))?;
        Layered::parse(&text)
            .map_err(|e| Error::Usage(format!("config file {}: {e}", path.display())))
    }

    /// The config file format: `log_level = "info"` and a `[mount]` table whose keys are the
    /// `-o` options (`allow_other = true`, `attr_timeout = 2.5`, `read_only = true`, ...).
    pub fn parse(text: &str) -> std::result::Result<Layered, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        let mut out = Layered::default();
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("log_level", toml::Value::String(level)) => out.log_level = Some(level.clone()),
                ("mount", toml::Value::Table(mount)) => {
                    for (k, v) in mount {
                        out.options.push(option_of(k, v)?);
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown setting {key:?} (expected log_level or [mount])"
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// A `[mount]` entry as an `-o` option.
fn option_of(key: &str, value: &toml::Value) -> std::result::Result<String, String> {
    let name = if key == "read_only" { "ro" } else { key };
    Ok(match value {
        toml::Value::Boolean(true) => name.to_string(),
        toml::Value::Boolean(false) => match name {
            "ro" => "rw".into(),
            "writeback_cache" => "no_writeback_cache".into(),
            "allow_other" => "noallow_other".into(),
            "allow_root" => "noallow_root".into(),
            "metrics" => "nometrics".into(),
            _ => return Err(format!("[mount] {key} = false is not a setting")),
        },
        toml::Value::Integer(n) => format!("{name}={n}"),
        toml::Value::Float(f) => format!("{name}={f}"),
        toml::Value::String(s) => format!("{name}={s}"),
        other => return Err(format!("[mount] {key}: unexpected {}", other.type_str())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &str) -> Result<MountConfig> {
        let mut c = MountConfig::new("/s".into(), "/m".into());
        c.apply_options(&[opts])?;
        Ok(c)
    }

    #[test]
    fn fstab_style_options_parse() {
        let c = parse("allow_other,ro,attr_timeout=2.5,threads=8,nofail,_netdev,noatime").unwrap();
        assert!(c.allow_other && c.read_only);
        assert_eq!(c.attr_timeout, Duration::from_millis(2500));
        assert_eq!(c.threads, 8);
        assert_eq!(c.flags, vec![MountOption::NoAtime]);
    }

    #[test]
    fn lua_limits_parse_with_units() {
        let c = parse("lua_memory=32M,lua_instructions=5000,lua_timeout=0.5").unwrap();
        assert_eq!(c.lua_limits.memory, 32 << 20);
        assert_eq!(c.lua_limits.instructions, 5000);
        assert_eq!(c.lua_limits.time, Duration::from_millis(500));
        for bad in [
            "lua_memory=12",
            "lua_memory=xM",
            "lua_instructions=5",
            "lua_timeout=0",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn later_options_win_over_earlier_ones() {
        let c = parse("noatime,allow_other,ro,atime,noallow_other,rw").unwrap();
        assert_eq!(c.flags, vec![MountOption::Atime]);
        assert!(!c.allow_other && !c.read_only);
    }

    #[test]
    fn unknown_or_malformed_options_are_errors_naming_the_option() {
        for bad in ["bogus", "threads=0", "threads=x", "attr_timeout=-1", "ro=1"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn config_file_becomes_options_through_the_same_parser() {
        let l = Layered::parse(
            "log_level = \"debug\"\n[mount]\nallow_other = true\nread_only = true\nattr_timeout = 2.5\nthreads = 8\nwriteback_cache = false\n",
        )
        .unwrap();
        assert_eq!(l.log_level.as_deref(), Some("debug"));
        let mut c = MountConfig::new("/s".into(), "/m".into());
        c.apply_options(&l.options).unwrap();
        assert!(c.allow_other && c.read_only && !c.writeback());
        assert_eq!(
            (c.threads, c.attr_timeout),
            (8, Duration::from_millis(2500))
        );
    }

    #[test]
    fn bad_config_files_say_what_is_wrong() {
        assert!(Layered::parse("[mount\n").unwrap_err().len() > 3);
        assert!(Layered::parse("colour = 1").unwrap_err().contains("colour"));
        let l = Layered::parse("[mount]\nbogus = true").unwrap();
        let mut c = MountConfig::new("/s".into(), "/m".into());
        assert!(c
            .apply_options(&l.options)
            .unwrap_err()
            .to_string()
            .contains("bogus"));
    }
}
