//! Whether the task whose FUSE request runs a call is still waiting for it, from its
//! `/proc/TID/stat`: gone (the file cannot be read, or the task is a zombie) or dying (a
//! SIGKILL pending on it). The kernel marks SIGKILL pending on every thread of a process
//! that a fatal signal (kill -9, an unhandled SIGINT or SIGTERM) is ending, and a task
//! blocked in our FUSE request stays in the kernel until we answer, so this is what "the
//! caller went away" looks like.
//!
//! Each thread keeps its last caller's file open: a control-file client makes call after
//! call from one thread, and opening the file cost more than reading it (this check runs
//! at the start and the end of every call). An open /proc file of a task that has exited
//! reads as an error, so a reused TID is never taken for the task that had it.
//!
//! A task seen alive is taken as alive for `SEEN_ALIVE_FOR` (1 ms) without another read:
//! a pipelined batch of calls from one client would otherwise read the file once per call
//! (a fifth of a no-op call's CPU). So a kill lands at most that much later than it would
//! have; a caller can never be sure its last call did not commit anyway (a kill can come
//! after any check).

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// How long a task seen alive is not looked at again.
const SEEN_ALIVE_FOR: Duration = Duration::from_millis(1);

/// The task whose stat file is open, the file, and when it last read as alive.
struct Watched {
    tid: u32,
    file: File,
    alive_at: Option<Instant>,
}

thread_local! {
    static STAT: RefCell<Option<Watched>> = const { RefCell::new(None) };
}

/// Whether task `tid`'s state can be read at all (if not, it cannot be told from a dead
/// one, and is not watched).
pub fn watchable(tid: u32) -> bool {
    with_stat(tid, |_| ()).is_some()
}

/// Whether task `tid` is gone or dying.
pub fn gone(tid: u32) -> bool {
    let state = with_stat(tid, |w| {
        let now = Instant::now();
        if w.alive_at
            .is_some_and(|t| now.duration_since(t) < SEEN_ALIVE_FOR)
        {
            return Ok(false);
        }
        let mut buf = [0u8; 1024];
        let n = w.file.read_at(&mut buf, 0)?;
        let dead = dying(&buf[..n]);
        w.alive_at = (!dead).then_some(now);
        Ok::<bool, std::io::Error>(dead)
    });
    match state {
        Some(Ok(dead)) => dead,
        _ => {
            forget(tid);
            true
        }
    }
}

/// Runs `f` on task `tid`'s open stat file; None if it cannot be opened.
fn with_stat<T>(tid: u32, f: impl FnOnce(&mut Watched) -> T) -> Option<T> {
    STAT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|w| w.tid != tid) {
            let file = File::open(format!("/proc/{tid}/stat")).ok()?;
            *slot = Some(Watched {
                tid,
                file,
                alive_at: None,
            });
        }
        slot.as_mut().map(f)
    })
}

fn forget(tid: u32) {
    STAT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_some_and(|w| w.tid == tid) {
            *slot = None;
        }
    });
}

/// Whether a `/proc/TID/stat` line shows a zombie or a pending SIGKILL. The fields after
/// the command (in parentheses, and which may hold anything) start with the state (field
/// 3); field 31 is the task's pending signals, in decimal.
fn dying(stat: &[u8]) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    let Some(end) = stat.iter().rposition(|&c| c == b')') else {
        return true;
    };
    let rest = String::from_utf8_lossy(&stat[end + 1..]);
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let state = fields.first().copied().unwrap_or("X");
    let pending = fields.get(31 - 3).and_then(|s| s.parse::<u64>().ok());
    matches!(state, "Z" | "X" | "x") || pending.is_none_or(|p| p & SIGKILL_BIT != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_gone_and_a_missing_task_is() {
        assert!(watchable(std::process::id()));
        assert!(!gone(std::process::id()));
        assert!(!gone(std::process::id()), "the kept file reads again");
        assert!(!watchable(u32::MAX - 1));
        assert!(gone(u32::MAX - 1));
    }

    #[test]
    fn stat_lines_are_read_after_the_command() {
        let line = |comm: &str, state: &str, signals: u64| {
            let mut f = vec!["1".to_string(); 52];
            f[2] = state.to_string();
            f[30] = signals.to_string();
            format!("42 ({comm}) {}", f[2..].join(" "))
        };
        assert!(!dying(line("sh", "S", 0).as_bytes()));
        assert!(!dying(line("a) Z 9 (b", "D", 1 << 1).as_bytes()));
        assert!(dying(line("sh", "D", 1 << 8).as_bytes()), "SIGKILL pending");
        assert!(dying(line("sh", "Z", 0).as_bytes()));
        assert!(dying(b"42 (sh"), "cut short");
    }
}
