//! The embedded engine: `Meta` on one RocksDB directory, a column family per `schema::Cf`.
//!
//! Writes go to the WAL with write(2) on every commit (no manual WAL flush), so a committed
//! batch is in the kernel's page cache and survives kill -9 of lunafs; `sync` fsyncs the WAL
//! for power loss. Versions are always 0 and checks always hold: one process owns the
//! directory (RocksDB's LOCK file), and core's per-inode locks order its writers.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, ReadOptions, WriteBatch, DB,
};

use super::meta::{Each, Found, Meta, Outcome, Version, Writes};
use super::schema::Cf;
use super::LOG_FILE;
use crate::error::{Error, Result};

pub struct Rocks {
    db: DB,
}

impl Rocks {
    /// Opens the database at `path`, creating it if the directory is missing or empty.
    /// Refuses a directory that holds something else, and one another process has open.
    pub fn open(path: &Path) -> Result<Rocks> {
        let fresh = is_missing_or_empty(path)?;
        if !fresh && !path.join("CURRENT").exists() {
            return Err(Error::NotAStore {
                path: path.to_owned(),
                why: "the directory is not empty and holds no RocksDB database".into(),
            });
        }
        let cache = Cache::new_lru_cache(256 << 20);
        let mut opts = Options::default();
        opts.create_if_missing(fresh);
        // A store made by an earlier release lacks the families added since; it is ours if it
        // has every first-release family, and the new ones are created empty.
        let upgradable = !fresh
            && DB::list_cf(&Options::default(), path)
                .is_ok_and(|have| Cf::V1.iter().all(|cf| have.iter().any(|h| h == cf.name())));
        opts.create_missing_column_families(fresh || upgradable);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        opts.set_manual_wal_flush(false);
        // Sequential file reads become sequential SST reads; let the kernel read ahead.
        opts.set_advise_random_on_open(false);
        // SST files are read through mmap: a cold 1 GiB read then costs ~0.9 s of lunafs CPU
        // instead of ~1.5 s (no pread copy into RocksDB's buffers, no block allocation), and
        // beats bindfs (benches/run.sh, README "Where the time goes"; O_DIRECT reads were
        // slower still). The price: the mapped pages show in lunafs's RSS (they are page
        // cache, reclaimable), and a disk read error ends the daemon with SIGBUS instead of
        // failing one read with EIO.
        opts.set_allow_mmap_reads(true);
        let cfs = Cf::ALL
            .iter()
            .map(|&cf| ColumnFamilyDescriptor::new(cf.name(), family_options(cf, &cache)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| open_error(path, e))?;
        Ok(Rocks { db })
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family of schema::Cf is opened by Rocks::open")
    }
}

impl Meta for Rocks {
    fn describe(&self) -> String {
        "rocksdb".into()
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>> {
        Ok(self.db.get_cf(self.cf(cf), key)?.map(|v| (v, 0)))
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]], each: &mut Found<'_>) -> Result<()> {
        let found = self.db.batched_multi_get_cf(self.cf(cf), keys, false);
        for (i, v) in found.into_iter().enumerate() {
            each(i, v?.as_deref())?;
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, each: &mut Each<'_>) -> Result<()> {
        let mut ro = ReadOptions::default();
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to);
        }
        let iter = self.db.iterator_cf_opt(
            self.cf(cf),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !each(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>> {
        match self.db.iterator_cf(self.cf(cf), IteratorMode::End).next() {
            Some(item) => Ok(Some(item?.0.to_vec())),
            None => Ok(None),
        }
    }

    fn writes(&self) -> Box<dyn Writes + '_> {
        Box::new(RocksWrites {
            rocks: self,
            wb: WriteBatch::default(),
        })
    }

    fn sync(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    fn flush(&self) -> Result<()> {
        let cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|&cf| self.cf(cf)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    fn approximate_size(&self) -> u64 {
        let props = [
            "rocksdb.total-sst-files-size",
            "rocksdb.total-blob-file-size",
            "rocksdb.cur-size-all-mem-tables",
        ];
        Cf::ALL
            .iter()
            .flat_map(|&cf| props.iter().map(move |p| (cf, *p)))
            .filter_map(|(cf, p)| self.db.property_int_value_cf(self.cf(cf), p).ok().flatten())
            .sum()
    }
}

struct RocksWrites<'a> {
    rocks: &'a Rocks,
    wb: WriteBatch,
}

impl Writes for RocksWrites<'_> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.wb.put_cf(self.rocks.cf(cf), key, value);
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.wb.delete_cf(self.rocks.cf(cf), key);
    }

    fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.wb.delete_range_cf(self.rocks.cf(cf), from, to);
    }

    fn check(&mut self, _cf: Cf, _key: &[u8], _version: Version) {
        // Nothing changes between a read and the commit (see the module docs).
    }

    fn commit(self: Box<Self>) -> Result<Outcome> {
        self.rocks.db.write(self.wb)?;
        Ok(Outcome::Done)
    }
}

/// RocksDB options for what each family holds.
fn family_options(cf: Cf, cache: &Cache) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    match cf {
        Cf::Chunks => {
            // File data: chunk-sized values. Kept in SST files, not blob files: measured with
            // benches/ (512 MiB dd, cold cache), SST gave ~850 MB/s reads and ~300 MB/s writes
            // against ~700 and ~290 with blob files, because MultiGet coalesces the adjacent
            // blocks of one read into one I/O. No compression: file data is mostly compressed
            // or random already.
            opts.set_write_buffer_size(128 << 20);
            opts.set_compression_type(rocksdb::DBCompressionType::None);
        }
        Cf::Inodes | Cf::Dentries => {
            // Metadata: small, hot, looked up by exact key (inodes) or short prefix scans
            // (readdir). Bloom filters make a miss (ENOENT on lookup) one memory probe.
            // Index and filter blocks stay with the open table, not in the block cache: SSTs
            // are read through mmap, and RocksDB does not cache uncompressed blocks it can
            // read from the mapping, so every lookup re-read and re-checksummed the whole
            // filter (70% of lunafs's CPU in a cold `ls -l` of 100,000 entries).
            table.set_bloom_filter(10.0, false);
            opts.set_write_buffer_size(32 << 20);
            opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        }
        Cf::Queue => {
            // A FIFO: appended at the end, deleted from the front; small memtables keep the
            // tombstones of delivered events from piling up in memory.
            opts.set_write_buffer_size(8 << 20);
            opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        }
        _ => opts.set_compression_type(rocksdb::DBCompressionType::Lz4),
    }
    opts.set_block_based_table_factory(&table);
    opts
}

fn is_missing_or_empty(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok())
            .all(|e| e.file_name() == LOG_FILE)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating store {}", path.display()), e))?;
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(Error::NotAStore {
            path: path.to_owned(),
            why: "it is not a directory".into(),
        }),
        Err(e) => Err(Error::io(format!("reading store {}", path.display()), e)),
    }
}

fn open_error(path: &Path, e: rocksdb::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("LOCK") || msg.contains("lock") {
        Error::StoreLocked(PathBuf::from(path))
    } else if msg.contains("Column famil") || msg.contains("column famil") {
        Error::NotAStore {
            path: path.to_owned(),
            why: format!("its RocksDB has other column families ({msg})"),
        }
    } else {
        Error::Store(e)
    }
}
