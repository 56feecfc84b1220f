//! The running call's budget, per thread (a thread runs one call at a time): memory held
//! outside the Lua heap, instructions left, the deadline, the caller, and whether a limit
//! has tripped. The VM's instruction hook and the library functions written in Rust
//! (`strlib`, `tablib`) both check it through `keep_going`, so a limit holds inside library
//! code too. Once tripped, a limit stays tripped for the rest of the call: `pcall` raises it
//! again, so a script cannot catch its way past it.
//!
//! Besides the limits, a call stops when nobody waits for it any more: its caller was
//! killed (a fatal signal pending on the task whose FUSE request runs the call), or the
//! daemon is shutting down (`abandon_all`, at SIGTERM). Such a call commits nothing.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mlua::Lua;

use super::{caller, Limits};

/// How often a running call looks at its caller's state in /proc.
const CALLER_CHECK_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    Memory,
    Instructions,
    Time,
    /// The calling process was killed while its call ran.
    CallerGone,
    /// The daemon is stopping.
    Shutdown,
}

impl Trip {
    pub fn errno(self) -> i32 {
        match self {
            Trip::Memory => libc::ENOMEM,
            Trip::Instructions | Trip::Time => libc::ETIMEDOUT,
            Trip::CallerGone | Trip::Shutdown => libc::ECANCELED,
        }
    }

    pub fn message(self, limits: &Limits) -> String {
        match self {
            Trip::Memory => format!("memory limit of {} bytes exceeded", limits.memory),
            Trip::Instructions => {
                format!("instruction limit of {} exceeded", limits.instructions)
            }
            Trip::Time => format!("time limit of {:?} exceeded", limits.time),
            Trip::CallerGone => "the caller was killed; the call was abandoned".into(),
            Trip::Shutdown => "lunafs is stopping; the call was abandoned".into(),
        }
    }
}

struct Budget {
    /// Bytes held by live bufferlists, images and library buffers of this thread's VM.
    held: Cell<usize>,
    memory: Cell<usize>,
    /// The Lua heap's size when the call started (its growth counts against `memory`).
    heap_baseline: Cell<usize>,
    instructions_left: Cell<i64>,
    /// None outside a call: then everything may run (VM set-up code).
    deadline: Cell<Option<Instant>>,
    tripped: Cell<Option<Trip>>,
    /// The task (thread id) whose request runs the call, if any.
    caller: Cell<Option<u32>>,
    next_caller_check: Cell<Option<Instant>>,
}

thread_local! {
    static BUDGET: Budget = const {
        Budget {
            held: Cell::new(0),
            memory: Cell::new(usize::MAX),
            heap_baseline: Cell::new(0),
            instructions_left: Cell::new(i64::MAX),
            deadline: Cell::new(None),
            tripped: Cell::new(None),
            caller: Cell::new(None),
            next_caller_check: Cell::new(None),
        }
    };
}

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// Makes every running and later call stop at its next check (the daemon is stopping).
pub fn abandon_all() {
    SHUTDOWN.store(true, Ordering::Relaxed);
}

/// Starts a call's budget on this thread, the Lua heap being `heap` bytes. A caller of pid
/// 0 (one the kernel could not name in our pid namespace) or whose /proc entry we may not
/// read is not watched: it cannot be told from a dead one.
pub(super) fn start(limits: &Limits, caller: Option<u32>, heap: usize) {
    let caller = caller.filter(|&tid| tid != 0 && caller::watchable(tid));
    BUDGET.with(|b| {
        b.memory.set(limits.memory);
        b.heap_baseline.set(heap);
        b.instructions_left
            .set(i64::try_from(limits.instructions).unwrap_or(i64::MAX));
        let now = Instant::now();
        b.deadline.set(Some(now + limits.time));
        b.tripped.set(None);
        b.caller.set(caller);
        // The first hook check looks at the caller (killed while the call was queued?);
        // a call too short to meet one is checked by `finish`. Reading the caller's state
        // here too would add a /proc read to every call for nothing `finish` misses.
        b.next_caller_check.set(Some(now));
        // A call that starts while the daemon stops is abandoned before it runs.
        if SHUTDOWN.load(Ordering::Relaxed) {
            b.tripped.set(Some(Trip::Shutdown));
        }
    });
}

/// Ends the call's budget; the limit it tripped, if any. The shutdown and the caller are
/// checked once more, so a call that ran too briefly to meet a check still commits nothing
/// once nobody waits for it.
pub(super) fn finish() -> Option<Trip> {
    check_now();
    BUDGET.with(|b| {
        b.deadline.set(None);
        b.caller.set(None);
        b.tripped.take()
    })
}

/// Checks the shutdown and the caller now, whenever the last check was.
fn check_now() {
    BUDGET.with(|b| {
        if b.tripped.get().is_some() {
            return;
        }
        if SHUTDOWN.load(Ordering::Relaxed) {
            b.tripped.set(Some(Trip::Shutdown));
        } else if b.caller.get().is_some_and(caller::gone) {
            b.tripped.set(Some(Trip::CallerGone));
        }
    });
}

/// Whether calls are being abandoned (the daemon is stopping).
pub fn abandoned() -> bool {
    SHUTDOWN.load(Ordering::Relaxed)
}

pub(super) fn tripped() -> Option<Trip> {
    BUDGET.with(|b| b.tripped.get())
}

pub(super) fn trip(t: Trip) {
    BUDGET.with(|b| {
        if b.tripped.get().is_none() {
            b.tripped.set(Some(t));
        }
    });
}

pub(super) fn held() -> usize {
    BUDGET.with(|b| b.held.get())
}

