//! A small safe wrapper over librados (Ceph's C client library, Debian `librados-dev`): connect
//! to a cluster, open a pool in a namespace, and put, read, stat, remove and list whole
//! objects. Only what the slice store (`data/slices.rs`) needs.
//!
//! The existing Rust bindings are either unmaintained against Ceph 16 or read-only, so this
//! declares the dozen C functions it calls itself (their signatures are librados' stable C
//! API, `rados/librados.h`). Every call's negative return is an errno, turned into
//! `Error::Backend` with the pool and object it was about.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

use crate::error::{Error, Result};

#[allow(non_camel_case_types)]
type rados_t = *mut c_void;
#[allow(non_camel_case_types)]
type rados_ioctx_t = *mut c_void;
#[allow(non_camel_case_types)]
type rados_list_ctx_t = *mut c_void;

#[link(name = "rados")]
extern "C" {
    fn rados_create2(
        cluster: *mut rados_t,
        clustername: *const c_char,
        name: *const c_char,
        flags: u64,
    ) -> c_int;
    fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_connect(cluster: rados_t) -> c_int;
    fn rados_cluster_stat(cluster: rados_t, stat: *mut ClusterStat) -> c_int;
    fn rados_shutdown(cluster: rados_t);
    fn rados_ioctx_create(cluster: rados_t, pool: *const c_char, io: *mut rados_ioctx_t) -> c_int;
    fn rados_ioctx_destroy(io: rados_ioctx_t);
    fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);
    fn rados_write_full(
        io: rados_ioctx_t,
        oid: *const c_char,
        buf: *const c_char,
        len: usize,
    ) -> c_int;
    fn rados_read(
        io: rados_ioctx_t,
        oid: *const c_char,
        buf: *mut c_char,
        len: usize,
        off: u64,
    ) -> c_int;
    fn rados_stat(io: rados_ioctx_t, oid: *const c_char, size: *mut u64, mtime: *mut i64) -> c_int;
    fn rados_remove(io: rados_ioctx_t, oid: *const c_char) -> c_int;
    fn rados_nobjects_list_open(io: rados_ioctx_t, ctx: *mut rados_list_ctx_t) -> c_int;
    fn rados_nobjects_list_next(
        ctx: rados_list_ctx_t,
        entry: *mut *const c_char,
        key: *mut *const c_char,
        nspace: *mut *const c_char,
    ) -> c_int;
    fn rados_nobjects_list_close(ctx: rados_list_ctx_t);
}

/// How to reach the cluster and which pool holds the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadosConfig {
    pub pool: String,
    /// ceph.conf; None: librados' default search (`/etc/ceph/ceph.conf`, `$CEPH_CONF`).
    pub conf: Option<String>,
    /// The Ceph user, e.g. `client.lunafs` (default `client.admin`).
    pub client: Option<String>,
    pub keyring: Option<String>,
    /// The longest wait for one operation, in seconds.
    pub timeout_secs: u64,
}

/// `struct rados_cluster_stat_t`.
#[repr(C)]
#[derive(Default)]
struct ClusterStat {
    kb: u64,
    kb_used: u64,
    kb_avail: u64,
    num_objects: u64,
}

struct Cluster(rados_t);

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create2 and is shut down once, here.
        unsafe { rados_shutdown(self.0) }
    }
}

/// An open pool, in one namespace. librados handles are thread-safe.
pub struct Pool {
    io: rados_ioctx_t,
    // Shut down after `Drop for Pool` destroys `io`, as librados requires.
    cluster: Cluster,
    describe: String,
}

// SAFETY: librados documents its cluster and io-context handles as safe to use from several
// threads at once; nothing here mutates them after setup.
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} {s:?} holds a NUL byte")))
}

impl Pool {
    /// Connects and opens `cfg.pool` in namespace `namespace`.
    pub fn connect(cfg: &RadosConfig, namespace: &str) -> Result<Pool> {
        let describe = format!("rados://{}", cfg.pool);
        let fail =
            |what: &str, rc: c_int| Error::Backend(format!("{describe}: {what}: {}", errno(rc)));
        let name = cstring(
            "Ceph client name",
            cfg.client.as_deref().unwrap_or("client.admin"),
        )?;
        let cluster_name = cstring("cluster name", "ceph")?;
        let mut handle: rados_t = ptr::null_mut();
        // SAFETY: valid out pointer and NUL-terminated strings.
        let rc = unsafe { rados_create2(&mut handle, cluster_name.as_ptr(), name.as_ptr(), 0) };
        if rc < 0 {
            return Err(fail("creating the client", rc));
        }
        let cluster = Cluster(handle);
        let conf = cfg
            .conf
            .as_deref()
            .map(|c| cstring("ceph.conf path", c))
            .transpose()?;
        // SAFETY: a live handle; a null path means librados' default search.
        let rc = unsafe {
            rados_conf_read_file(cluster.0, conf.as_ref().map_or(ptr::null(), |c| c.as_ptr()))
        };
        if rc < 0 {
            let path = cfg.conf.as_deref().unwrap_or("the default ceph.conf");
            return Err(fail(&format!("reading {path}"), rc));
        }
        let timeout = cfg.timeout_secs.max(1).to_string();
        let mut options = vec![
            ("client_mount_timeout", timeout.clone()),
            ("rados_osd_op_timeout", timeout.clone()),
            ("rados_mon_op_timeout", timeout),
        ];
        if let Some(k) = &cfg.keyring {
            options.push(("keyring", k.clone()));
        }
        for (option, value) in options {
            let (o, v) = (cstring("option", option)?, cstring(option, &value)?);
            // SAFETY: a live handle and NUL-terminated strings.
            let rc = unsafe { rados_conf_set(cluster.0, o.as_ptr(), v.as_ptr()) };
            if rc < 0 {
                return Err(fail(&format!("setting {option}"), rc));
            }
        }
        // SAFETY: a configured handle, connected once.
        let rc = unsafe { rados_connect(cluster.0) };
        if rc < 0 {
            return Err(fail("connecting to the Ceph monitors", rc));
        }
        let pool = cstring("pool name", &cfg.pool)?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: a connected handle, a valid out pointer.
        let rc = unsafe { rados_ioctx_create(cluster.0, pool.as_ptr(), &mut io) };
        if rc < 0 {
            return Err(fail("opening the pool", rc));
        }
        let ns = cstring("namespace", namespace)?;
        // SAFETY: a live io context; librados copies the string.
        unsafe { rados_ioctx_set_namespace(io, ns.as_ptr()) };
        Ok(Pool {
            io,
            cluster,
            describe,
        })
    }

