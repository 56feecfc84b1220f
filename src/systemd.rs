//! systemd integration: sd_notify(3) over $NOTIFY_SOCKET, spoken directly (a datagram of
//! `KEY=VALUE` lines), so Type=notify units know when the mount answers and when it stops.
//! Without $NOTIFY_SOCKET every call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::error::{Error, Result};

/// Sends `state` (e.g. "READY=1") to the service manager, if there is one.
pub fn notify(state: &str) -> Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(&path),
    }
    .map_err(|e| Error::io(format!("NOTIFY_SOCKET {}", path.to_string_lossy()), e))?;
    let sock = UnixDatagram::unbound().map_err(|e| Error::io("notify socket", e))?;
    sock.send_to_addr(state.as_bytes(), &addr)
        .map_err(|e| Error::io(format!("sd_notify {state}"), e))?;
    Ok(())
}
