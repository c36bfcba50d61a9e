//! The transcode engine: everything that touches libav. Each entry point runs in
//! its own `drake` child process, so a libav crash costs one task, not a worker.
//! `node` is the worker loop that leases tasks and runs those children.

pub mod av;
pub mod build;
pub mod codecs;
pub mod error;
pub mod files;
pub mod fmp4;
pub mod health;
pub mod join;
pub mod node;
pub mod packets;
pub mod probe;
pub mod publish;
pub mod quality;
pub mod remote;
pub mod remux;
pub mod subtitles;
pub mod thumbnails;
pub mod timeline;
pub mod transcode;
pub mod verify;

pub use error::{EngineError, Result};

/// Initializes libav once per process.
pub fn init() -> Result<()> {
    ffmpeg_next::init().map_err(|e| EngineError::internal("initializing libav", e))?;
    av::quiet_logs();
    Ok(())
}
