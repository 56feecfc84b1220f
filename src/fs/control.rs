//! The hidden `/.lunafs` control directory: a virtual tree answered by the adapter, never
//! stored as files. It is reachable by name from the root but not listed there.
//!
//! ```text
//! /.lunafs/version            what this lunafs is and which store format it speaks
//! /.lunafs/stats              counters (see `fs::stats`), generated at open
//! /.lunafs/call               handler calls: request/response on one open file (`fs::call`)
//! /.lunafs/classes/NAME.lua   object classes: write to install, read the source, unlink
//! /.lunafs/packages/MODULE@VERSION.lua   Lua modules for `require`, same operations
//! /.lunafs/topics/NAME.toml                NATS topics (see `events::config`)
//! /.lunafs/notifications/BUCKET.toml       a bucket's notifications
//! /.lunafs/notify/BUCKET.lua               a bucket's notification script
//! /.lunafs/background.lua                  the background script
//! /.lunafs/global                          the scripts' global table, as JSON (read-only)
//! ```
//!
//! Class, module and notification files are stored at close (the first flush after writing): a syntax
//! error fails that close with EINVAL and is logged, and the store keeps what it had. Only
//! the mount's owner may change them (mode bits, enforced by the kernel). Files are read and
//! written with direct I/O, so the kernel neither caches them nor trusts their size.

use std::collections::HashMap;
use std::time::SystemTime;

use fuser::{FileAttr, FileType, INodeNo};
use parking_lot::Mutex;

use crate::core::class::ModuleId;
use crate::core::events::Setting as Item;
use crate::core::{Core, FIRST_VIRTUAL_INO};
use crate::error::{Error, Result};
use crate::store::keys::Ino;
use crate::store::schema::{CHUNK_SIZE, SCHEMA_VERSION};

pub const DIR_INO: Ino = FIRST_VIRTUAL_INO;
pub const VERSION_INO: Ino = FIRST_VIRTUAL_INO + 1;
/// Request counters and store facts as JSON, generated at each open (by the adapter, which
/// owns the counters).
pub const STATS_INO: Ino = FIRST_VIRTUAL_INO + 2;
pub const CALL_INO: Ino = FIRST_VIRTUAL_INO + 3;
pub const CLASSES_INO: Ino = FIRST_VIRTUAL_INO + 4;
pub const PACKAGES_INO: Ino = FIRST_VIRTUAL_INO + 5;
pub const TOPICS_INO: Ino = FIRST_VIRTUAL_INO + 6;
pub const NOTIFICATIONS_INO: Ino = FIRST_VIRTUAL_INO + 7;
pub const NOTIFY_INO: Ino = FIRST_VIRTUAL_INO + 8;
pub const GLOBAL_INO: Ino = FIRST_VIRTUAL_INO + 9;
/// Class and module files get numbers from here on, one per name for the mount's life.
const FIRST_DYNAMIC: Ino = FIRST_VIRTUAL_INO + 0x1000;

const SUFFIX: &str = ".lua";
const TOML: &str = ".toml";
const BACKGROUND: &str = "background.lua";

/// What a control inode is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    Dir,
    Version,
    Stats,
    Call,
    ClassesDir,
    PackagesDir,
    Class(String),
    Module(ModuleId),
    TopicsDir,
    NotificationsDir,
    NotifyDir,
    Global,
    /// A notification setting or script.
    Setting(Item),
}

impl Node {
    /// A stored file (class, module, notification setting): writable by the owner.
    pub fn is_script(&self) -> bool {
        matches!(self, Node::Class(_) | Node::Module(_) | Node::Setting(_))
    }
}

/// Parses `MODULE@VERSION.lua` (MODULE is the package name or `package.sub`).
fn module_file(name: &str) -> Option<ModuleId> {
    let (module, version) = name.strip_suffix(SUFFIX)?.split_once('@')?;
    let package = module.split('.').next()?;
    Some(ModuleId {
        package: package.to_string(),
        version: version.to_string(),
        module: module.to_string(),
    })
}

fn module_file_name(id: &ModuleId) -> String {
    format!("{}@{}{SUFFIX}", id.module, id.version)
}

#[derive(Default)]
struct Dynamic {
    by_ino: HashMap<Ino, Node>,
    by_node: HashMap<Node, Ino>,
}

