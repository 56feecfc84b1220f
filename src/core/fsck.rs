//! `lunafs fsck`: an offline check of every invariant the store layout promises, and the
//! repairs that are safe (they remove only what nothing can reach, or make counts and
//! back-pointers agree with the directory entries, which are the source of truth).
//!
//! Invariants: the root exists and is a directory; every entry lives in an existing directory
//! and names an existing inode of the kind it records; every inode is reachable from the root;
//! a file's nlink is its number of entries and a directory's is 2 + its subdirectories; a
//! directory has one entry, and its `parent` and `bucket` agree with it; a file's `bucket` is
//! that of its directories; chunks belong to existing files and hold no byte past the size;
//! omap/xattr entries belong to existing inodes; orphan records name unlinked inodes; the
//! inode-number reservation is above every inode; every queued event is a well-formed
//! queued event (`codec::events::QueuedEvent`) numbered below the event-sequence reservation.
//!
//! An inode record that exists but cannot be decoded is damage fsck cannot repair; nothing
//! that refers to it (entries, data, attributes) is touched, and without a sound root no
//! repair is made at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::ROOT;
use crate::error::Result;
use crate::store::codec::{Dentry, Inode, Kind};
use crate::store::data::{Fix, Owner};
use crate::store::keys;
use crate::store::keys::Ino;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub problem: String,
    /// Whether `--repair` fixes it (and, if repairing, did).
    pub repairable: bool,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub inodes: usize,
    pub entries: usize,
    pub chunks: usize,
    /// Inodes unlinked while open; the next mount purges them.
    pub orphans: usize,
    /// Events queued for delivery.
    pub events: usize,
    pub repaired: bool,
}

impl Report {
    /// fsck(8) exit codes: 0 clean, 1 errors corrected, 4 errors left uncorrected.
    pub fn exit_code(&self) -> i32 {
        if self.findings.is_empty() {
            0
        } else if self.repaired && self.findings.iter().all(|f| f.repairable) {
            1
        } else {
            4
        }
    }
}

#[derive(Default)]
struct Scan {
    report: Report,
    inodes: HashMap<Ino, Inode>,
    /// Records that exist but do not decode: never treated as missing.
    damaged: BTreeSet<Ino>,
    /// Entries by directory: (child, kind recorded by the inode).
    children: HashMap<Ino, Vec<Ino>>,
    /// Entries naming each inode.
    links: HashMap<Ino, u32>,
    subdirs: HashMap<Ino, u32>,
    dir_parents: HashMap<Ino, Vec<Ino>>,
    // Repairs, applied in one batch.
    drop_entries: Vec<(Ino, Vec<u8>)>,
    fix_entries: Vec<(Ino, Vec<u8>, Dentry)>,
    fix_inodes: BTreeMap<Ino, Inode>,
    purge: BTreeSet<Ino>,
    /// Inodes whose data past a size goes.
    trim_data: BTreeMap<Ino, u64>,
    drop_orphans: Vec<Ino>,
    reserve_above: Option<Ino>,
    drop_events: Vec<u64>,
    reserve_events_above: Option<u64>,
}

impl Scan {
    fn find(&mut self, repairable: bool, problem: String) {
        self.report.findings.push(Finding {
            problem,
            repairable,
        });
    }
}

