//! The life of a mount, beside the CLI that starts it: open the notification routing, start
//! the dispatcher, the housekeeping and the metrics exporter, mount the FUSE adapter, handle
//! SIGTERM/SIGINT/SIGHUP (unmount, abandon running handler calls), tell systemd once the mount
//! answers, raise the mount's readahead, serve until unmounted, then stop the dispatcher and
//! the housekeeping and flush the store. `fs` is the FUSE adapter only; this module wires it
//! to `notify` and the process.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{debug, warn};

use crate::config::MountConfig;
use crate::core::{Core, ROOT};
use crate::error::{Error, Result};
use crate::fs::LunaFs;
use crate::systemd;

/// Mounts the store of `config` and serves requests until unmounted (by `fusermount3 -u`,
/// `lunafs umount` or a SIGTERM/SIGINT/SIGHUP to this process).
pub fn serve(core: Arc<Core>, config: &MountConfig) -> Result<()> {
    let noatime = config.flags.contains(&fuser::MountOption::NoAtime);
    core.set_update_atime(!config.read_only && !noatime);
    // Bound first: a port in use fails the mount before anything is mounted.
    let exporter = config
        .metrics
        .map(crate::metrics::Exporter::bind)
        .transpose()?;
    let routes = crate::notify::install(&core)?;
    let mut fs = LunaFs::new(core.clone(), config)?;
    let dispatcher = crate::notify::Dispatcher::start(
        core.clone(),
        routes,
        fs.after_call(),
        config.background_interval,
    )?;
    fs.delivery = Some(dispatcher.counters.clone());
    if let Some(exporter) = exporter {
        fs.metrics = exporter.address();
        tracing::info!(address = ?fs.metrics, "serving Prometheus metrics at /metrics");
        exporter.serve(crate::metrics::Sources {
            stats: fs.stats(),
            core: core.clone(),
            delivery: dispatcher.counters.clone(),
        })?;
    }
    let housekeeper = crate::core::housekeeping::Housekeeper::start(core.clone())?;
    let notifier = fs.notifier();
    let mut session = fuser::Session::new(fs, &config.mountpoint, &config.fuser_config())
        .map_err(|e| Error::io(format!("mounting at {}", config.mountpoint.display()), e))?;
    let _ = notifier.set(session.notifier());
    core.follow_other_mounts(invalidate_in_kernel(notifier))?;
    on_signals(session.unmount_callable(), config.mountpoint.clone())?;
    announce_when_ready(
        config.mountpoint.clone(),
        core.store_path().display().to_string(),
    )?;
    match session.run() {
        Ok(()) => {}
        // After a lazy unmount (or an abort through /sys/fs/fuse/connections) a worker may
        // read ECONNABORTED instead of ENODEV: the connection is over either way, and every
        // acknowledged change is already committed, so it ends the session like ENODEV.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            warn!("the kernel aborted the FUSE connection; ending the session")
        }
        Err(e) => return Err(Error::io("serving FUSE requests", e)),
    }
    dispatcher.stop();
    housekeeper.stop();
    // destroy() flushed the store if the kernel said goodbye; flush again for the case where
    // the session ended without it (the device was closed under us).
    core.shutdown()?;
    tracing::info!("unmounted");
    Ok(())
}

/// What other mounts changed, dropped from this mount's kernel caches. ENOENT (the kernel
/// holds nothing of it) is the common answer and not news.
fn invalidate_in_kernel(
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
) -> Arc<crate::core::coherence::Kernel> {
    use crate::core::coherence::Seen;
    use std::os::unix::ffi::OsStrExt;
    Arc::new(move |seen| {
        let Some(n) = notifier.get() else { return };
        let r = match seen {
            Seen::Inode(ino) => n.inval_inode(fuser::INodeNo(ino), 0, 0),
            Seen::Entry(parent, name) => {
                n.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::from_bytes(name))
            }
        };
        if let Err(e) = r.map_err(|e| e.raw_os_error()) {
            if e != Some(libc::ENOENT) {
                debug!(?seen, error = ?e, "kernel invalidation failed");
            }
        }
    })
}

/// SIGTERM, SIGINT, SIGHUP: unmount (or detach a busy mount), and abandon handler calls.
fn on_signals(mut unmounter: fuser::SessionUnmounter, mountpoint: PathBuf) -> Result<()> {
    crate::telemetry::on_termination(move || {
        let _ = systemd::notify("STOPPING=1");
        // Running handler calls stop at their next check and commit nothing: nobody will
        // read their result, and a stuck one must not keep the daemon up.
        crate::lua::abandon_calls();
        if let Err(e) = unmounter.unmount() {
            // Busy (files open): detach now; the session ends when the last file closes,
            // and every acknowledged write is already in the store.
            warn!(error = %e, "unmount on signal failed; detaching lazily");
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&mountpoint)
                .status();
        }
    })
}

/// READY=1 to systemd only once the mount answers: a stat of the root is served by this
/// very session, so it returns only after the session runs.
fn announce_when_ready(mountpoint: PathBuf, store_path: String) -> Result<()> {
    std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || match std::fs::metadata(&mountpoint) {
            // Our root is inode 1; anything else is the directory underneath, because a
            // SIGTERM unmounted us first: then there is nothing to announce.
            Ok(meta) if meta.ino() != ROOT => {
                debug!("unmounted before the mount answered; not signalling readiness")
            }
            Ok(meta) => {
                raise_readahead(meta.dev());
                tracing::info!(store = %store_path, mountpoint = %mountpoint.display(), "mounted");
                let status = format!("READY=1\nSTATUS=serving {store_path}");
                if let Err(e) = systemd::notify(&status) {
                    warn!(error = %e, "telling systemd we are ready failed");
                }
            }
            Err(e) => warn!(error = %e, "the new mount does not answer"),
        })
        .map(|_| ())
        .map_err(|e| Error::io("starting the readiness thread", e))
}

/// The kernel gives a FUSE mount the default readahead of 128 KiB whatever `max_readahead`
/// we negotiate, so sequential reads come as 128 KiB requests. Root may raise it through the
/// mount's backing device info; 1 MiB requests let a read fetch 16 chunks in one multi-get.
/// (Measured in benches/: cold sequential read, see README.) Failure only costs speed.
fn raise_readahead(dev: u64) {
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&path, "1024") {
        debug!(path, error = %e, "could not raise readahead");
    }
}