/// Charges `steps` of work (VM instructions, or the Rust library's steps) and checks every
/// limit; false means stop now (the limit has tripped and stays tripped).
pub fn keep_going(steps: u32) -> bool {
    BUDGET.with(|b| {
        let Some(deadline) = b.deadline.get() else {
            return true;
        };
        if b.tripped.get().is_none() {
            let left = b.instructions_left.get() - i64::from(steps);
            b.instructions_left.set(left);
            let now = Instant::now();
            let trip = if left < 0 {
                Some(Trip::Instructions)
            } else if now > deadline {
                Some(Trip::Time)
            } else if SHUTDOWN.load(Ordering::Relaxed) {
                Some(Trip::Shutdown)
            } else {
                caller_check_due(b, now)
                    .and_then(|tid| caller::gone(tid).then_some(Trip::CallerGone))
            };
            b.tripped.set(trip);
        }
        b.tripped.get().is_none()
    })
}

/// The caller to look at, when a look is due.
fn caller_check_due(b: &Budget, now: Instant) -> Option<u32> {
    let tid = b.caller.get()?;
    if b.next_caller_check.get().is_some_and(|t| now < t) {
        return None;
    }
    b.next_caller_check.set(Some(now + CALLER_CHECK_EVERY));
    Some(tid)
}

/// The error that ends a call whose limit tripped (whatever catches it, `limited` reports
/// the limit itself).
pub fn limit_error() -> mlua::Error {
    let what = tripped().map_or_else(|| "a".to_string(), |t| format!("{t:?}"));
    mlua::Error::runtime(format!("{what} limit reached"))
}

/// Bytes the call may still use: its memory limit less the bytes held outside the Lua heap
/// and the heap's growth since the call started.
fn room(lua: &Lua) -> usize {
    BUDGET.with(|b| {
        let heap = lua.used_memory().saturating_sub(b.heap_baseline.get());
        b.memory
            .get()
            .saturating_sub(b.held.get())
            .saturating_sub(heap)
    })
}

/// Whether `n` more bytes that library code is about to allocate fit what the call has
/// left; if not, the memory limit trips.
pub fn fits(lua: &Lua, n: usize) -> bool {
    let ok = n <= room(lua);
    if !ok {
        trip(Trip::Memory);
    }
    ok
}

/// A byte buffer that library code builds, charged to the call as it grows (in steps) and
/// released when dropped, so nested library calls (a `gsub` replacement function calling
/// `gsub`) cannot each take the whole limit.
pub struct Buffer {
    bytes: Vec<u8>,
    charged: usize,
}

/// Bytes charged at a time as a buffer grows.
const BUFFER_STEP: usize = 64 << 10;

impl Buffer {
    pub fn new() -> Buffer {
        Buffer {
            bytes: Vec::new(),
            charged: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `more`, charging the growth first; past the limit the memory limit trips.
    pub fn extend(&mut self, lua: &Lua, more: &[u8]) -> mlua::Result<()> {
        let need = self.bytes.len().saturating_add(more.len());
        if need > self.charged {
            let step = (need - self.charged).max(BUFFER_STEP);
            if !fits(lua, step) {
                return Err(limit_error());
            }
            BUDGET.with(|b| b.held.set(b.held.get() + step));
            self.charged += step;
        }
        self.bytes.extend_from_slice(more);
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::new()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        release(self.charged);
    }
}

/// `n` bytes charged to the call for as long as this lives (a library function's working
/// copy of script data).
pub struct Charge(usize);

impl Charge {
    pub fn new(lua: &Lua, n: usize) -> mlua::Result<Charge> {
        charge(lua, n)?;
        Ok(Charge(n))
    }

    /// Charges `n` more.
    pub fn grow(&mut self, lua: &Lua, n: usize) -> mlua::Result<()> {
        charge(lua, n)?;
        self.0 += n;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        release(self.0);
    }
}

/// Charges `n` bytes of Rust-side memory (bufferlist or image contents) to the call. Over
/// the budget, collects garbage once (freeing dead bufferlists) before refusing.
pub fn charge(lua: &Lua, n: usize) -> mlua::Result<()> {
    let over = || n > room(lua);
    if over() {
        lua.gc_collect()?;
        if over() {
            trip(Trip::Memory);
            return Err(mlua::Error::MemoryError(format!(
                "bufferlist of {n} more bytes would pass the call's memory limit"
            )));
        }
    }
    BUDGET.with(|b| b.held.set(b.held.get() + n));
    Ok(())
}

/// Checks that `n` more bytes would fit the budget (collecting garbage if needed), without
/// charging them: for reads whose result is charged once it exists.
pub fn reserve(lua: &Lua, n: usize) -> mlua::Result<()> {
    charge(lua, n)?;
    release(n);
    Ok(())
}

/// Returns bytes charged by `charge` (a bufferlist or image was collected).
pub fn release(n: usize) {
    // The VM may be dropped during thread exit, after the budget is gone: nothing to count.
    let _ = BUDGET.try_with(|b| b.held.set(b.held.get().saturating_sub(n)));
}

/// Bytes the call may still charge.
pub fn budget_left(lua: &Lua) -> usize {
    room(lua)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_going_trips_the_instruction_limit_and_stays_tripped() {
        let limits = Limits {
            instructions: 5000,
            ..Limits::default()
        };
        start(&limits, None, 0);
        assert!(keep_going(4096));
        assert!(!keep_going(4096));
        assert!(!keep_going(1));
        assert_eq!(finish(), Some(Trip::Instructions));
        assert!(keep_going(u32::MAX), "outside a call everything runs");
    }
}