/// Told how far a check has come (the CLI draws a progress bar from it).
pub trait Progress {
    /// A new step begins, of `total` items when known.
    fn step(&self, name: &'static str, total: Option<u64>);
    /// One more item of the current step is checked.
    fn item(&self);
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _: &'static str, _: Option<u64>) {}
    fn item(&self) {}
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Checks the store and, with `repair`, applies the safe repairs in one batch.
pub fn fsck(store: &Store, repair: bool) -> Result<Report> {
    fsck_showing(store, repair, &Quiet)
}

/// `fsck`, telling `progress` how far it has come.
pub fn fsck_showing(store: &Store, repair: bool, progress: &dyn Progress) -> Result<Report> {
    let mut s = Scan::default();
    progress.step("inodes", None);
    store.scan_inodes(|ino, r| {
        progress.item();
        match r {
            Ok(inode) => {
                s.inodes.insert(ino, inode);
            }
            Err(e) => {
                s.damaged.insert(ino);
                s.find(false, format!("inode {ino}: {e}"));
            }
        }
    })?;
    s.report.inodes = s.inodes.len() + s.damaged.len();
    let root_problem = match s.inodes.get(&ROOT) {
        None if s.report.inodes == 0 => return Ok(s.report), // never initialized
        None if s.damaged.contains(&ROOT) => Some("the root inode is damaged"),
        None => Some("the root inode is missing"),
        Some(r) if r.kind != Kind::Dir => Some("the root inode is not a directory"),
        Some(_) => None,
    };
    if let Some(problem) = root_problem {
        // Everything hangs off the root: no other verdict is safe to act on.
        s.find(
            false,
            format!("{problem}; nothing else is checked or repaired"),
        );
        return Ok(s.report);
    }
    check_entries(store, &mut s, progress)?;
    check_inodes(store, &mut s, progress)?;
    progress.step("data", None);
    check_data(store, &mut s)?;
    check_queue(store, &mut s, progress)?;
    progress.step("attributes", None);
    store.scan_attr_owners(|ino, name| {
        progress.item();
        if !s.inodes.contains_key(&ino) && !s.damaged.contains(&ino) && s.purge.insert(ino) {
            s.find(
                true,
                format!("attribute {} of missing inode {ino}", show(name)),
            );
        }
    })?;
    let max = s.inodes.keys().max().copied().unwrap_or(ROOT);
    if store.ino_reserved()? <= max && store.ino_reserved()? != 0 {
        s.reserve_above = Some(max);
        s.find(
            true,
            format!("inode-number reservation is not above inode {max}"),
        );
    }
    if repair && !s.report.findings.is_empty() {
        apply(store, &mut s)?;
        s.report.repaired = true;
    }
    Ok(s.report)
}

fn check_entries(store: &Store, s: &mut Scan, progress: &dyn Progress) -> Result<()> {
    progress.step("reading entries", None);
    let mut entries = Vec::new();
    store.scan_dentries(|parent, name, r| {
        progress.item();
        entries.push((parent, name.to_vec(), r))
    })?;
    s.report.entries = entries.len();
    progress.step("entries", Some(entries.len() as u64));
    for (parent, name, r) in entries {
        progress.item();
        let at = format!("entry {:?} in directory {parent}", show(&name));
        let d = match r {
            Ok(d) => d,
            Err(e) => {
                s.find(true, format!("{at}: {e}"));
                s.drop_entries.push((parent, name));
                continue;
            }
        };
        if d.ino == ROOT {
            s.find(true, format!("{at}: names the root"));
            s.drop_entries.push((parent, name));
            continue;
        }
        if s.damaged.contains(&parent) || s.damaged.contains(&d.ino) {
            // Cannot be judged; keep it, and count it so its target is not purged.
            *s.links.entry(d.ino).or_insert(0) += 1;
            continue;
        }
        if !matches!(s.inodes.get(&parent), Some(p) if p.kind == Kind::Dir) {
            s.find(true, format!("{at}: the directory does not exist"));
            s.drop_entries.push((parent, name));
            continue;
        }
        let Some(child_kind) = s.inodes.get(&d.ino).map(|i| i.kind) else {
            s.find(true, format!("{at}: points to missing inode {}", d.ino));
            s.drop_entries.push((parent, name));
            continue;
        };
        if child_kind != d.kind {
            let kind = child_kind;
            s.find(
                true,
                format!(
                    "{at}: records kind {:?}, inode {} is {kind:?}",
                    d.kind, d.ino
                ),
            );
            s.fix_entries
                .push((parent, name.clone(), Dentry { ino: d.ino, kind }));
        }
        if crate::core::Name::new(&name).is_err() {
            s.find(false, format!("{at}: invalid name"));
        }
        if parent == ROOT && child_kind != Kind::Dir {
            s.find(false, format!("{at}: a non-directory at the root"));
        }
        *s.links.entry(d.ino).or_insert(0) += 1;
        s.children.entry(parent).or_default().push(d.ino);
        if child_kind == Kind::Dir {
            *s.subdirs.entry(parent).or_insert(0) += 1;
            s.dir_parents.entry(d.ino).or_default().push(parent);
        }
    }
    Ok(())
}

/// Walks the tree from the root: the bucket of every reachable inode, and the inodes whose
/// entries sit in more than one bucket.
fn walk(s: &Scan) -> (HashMap<Ino, Ino>, BTreeSet<Ino>) {
    let mut bucket_of = HashMap::from([(ROOT, 0)]);
    let mut split = BTreeSet::new();
    let mut queue = vec![ROOT];
    while let Some(dir) = queue.pop() {
        let here = bucket_of[&dir];
        for &child in s.children.get(&dir).map(Vec::as_slice).unwrap_or(&[]) {
            let bucket = if dir == ROOT { child } else { here };
            match bucket_of.get(&child) {
                Some(&seen) if seen != bucket => {
                    split.insert(child);
                }
                Some(_) => {}
                None => {
                    bucket_of.insert(child, bucket);
                    if s.inodes.get(&child).is_some_and(|i| i.kind == Kind::Dir) {
                        queue.push(child);
                    }
                }
            }
        }
    }
    (bucket_of, split)
}

fn check_inodes(store: &Store, s: &mut Scan, progress: &dyn Progress) -> Result<()> {
    let orphans: BTreeSet<Ino> = store.orphans()?.into_iter().collect();
    s.report.orphans = orphans.len();
    let (bucket_of, split) = walk(s);
    let mut inos: Vec<Ino> = s.inodes.keys().copied().collect();
    inos.sort_unstable();
    progress.step("inode links", Some(inos.len() as u64));
    for ino in inos {
        progress.item();
        let inode = s.inodes[&ino].clone();
        let links = s.links.get(&ino).copied().unwrap_or(0);
        let mut fixed = inode.clone();
        if ino != ROOT && links > 0 && !bucket_of.contains_key(&ino) {
            s.find(false, format!("inode {ino} is not reachable from the root"));
            continue;
        }
        if split.contains(&ino) {
            s.find(
                false,
                format!("inode {ino} has entries in more than one bucket"),
            );
            continue;
        }
        if inode.kind == Kind::Dir {
            fixed.nlink = 2 + s.subdirs.get(&ino).copied().unwrap_or(0);
            if ino != ROOT {
                match s.dir_parents.get(&ino).map(Vec::as_slice) {
                    None | Some([]) => {
                        s.find(
                            false,
                            format!("directory {ino} is not reachable from the root"),
                        );
                        continue;
                    }
                    Some([p]) => {
                        fixed.parent = *p;
                        fixed.bucket = bucket_of[&ino];
                    }
                    Some(many) => {
                        s.find(false, format!("directory {ino} has {} entries", many.len()));
                        continue;
                    }
                }
            }
        } else {
            fixed.nlink = links;
            if links == 0 {
                if inode.nlink == 0 && orphans.contains(&ino) {
                    continue; // unlinked while open: purged at the next mount
                }
                s.find(
                    true,
                    format!("inode {ino} has no entries and no orphan record"),
                );
                s.purge.insert(ino);
                continue;
            }
            fixed.bucket = bucket_of[&ino];
        }
        if fixed.nlink != inode.nlink {
            s.find(
                true,
                format!(
                    "inode {ino}: nlink {} should be {}",
                    inode.nlink, fixed.nlink
                ),
            );
        }
        if fixed.parent != inode.parent || fixed.bucket != inode.bucket {
            s.find(
                true,
                format!("inode {ino}: parent/bucket disagree with its entries"),
            );
        }
        if fixed != inode {
            s.fix_inodes.insert(ino, fixed);
        }
    }
    for ino in orphans {
        let has_entries = s.links.get(&ino).copied().unwrap_or(0) > 0;
        let keep = match s.inodes.get(&ino) {
            Some(i) => i.nlink == 0 && !has_entries,
            None => s.damaged.contains(&ino),
        };
        if !keep {
            s.find(
                true,
                format!("orphan record for inode {ino}, which is not unlinked"),
            );
            s.drop_orphans.push(ino);
        }
    }
    Ok(())
}

fn check_data(store: &Store, s: &mut Scan) -> Result<()> {
    let owner = |ino: Ino| match s.inodes.get(&ino) {
        Some(i) if i.kind == Kind::File => Owner::File { size: i.size },
        Some(_) => Owner::Other,
        None if s.damaged.contains(&ino) => Owner::Damaged,
        None => Owner::Missing,
    };
    let checked = store.check_data(&owner)?;
    s.report.chunks = checked.units;
    for f in checked.findings {
        match f.fix {
            Fix::Trim(size) => {
                s.trim_data.insert(f.ino, size);
                s.find(true, f.problem);
            }
            Fix::Purge => {
                if s.purge.insert(f.ino) {
                    s.find(true, f.problem);
                }
            }
            Fix::None => s.find(false, f.problem),
        }
    }
    Ok(())
}

/// Queued events: each decodes as a record (an undecodable one can never be delivered:
/// repair drops it), and the sequence reservation is above them all (else new events could
/// reuse a number: repair raises it).
fn check_queue(store: &Store, s: &mut Scan, progress: &dyn Progress) -> Result<()> {
    progress.step("queued events", None);
    let reserved = store.event_reserved()?;
    let mut from = 0;
    loop {
        let page = store.events(from, 1024)?;
        let Some(last) = page.last().map(|(seq, _)| *seq) else {
            break;
        };
        from = last + 1;
        for (seq, event) in page {
            progress.item();
            s.report.events += 1;
            if let Err(e) = event {
                s.find(true, format!("queued event {seq}: {e}"));
                s.drop_events.push(seq);
            }
            if seq >= reserved && s.reserve_events_above.is_none_or(|m| seq > m) {
                s.reserve_events_above = Some(seq);
            }
        }
    }
    if let Some(max) = s.reserve_events_above {
        s.find(
            true,
            format!("queued event {max} is not below the event sequence reservation {reserved}"),
        );
    }
    Ok(())
}

fn apply(store: &Store, s: &mut Scan) -> Result<()> {
    let mut batch = store.batch();
    for &seq in &s.drop_events {
        batch.delete_event(seq);
    }
    if let Some(max) = s.reserve_events_above {
        batch.put_reserved(keys::META_EVENT_RESERVED, max + 1);
    }
    for (parent, name) in &s.drop_entries {
        batch.delete_dentry(*parent, name);
    }
    for (parent, name, d) in &s.fix_entries {
        batch.put_dentry(*parent, name, *d);
    }
    for inode in s.fix_inodes.values() {
        batch.put_inode(inode);
    }
    for (&ino, &size) in &s.trim_data {
        batch.trim_data(ino, size)?;
    }
    for &ino in &s.drop_orphans {
        batch.delete_orphan(ino);
    }
    for &ino in &s.purge {
        batch.purge_inode(ino)?;
    }
    if let Some(max) = s.reserve_above {
        batch.put_reserved(keys::META_INO_RESERVED, max + 1);
    }
    batch.commit()?;
    store.sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Core, Ctx, Name};
    use crate::store::keys;
    use crate::store::schema::Cf;

    const CTX: Ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: 1,
    };

