//! Triggers: a notification that names an object-class method instead of a topic. The
//! dispatcher runs the handler on the event's object after the change committed, as any
//! call runs (the same sandbox, limits, per-object lock and transaction), as root, by the
//! object's path so `remove()` works. Its own changes make events like any call's, marked
//! with the notification as their cause, so they never trigger that notification again (a
//! trigger on `ObjectCreated:*` whose handler writes the object runs once per client
//! write). An object removed or renamed before its trigger runs is skipped, not an error;
//! so is every Delete event (there is nothing left to run on).

use crate::core::call::{AfterCall, Code, Target};
use crate::core::events::EventKind;
use crate::core::Core;
use crate::error::Result;
use crate::store::codec::events::QueuedEvent;

/// How a trigger run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ran {
    Done,
    /// Not run, and never will be: why.
    Skipped(String),
    /// The handler failed (retried like a failed publish): its result and message.
    Failed(String),
}

/// Runs `CLASS.METHOD` with `input` for `event` (notification `id`'s trigger).
pub fn run(
    core: &Core,
    after: &dyn AfterCall,
    event: &QueuedEvent,
    (id, class, method, input): (&str, &str, &str, &[u8]),
) -> Result<Ran> {
    if event.kind == EventKind::Delete {
        return Ok(Ran::Skipped("the object was removed".into()));
    }
    let path = [event.bucket.as_bytes(), b"/", &event.key].concat();
    let walked = match core.walk(&path) {
        Ok(w) if w.inode.ino == event.ino => w,
        Ok(_) => return Ok(Ran::Skipped("another object has the name now".into())),
        Err(e) if e.errno() == libc::ENOENT => {
            return Ok(Ran::Skipped("the object was removed or renamed".into()))
        }
        Err(e) => return Err(e),
    };
    let target = Target {
        ino: event.ino,
        entry: Some((walked.parent, walked.name)),
        path: Some(path),
        uid: 0,
        may_shrink: true,
        may_write: true,
        caller: None,
        cause: Some(id.to_string()),
    };
    let reply = core.call_then(after, &target, Code::Class { class, method }, input)?;
    let o = &reply.outcome;
    Ok(match o.result {
        r if r >= 0 => Ran::Done,
        r => Ran::Failed(format!(
            "{class}.{method} returned {r}: {}",
            o.message.as_deref().unwrap_or("")
        )),
    })
}
