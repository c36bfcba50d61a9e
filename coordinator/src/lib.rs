//! The coordinator: keeps jobs and their tasks in a durable queue, leases tasks to
//! workers and takes them back when heartbeats stop. It never decodes media; the
//! HTTP API, WebDAV storage and finalize step build on this queue.

pub mod api;
pub mod auth;
pub mod background;
pub mod chores;
pub mod cors;
pub mod dash;
pub mod dav;
pub mod dbcopy;
pub mod error;
pub mod fault;
pub mod fetch;
pub mod gate;
pub mod lifecycle;
pub mod linger;
#[cfg(any(test, feature = "testing"))]
pub mod pgtest;
pub mod queue;
pub mod registry;
pub mod relay;
pub mod server;
pub mod sessions;
pub mod sidecars;
pub mod state;
pub mod stats;
pub mod storage;
pub mod tus;
pub mod uploads;
pub mod workers_api;