    #[test]
    fn a_damaged_record_is_reported_and_nothing_that_refers_to_it_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let (bucket, sub, file) = {
            let core = Core::open(&path, (0, 0)).unwrap();
            let n = |s: &str| Name::new(s.as_bytes()).unwrap();
            let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
            let d = core.mkdir(CTX, b.ino, &n("d"), 0o755).unwrap();
            let f = core.create(CTX, d.ino, &n("f"), 0o644).unwrap();
            core.write(f.ino, 0, &[5u8; 40_000]).unwrap();
            core.setxattr(
                0,
                f.ino,
                b"user.k",
                b"v",
                crate::core::omap::SetMode::Upsert,
            )
            .unwrap();
            (b.ino, d.ino, f.ino)
        };
        let store = Store::open(&path).unwrap();
        store.put_raw(Cf::Inodes, &keys::inode(sub), b"\x09 not an inode");
        let stray = crate::store::codec::encode_blob(b"stray data on a directory");
        store.put_raw(Cf::Chunks, &keys::chunk(bucket, 0), &stray);

        let report = fsck(&store, true).unwrap();
        assert_eq!(report.exit_code(), 4, "{:?}", report.findings);
        assert!(report
            .findings
            .iter()
            .any(|f| !f.repairable && f.problem.starts_with(&format!("inode {sub}:"))));
        // The entry of the damaged directory, everything below it, and the bucket remain.
        assert!(store.dentry(bucket, b"d").unwrap().is_some());
        assert!(store.dentry(sub, b"f").unwrap().is_some());
        assert_eq!(store.inode(file).unwrap().unwrap().size, 40_000);
        assert_eq!(store.read(file, 0, 40_000).unwrap(), vec![5u8; 40_000]);
        assert_eq!(store.omap_get(file, b"k").unwrap().unwrap(), b"v");
        // The stray chunk went, the directory it sat on did not.
        assert!(store.inode(bucket).unwrap().is_some());
        assert!(store
            .meta()
            .get(Cf::Chunks, &keys::chunk(bucket, 0))
            .unwrap()
            .is_none());
    }

    #[test]
    fn without_a_sound_root_nothing_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let bucket = {
            let core = Core::open(&path, (0, 0)).unwrap();
            core.mkdir(CTX, ROOT, &Name::new(b"b").unwrap(), 0o755)
                .unwrap()
                .ino
        };
        let store = Store::open(&path).unwrap();
        store.put_raw(Cf::Inodes, &keys::inode(ROOT), b"garbage");
        let report = fsck(&store, true).unwrap();
        assert_eq!(report.exit_code(), 4);
        assert!(!report.repaired);
        assert!(store.dentry(ROOT, b"b").unwrap().is_some());
        assert!(store.inode(bucket).unwrap().is_some());
    }

    #[test]
    fn malformed_queued_events_are_found_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let core = Core::open(dir.path(), (0, 0)).unwrap();
        let store = &core.store;
        // A first-release (JSON) entry that is no event.
        store.put_raw(
            crate::store::schema::Cf::Queue,
            &crate::store::keys::event(1),
            b"\x01{\"not\": \"an event\"}",
        );
        let report = fsck(store, false).unwrap();
        assert_eq!(report.events, 1);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.problem.starts_with("queued event 1:")),
            "{report:?}"
        );
        let report = fsck(store, true).unwrap();
        assert_eq!(report.exit_code(), 1);
        let report = fsck(store, false).unwrap();
        assert!(report.findings.is_empty(), "{report:?}");
        assert_eq!(report.events, 0);
    }
}