    /// `rados://POOL`.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn fail(&self, what: &str, oid: &str, rc: c_int) -> Error {
        Error::Backend(format!(
            "{} object {oid}: {what}: {}",
            self.describe,
            errno(rc)
        ))
    }

    /// Creates or replaces object `oid` with `data`.
    pub fn put(&self, oid: &str, data: &[u8]) -> Result<()> {
        let o = cstring("object name", oid)?;
        // SAFETY: a live io context; buf/len describe `data`.
        let rc = unsafe { rados_write_full(self.io, o.as_ptr(), data.as_ptr().cast(), data.len()) };
        if rc < 0 {
            return Err(self.fail("write", oid, rc));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` of `oid` into a new buffer (short if the object is);
    /// None if the object does not exist.
    pub fn read(&self, oid: &str, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        let o = cstring("object name", oid)?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            // SAFETY: a live io context; the buffer has `len - done` bytes left at `done`.
            let rc = unsafe {
                rados_read(
                    self.io,
                    o.as_ptr(),
                    buf[done..].as_mut_ptr().cast(),
                    len - done,
                    offset + done as u64,
                )
            };
            match rc {
                rc if rc == -libc::ENOENT => return Ok(None),
                rc if rc < 0 => return Err(self.fail("read", oid, rc)),
                0 => break,
                n => done += n as usize,
            }
        }
        buf.truncate(done);
        Ok(Some(buf))
    }

    /// Size and modification time (seconds since the epoch) of `oid`, if it exists.
    pub fn stat(&self, oid: &str) -> Result<Option<(u64, i64)>> {
        let o = cstring("object name", oid)?;
        let (mut size, mut mtime) = (0u64, 0i64);
        // SAFETY: a live io context and valid out pointers.
        let rc = unsafe { rados_stat(self.io, o.as_ptr(), &mut size, &mut mtime) };
        match rc {
            rc if rc == -libc::ENOENT => Ok(None),
            rc if rc < 0 => Err(self.fail("stat", oid, rc)),
            _ => Ok(Some((size, mtime))),
        }
    }

    /// Removes `oid`; an absent object is not an error.
    pub fn remove(&self, oid: &str) -> Result<()> {
        let o = cstring("object name", oid)?;
        // SAFETY: a live io context.
        let rc = unsafe { rados_remove(self.io, o.as_ptr()) };
        if rc < 0 && rc != -libc::ENOENT {
            return Err(self.fail("remove", oid, rc));
        }
        Ok(())
    }

    /// The cluster's raw space in bytes: total, used and available.
    pub fn cluster_space(&self) -> Result<(u64, u64, u64)> {
        let mut st = ClusterStat::default();
        // SAFETY: a connected handle and a valid out pointer of the C layout.
        let rc = unsafe { rados_cluster_stat(self.cluster.0, &mut st) };
        if rc < 0 {
            return Err(self.fail("cluster stat", "-", rc));
        }
        Ok((st.kb << 10, st.kb_used << 10, st.kb_avail << 10))
    }

    /// Every object name in the namespace, in no particular order.
    pub fn list(&self, each: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
        let mut ctx: rados_list_ctx_t = ptr::null_mut();
        // SAFETY: a live io context and a valid out pointer.
        let rc = unsafe { rados_nobjects_list_open(self.io, &mut ctx) };
        if rc < 0 {
            return Err(self.fail("list", "*", rc));
        }
        let result = (|| loop {
            let mut entry: *const c_char = ptr::null();
            // SAFETY: an open listing; librados owns the returned strings until the next call.
            let rc = unsafe {
                rados_nobjects_list_next(ctx, &mut entry, ptr::null_mut(), ptr::null_mut())
            };
            if rc == -libc::ENOENT {
                return Ok(());
            }
            if rc < 0 {
                return Err(self.fail("list", "*", rc));
            }
            // SAFETY: librados returned a NUL-terminated name, valid until the next call.
            let name = unsafe { CStr::from_ptr(entry) }
                .to_string_lossy()
                .into_owned();
            each(&name)?;
        })();
        // SAFETY: closed once, after the last use.
        unsafe { rados_nobjects_list_close(ctx) };
        result
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the io context came from rados_ioctx_create and is destroyed once.
        unsafe { rados_ioctx_destroy(self.io) }
    }
}

fn errno(rc: c_int) -> String {
    std::io::Error::from_raw_os_error(-rc).to_string()
}
