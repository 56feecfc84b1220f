//! Where a store lives, as users write it, and opening the engines it names.
//!
//! - a directory: the embedded store (RocksDB metadata, inline data);
//! - `etcd://H:P[,H:P...]/NAME`: a shared filesystem, metadata under `/<NAME>/` on etcd, its
//!   data engine recorded in the filesystem itself at `lunafs format` (`rados://POOL[?conf=
//!   FILE]`), so every mount finds the same data with only the etcd address.
//!
//! Credentials are per machine, not per filesystem: `Access` carries the etcd user and TLS
//! files and the Ceph client name and keyring (mount options, or `lunafs format` flags).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::data::slices::Slices;
use super::etcd::{Etcd, EtcdConfig};
use super::keys;
use super::meta::{Meta, Outcome};
use super::rados::{Pool, RadosConfig};
use super::schema::Cf;
use super::Store;
use crate::error::{Error, Result};

/// How long one backend request may take before the operation fails with EIO.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Embedded(PathBuf),
    Etcd {
        endpoints: Vec<String>,
        name: String,
    },
}

/// Per-machine credentials and limits for the shared engines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub etcd_user: Option<String>,
    /// A file whose first line is the etcd password (kept out of `ps` and fstab).
    pub etcd_password_file: Option<PathBuf>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub ceph_client: Option<String>,
    pub ceph_keyring: Option<PathBuf>,
    pub timeout: Duration,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            etcd_user: None,
            etcd_password_file: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            ceph_client: None,
            ceph_keyring: None,
            timeout: DEFAULT_BACKEND_TIMEOUT,
        }
    }
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        let Some(rest) = s.strip_prefix("etcd://") else {
            if s.contains("://") {
                return Err(Error::Usage(format!(
                    "{s:?}: unknown store URL (expected a directory or etcd://HOST:PORT/NAME)"
                )));
            }
            return Ok(Location::Embedded(PathBuf::from(s)));
        };
        let bad = |why: &str| {
            Error::Usage(format!(
                "{s:?}: {why} (expected etcd://HOST:PORT[,HOST:PORT]/NAME)"
            ))
        };
        let (hosts, name) = rest
            .split_once('/')
            .ok_or_else(|| bad("no filesystem name"))?;
        let endpoints: Vec<String> = hosts.split(',').map(str::to_owned).collect();
        for e in &endpoints {
            let port = e.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if !matches!(port, Some((h, Ok(_))) if !h.is_empty()) {
                return Err(bad(&format!("endpoint {e:?} is not HOST:PORT")));
            }
        }
        valid_name(name).map_err(|why| bad(&why))?;
        Ok(Location::Etcd {
            endpoints,
            name: name.to_owned(),
        })
    }

    /// The location as the user writes it.
    pub fn describe(&self) -> String {
        match self {
            Location::Embedded(p) => p.display().to_string(),
            Location::Etcd { endpoints, name } => format!("etcd://{}/{name}", endpoints.join(",")),
        }
    }

    fn etcd_config(&self, access: &Access) -> Result<Option<EtcdConfig>> {
        let Location::Etcd { endpoints, name } = self else {
            return Ok(None);
        };
        let password = match (&access.etcd_user, &access.etcd_password_file) {
            (Some(_), Some(f)) => Some(read_password(f)?),
            (Some(_), None) => std::env::var("LUNAFS_ETCD_PASSWORD").ok(),
            (None, _) => None,
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let cert = match (path(&access.etcd_cert), path(&access.etcd_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(Error::Usage("etcd_cert and etcd_key go together".into())),
        };
        Ok(Some(EtcdConfig {
            endpoints: endpoints.clone(),
            name: name.clone(),
            user: access
                .etcd_user
                .clone()
                .map(|u| (u, password.unwrap_or_default())),
            ca: path(&access.etcd_ca),
            cert,
            timeout: access.timeout,
        }))
    }
}

/// Filesystem names: what etcd keys, RADOS namespaces and mount sources all accept.
fn valid_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "filesystem name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )),
    }
}

fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("etcd password file {}", path.display()), e))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// `rados://POOL[?conf=FILE]`, the data engine of a shared filesystem.
pub fn parse_data_url(url: &str) -> Result<RadosConfig> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "data URL {url:?}: {why} (expected rados://POOL[?conf=FILE])"
        ))
    };
    let rest = url
        .strip_prefix("rados://")
        .ok_or_else(|| bad("not a rados:// URL"))?;
    let (pool, query) = rest.split_once('?').unwrap_or((rest, ""));
    if pool.is_empty() || pool.contains('/') {
        return Err(bad("no pool name"));
    }
    let mut cfg = RadosConfig {
        pool: pool.to_owned(),
        conf: None,
        client: None,
        keyring: None,
        timeout_secs: DEFAULT_BACKEND_TIMEOUT.as_secs(),
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("conf", v)) if !v.is_empty() => cfg.conf = Some(v.to_owned()),
            _ => return Err(bad(&format!("unknown parameter {pair:?}"))),
        }
    }
    Ok(cfg)
}

/// The data engine of the shared filesystem `name`, with this machine's credentials.
fn connect_data(url: &str, name: &str, access: &Access) -> Result<Slices> {
    let mut cfg = parse_data_url(url)?;
    cfg.client = access.ceph_client.clone();
    cfg.keyring = access
        .ceph_keyring
        .as_ref()
        .map(|k| k.display().to_string());
    cfg.timeout_secs = access.timeout.as_secs().max(1);
    Slices::new(Pool::connect(&cfg, name)?)
}

impl Store {
    /// Opens the store at `loc`. A shared filesystem must have been formatted; the embedded
    /// store is created on first open, as always.
    pub fn open_at(loc: &Location, access: &Access) -> Result<Store> {
        if let Location::Embedded(path) = loc {
            return Store::open(path);
        }
        let Some(cfg) = loc.etcd_config(access)? else {
            return Err(Error::Usage(format!(
                "{}: not a shared store",
                loc.describe()
            )));
        };
        let etcd = Etcd::connect(&cfg)?;
        let url = match etcd.get(Cf::Meta, keys::META_DATA_URL)? {
            Some((v, _)) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                return Err(Error::NotAStore {
                    path: loc.describe().into(),
                    why: "no such filesystem on this etcd (create it with lunafs format)".into(),
                })
            }
        };
        let data = connect_data(&url, &cfg.name, access)?;
        Store::with_engines(Box::new(etcd), Box::new(data), Path::new(&loc.describe()))
    }

    /// Creates the shared filesystem `loc` with its data at `data_url`; refuses a name that
    /// exists. Checks that the data engine answers before writing anything.
    pub fn format(loc: &Location, data_url: &str, access: &Access) -> Result<Store> {
        let Some(cfg) = loc.etcd_config(access)? else {
            return Err(Error::Usage(format!(
                "{}: only shared filesystems are formatted (an embedded store is created by its first mount)",
                loc.describe()
            )));
        };
        let etcd = Etcd::connect(&cfg)?;
        let taken = Error::Exists(format!("filesystem {}", loc.describe()));
        if etcd.get(Cf::Meta, keys::META_DATA_URL)?.is_some() || has_any_key(&etcd)? {
            return Err(taken);
        }
        let data = connect_data(data_url, &cfg.name, access)?;
        let mut w = etcd.writes();
        w.check(Cf::Meta, keys::META_DATA_URL, 0);
        w.put(Cf::Meta, keys::META_DATA_URL, data_url.as_bytes());
        if w.commit()? == Outcome::Conflict {
            return Err(taken);
        }
        Store::with_engines(Box::new(etcd), Box::new(data), Path::new(&loc.describe()))
    }
}

fn has_any_key(meta: &dyn Meta) -> Result<bool> {
    for cf in Cf::ALL {
        if meta.last_key(cf)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_bad_ones_say_why() {
        assert_eq!(
            Location::parse("etcd://a:1,b:2/photos").unwrap(),
            Location::Etcd {
                endpoints: vec!["a:1".into(), "b:2".into()],
                name: "photos".into()
            }
        );
        assert_eq!(
            Location::parse("/srv/store").unwrap(),
            Location::Embedded("/srv/store".into())
        );
        for (bad, says) in [
            ("etcd://a:1", "no filesystem name"),
            ("etcd://a/x", "not HOST:PORT"),
            ("etcd://a:1/", "filesystem name"),
            ("etcd://a:1/x/y", "filesystem name"),
            ("s3://b/x", "unknown store URL"),
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn data_urls_parse() {
        let c = parse_data_url("rados://lunafs?conf=/etc/ceph/x.conf").unwrap();
        assert_eq!(
            (c.pool.as_str(), c.conf.as_deref()),
            ("lunafs", Some("/etc/ceph/x.conf"))
        );
        assert!(parse_data_url("rados://p").unwrap().conf.is_none());
        for bad in ["s3://p", "rados://", "rados://p?x=1"] {
            assert!(parse_data_url(bad).is_err(), "{bad}");
        }
    }
}
