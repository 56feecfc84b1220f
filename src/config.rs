//! Mount configuration: the `-o` options of `lunafs mount` (and, through `mount.lunafs`, of
//! fstab), parsed once into a validated `MountConfig`. Every option is documented in the
//! README's configuration table; an unknown option is an error, not a silent no-op.

use std::path::PathBuf;
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
    pub writeback_cache: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Kernel mount flags passed through as given (nosuid, nodev, noexec, noatime, ...).
    pub flags: Vec<MountOption>,
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
            writeback_cache: true,
            threads: 4,
            flags: Vec::new(),
        }
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
            ("writeback_cache", None) => self.writeback_cache = true,
            ("no_writeback_cache", None) => self.writeback_cache = false,
            ("attr_timeout", Some(v)) => {
                let secs: f64 = v.parse().map_err(|_| bad("expected seconds"))?;
                if !(0.0..=3600.0).contains(&secs) {
                    return Err(bad("must be between 0 and 3600 seconds"));
                }
                self.attr_timeout = Duration::from_secs_f64(secs);
            }
            ("threads", Some(v)) => {
                self.threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| bad("expected 1 to 64"))?;
            }
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
            ("suid", None) => self.flags.push(MountOption::Suid),
            ("nosuid", None) => self.flags.push(MountOption::NoSuid),
            ("dev", None) => self.flags.push(MountOption::Dev),
            ("nodev", None) => self.flags.push(MountOption::NoDev),
            ("exec", None) => self.flags.push(MountOption::Exec),
            ("noexec", None) => self.flags.push(MountOption::NoExec),
            ("atime", None) => self.flags.push(MountOption::Atime),
            ("noatime", None) => self.flags.push(MountOption::NoAtime),
            ("sync", None) => self.flags.push(MountOption::Sync),
            ("async", None) => self.flags.push(MountOption::Async),
            (k, _) if k.starts_with("x-") => {} // fstab comments for other tools
            _ => return Err(bad("unknown option (see the README's configuration table)")),
        }
        Ok(())
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
    fn unknown_or_malformed_options_are_errors_naming_the_option() {
        for bad in ["bogus", "threads=0", "threads=x", "attr_timeout=-1", "ro=1"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
