//! lunafs: a FUSE filesystem on one embedded RocksDB, with buckets, objects and an omap per
//! object. Layers (see STYLE): `fs` (FUSE adapter) and `cli` call `core` (semantics), which
//! calls `store` (RocksDB layout) and `lua` (the sandbox); `notify` delivers the events
//! core queues, through core's event API; `mount` wires a mount's pieces together. Nothing
//! reaches around a layer.

pub mod cli;
pub mod config;
pub mod core;
pub mod digest;
pub mod error;
pub mod fs;
pub mod lua;
pub mod metrics;
pub mod mount;
pub mod notify;
pub mod store;
pub mod systemd;
pub mod telemetry;

pub use error::{Error, Result};
