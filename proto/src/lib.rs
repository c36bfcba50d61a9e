//! Types that cross a process boundary in Drake: what `drake probe` prints, what a
//! profile says, what `drake plan` decides, what `drake transcode` reports.
//!
//! This crate links no media library and does no I/O beyond reading profile files,
//! so the coordinator can use it without pulling in libav.

pub mod captions;
pub mod chunk;
pub mod disk;
pub mod language;
pub mod plan;
pub mod probe;
pub mod profile;
pub mod report;
pub mod time;
pub mod transfer;
pub mod wire;

/// Version of the JSON documents in this crate. Readers accept documents whose
/// version they know; new optional fields do not bump it.
pub const WIRE_VERSION: u32 = 1;

/// Exit codes of the engine's subcommands. The farm retries [`exit::INTERNAL`] and
/// [`exit::UNREACHABLE`].
pub mod exit {
    /// The input (or the profile) cannot be transcoded; retrying will not help.
    pub const BAD_INPUT: i32 = 65;
    /// Something went wrong on this machine (I/O, encoder, verification).
    pub const INTERNAL: i32 = 70;
    /// The disk being written is full (ENOSPC): the same work can succeed once
    /// there is room, so it waits for room rather than counting as a failure.
    pub const NO_SPACE: i32 = 74;
    /// The source's store could not be read (after the reader waited out its
    /// blips): the farm's trouble, not this machine's nor the source's; retried.
    pub const UNREACHABLE: i32 = 75;
}

/// Environment variable through which a worker or the coordinator hands an engine
/// child the `Authorization` header value for reading its `http(s)` source from
/// storage. Only ever set for storage URLs, never for a job's own `source_url`.
pub const HTTP_AUTHORIZATION_ENV: &str = "DRAKE_HTTP_AUTHORIZATION";

/// Environment variable through which a worker names, in an engine child's HTTP
/// `User-Agent`, the task that reads storage (`drake/VERSION (KIND TASK_ID)`), so
/// that a store's access log says which task read what.
pub const HTTP_USER_AGENT_ENV: &str = "DRAKE_HTTP_USER_AGENT";

/// Environment variable through which a worker hands an engine child reading
/// storage over HTTP the farm's stall limit, in seconds (see `transfer`).
pub const HTTP_STALL_SECONDS_ENV: &str = "DRAKE_HTTP_STALL_SECONDS";

/// `eprintln!` for processes that run for days: a write error (a closed pipe whose
/// reader went away) is ignored instead of panicking, so a coordinator or worker
/// never dies, or drops a lease, over a log line.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