pub struct Control {
    since: SystemTime,
    uid: u32,
    gid: u32,
    version: Vec<u8>,
    dynamic: Mutex<Dynamic>,
}

impl Control {
    pub fn new(uid: u32, gid: u32) -> Self {
        Control {
            since: SystemTime::now(),
            uid,
            gid,
            version: format!(
                "lunafs {}\nschema {SCHEMA_VERSION}\nchunk_size {CHUNK_SIZE}\n",
                env!("CARGO_PKG_VERSION")
            )
            .into_bytes(),
            dynamic: Mutex::new(Dynamic::default()),
        }
    }

    pub fn owns(ino: Ino) -> bool {
        ino >= FIRST_VIRTUAL_INO
    }

    /// Whether a request on `ino` is monitoring's own: `/.lunafs` and `/.lunafs/stats`. Such
    /// requests go uncounted, so that reading the stats does not change them.
    pub fn is_monitoring(ino: Ino) -> bool {
        ino == STATS_INO || ino == DIR_INO
    }

    /// The same for a lookup of `name` in `parent`.
    pub fn is_monitoring_lookup(parent: Ino, name: &[u8]) -> bool {
        (parent == crate::core::ROOT && name == crate::core::names::CONTROL_DIR)
            || (parent == DIR_INO && name == b"stats")
    }

    /// The inode number of a dynamic node, assigned on first sight.
    fn ino_of(&self, node: Node) -> Ino {
        let mut d = self.dynamic.lock();
        if let Some(&ino) = d.by_node.get(&node) {
            return ino;
        }
        let ino = FIRST_DYNAMIC + d.by_ino.len() as u64;
        d.by_ino.insert(ino, node.clone());
        d.by_node.insert(node, ino);
        ino
    }

