//! Logging (tracing to stderr, which systemd sends to the journal) and termination signals.

use std::thread;

use nix::sys::signal::{SigSet, Signal};
use tracing_subscriber::EnvFilter;

use crate::error::{Error, Result};

/// Installs the log subscriber: `RUST_LOG` if set, else `level` (default "info").
pub fn init(level: Option<&str>) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(format!("lunafs={}", level.unwrap_or("info"))),
    }
    .map_err(|e| Error::Usage(format!("log level: {e}")))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: not in STORE/lunafs.log or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init()
        .map_err(|e| Error::Usage(format!("log setup: {e}")))
}

fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks SIGTERM/SIGINT/SIGHUP in this thread and every thread it starts later, so that
/// only the waiter of `on_termination` receives them. Call before starting any thread.
pub fn block_termination_signals() -> Result<()> {
    termination_signals()
        .thread_block()
        .map_err(|e| Error::io("blocking signals", e.into()))
}

/// Runs `f` on a dedicated thread when a termination signal arrives.
pub fn on_termination(f: impl FnOnce() + Send + 'static) -> Result<()> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = termination_signals().wait() {
                tracing::info!(signal = %sig, "terminating: unmounting");
                f();
            }
        })
        .map_err(|e| Error::io("starting the signal thread", e))?;
    Ok(())
}