    pub fn node(&self, ino: Ino) -> Result<Node> {
        Ok(match ino {
            DIR_INO => Node::Dir,
            VERSION_INO => Node::Version,
            STATS_INO => Node::Stats,
            CALL_INO => Node::Call,
            CLASSES_INO => Node::ClassesDir,
            PACKAGES_INO => Node::PackagesDir,
            TOPICS_INO => Node::TopicsDir,
            NOTIFICATIONS_INO => Node::NotificationsDir,
            NOTIFY_INO => Node::NotifyDir,
            GLOBAL_INO => Node::Global,
            _ => self
                .dynamic
                .lock()
                .by_ino
                .get(&ino)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("control inode {ino}")))?,
        })
    }

    /// The stored contents of a script node (None if it is not stored, e.g. just created).
    fn stored(&self, core: &Core, node: &Node) -> Result<Option<Vec<u8>>> {
        match node {
            Node::Class(name) => Ok(core.class(name)?.map(|s| s.source.to_vec())),
            Node::Module(id) => match core.package_source(id) {
                Ok(s) => Ok(Some(s)),
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            Node::Setting(item) => core.setting_get(item),
            _ => Ok(None),
        }
    }

    pub fn attr(&self, core: &Core, ino: Ino) -> Result<FileAttr> {
        let node = self.node(ino)?;
        let (kind, perm, nlink, size) = match &node {
            Node::Dir => (FileType::Directory, 0o755, 4, 0),
            Node::ClassesDir
            | Node::PackagesDir
            | Node::TopicsDir
            | Node::NotificationsDir
            | Node::NotifyDir => (FileType::Directory, 0o755, 2, 0),
            Node::Version | Node::Stats | Node::Global => (FileType::RegularFile, 0o444, 1, 0),
            // Anyone may send calls; each call checks the caller's access to its object.
            Node::Call => (FileType::RegularFile, 0o666, 1, 0),
            Node::Class(_) | Node::Module(_) | Node::Setting(_) => {
                let len = self.stored(core, &node)?.map_or(0, |s| s.len() as u64);
                (FileType::RegularFile, 0o644, 1, len)
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.since,
            mtime: self.since,
            ctime: self.since,
            crtime: self.since,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The node a new file `name` in directory `parent` would be (create), validated.
    pub fn new_node(&self, parent: Ino, name: &[u8]) -> Result<Node> {
        let shown = || String::from_utf8_lossy(name).into_owned();
        let name = std::str::from_utf8(name).map_err(|_| Error::InvalidName(shown()))?;
        let node = match parent {
            CLASSES_INO => {
                let class = name.strip_suffix(SUFFIX).ok_or_else(|| {
                    Error::InvalidArgument(format!("{name}: class files are named CLASS.lua"))
                })?;
                crate::core::class::check_new_class(class)?;
                Node::Class(class.to_string())
            }
            PACKAGES_INO => Node::Module(module_file(name).ok_or_else(|| {
                Error::InvalidArgument(format!("{name}: module files are named MODULE@VERSION.lua"))
            })?),
            TOPICS_INO | NOTIFICATIONS_INO | NOTIFY_INO => {
                let (make, suffix, what) = settings_dir(parent);
                let base = name
                    .strip_suffix(suffix)
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| Error::InvalidArgument(format!("{name}: {what}")))?;
                if parent == TOPICS_INO {
                    crate::notify::config::check_name(base, "topic")?;
                }
                Node::Setting(make(base.to_string()))
            }
            DIR_INO if name == BACKGROUND => Node::Setting(Item::Background),
            _ => {
                return Err(Error::NotPermitted(format!(
                    "/.lunafs: cannot create {name}"
                )))
            }
        };
        Ok(node)
    }

    /// The inode of `node`, for a reply.
    pub fn ino(&self, node: Node) -> Ino {
        match node {
            Node::Dir => DIR_INO,
            Node::Version => VERSION_INO,
            Node::Stats => STATS_INO,
            Node::Call => CALL_INO,
            Node::ClassesDir => CLASSES_INO,
            Node::PackagesDir => PACKAGES_INO,
            Node::TopicsDir => TOPICS_INO,
            Node::NotificationsDir => NOTIFICATIONS_INO,
            Node::NotifyDir => NOTIFY_INO,
            Node::Global => GLOBAL_INO,
            dynamic => self.ino_of(dynamic),
        }
    }

    pub fn lookup(&self, core: &Core, parent: Ino, name: &[u8]) -> Result<FileAttr> {
        let missing = || Error::NotFound(String::from_utf8_lossy(name).into_owned());
        let node = match (parent, name) {
            (DIR_INO, b"version") => Node::Version,
            (DIR_INO, b"stats") => Node::Stats,
            (DIR_INO, b"call") => Node::Call,
            (DIR_INO, b"classes") => Node::ClassesDir,
            (DIR_INO, b"packages") => Node::PackagesDir,
            (DIR_INO, b"topics") => Node::TopicsDir,
            (DIR_INO, b"notifications") => Node::NotificationsDir,
            (DIR_INO, b"notify") => Node::NotifyDir,
            (DIR_INO, b"global") => Node::Global,
            (CLASSES_INO | PACKAGES_INO | TOPICS_INO | NOTIFICATIONS_INO | NOTIFY_INO, _)
            | (DIR_INO, b"background.lua") => {
                let node = self.new_node(parent, name).map_err(|_| missing())?;
                if self.stored(core, &node)?.is_none() {
                    return Err(missing());
                }
                node
            }
            _ => return Err(missing()),
        };
        self.attr(core, self.ino(node))
    }

    /// Entries of a control directory (without `.` and `..`).
    pub fn entries(&self, core: &Core, ino: Ino) -> Result<Vec<(Ino, FileType, Vec<u8>)>> {
        let file = |node: Node, name: String| (self.ino(node), FileType::RegularFile, name.into());
        match self.node(ino)? {
            Node::Dir => {
                let mut list = vec![
                    (CALL_INO, FileType::RegularFile, b"call".to_vec()),
                    (CLASSES_INO, FileType::Directory, b"classes".to_vec()),
                    (GLOBAL_INO, FileType::RegularFile, b"global".to_vec()),
                    (
                        NOTIFICATIONS_INO,
                        FileType::Directory,
                        b"notifications".to_vec(),
                    ),
                    (NOTIFY_INO, FileType::Directory, b"notify".to_vec()),
                    (PACKAGES_INO, FileType::Directory, b"packages".to_vec()),
                    (STATS_INO, FileType::RegularFile, b"stats".to_vec()),
                    (TOPICS_INO, FileType::Directory, b"topics".to_vec()),
                    (VERSION_INO, FileType::RegularFile, b"version".to_vec()),
                ];
                if core.setting_get(&Item::Background)?.is_some() {
                    list.push(file(Node::Setting(Item::Background), BACKGROUND.into()));
                }
                Ok(list)
            }
            Node::TopicsDir | Node::NotificationsDir | Node::NotifyDir => {
                let (make, suffix, _) = settings_dir(ino);
                Ok(core
                    .settings_of(make)?
                    .into_iter()
                    .map(|item| {
                        let name = format!("{}{suffix}", item.name());
                        file(Node::Setting(item), name)
                    })
                    .collect())
            }
            Node::ClassesDir => Ok(core
                .class_names()?
                .into_iter()
                .map(|c| file(Node::Class(c.clone()), format!("{c}{SUFFIX}")))
                .collect()),
            Node::PackagesDir => Ok(core
                .packages()?
                .into_iter()
                .map(|m| {
                    let name = module_file_name(&m);
                    file(Node::Module(m), name)
                })
                .collect()),
            _ => Err(Error::NotDir(format!("control inode {ino}"))),
        }
    }

    /// The contents of a readable control file (not `stats`, which the adapter makes).
    pub fn contents(&self, core: &Core, node: &Node) -> Result<Vec<u8>> {
        match node {
            Node::Version => Ok(self.version.clone()),
            Node::Global => global_json(core),
            Node::Class(_) | Node::Module(_) | Node::Setting(_) => self
                .stored(core, node)?
                .ok_or_else(|| Error::NotFound(format!("{node:?}"))),
            _ => Err(Error::IsDir(format!("{node:?}"))),
        }
    }

    /// Stores a script file's new contents (at close).
    pub fn store(&self, core: &Core, node: &Node, data: &[u8]) -> Result<()> {
        match node {
            Node::Class(name) => core.class_put(name, data),
            Node::Module(id) => core.package_put(id, data),
            Node::Setting(item) => core.setting_put(item, data),
            _ => Err(Error::NotPermitted(format!(
                "/.lunafs: {node:?} is read-only"
            ))),
        }
    }

    /// unlink inside `/.lunafs`: removes a class or one module version.
    pub fn remove(&self, core: &Core, parent: Ino, name: &[u8]) -> Result<()> {
        match self.new_node(parent, name)? {
            Node::Class(c) => core.class_remove(&c),
            Node::Module(m) => core
                .package_remove(&m.package, Some(&m.version), Some(&m.module))
                .map(|_| ()),
            Node::Setting(item) => core.setting_remove(&item),
            _ => Err(Error::NotPermitted("/.lunafs".into())),
        }
    }
}

/// What the settings directory `ino` holds: the item kind, its files' suffix, and how its
/// files are named (for errors).
fn settings_dir(ino: Ino) -> (fn(String) -> Item, &'static str, &'static str) {
    match ino {
        TOPICS_INO => (Item::Topic, TOML, "topic files are named TOPIC.toml"),
        NOTIFICATIONS_INO => (
            Item::Notifications,
            TOML,
            "notification files are named BUCKET.toml",
        ),
        _ => (
            Item::Script,
            SUFFIX,
            "notification scripts are named BUCKET.lua",
        ),
    }
}

/// `/.lunafs/global`: the global table as one JSON object.
fn global_json(core: &Core) -> Result<Vec<u8>> {
    use crate::store::codec::events::GlobalValue as TableValue;
    let map: serde_json::Map<String, serde_json::Value> = core
        .global_entries()?
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                TableValue::Str(s) => String::from_utf8_lossy(&s).into_owned().into(),
                TableValue::Int(i) => i.into(),
                TableValue::Num(n) => n.into(),
                TableValue::Bool(b) => b.into(),
            };
            (k, v)
        })
        .collect();
    let mut out = serde_json::Value::Object(map).to_string().into_bytes();
    out.push(b'\n');
    Ok(out)
}

/// The part of `data` a read of `len` bytes at `offset` returns.
pub fn slice(data: &[u8], offset: u64, len: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(len as usize).min(data.len());
    &data[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_file_names_round_trip() {
        let id = module_file("json.util@1.2.0.lua").unwrap();
        assert_eq!(id.package, "json");
        assert_eq!(id.module, "json.util");
        assert_eq!(id.version, "1.2.0");
        assert_eq!(module_file_name(&id), "json.util@1.2.0.lua");
        assert!(module_file("json.lua").is_none());
        assert!(module_file("json@1").is_none());
    }
}
