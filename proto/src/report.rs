//! What the engine writes when it finishes (`rendition.json`, `thumbnails.json`)
//! and the progress lines it prints while it works.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenditionReport {
    pub version: u32,
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Seconds of media in the progressive file.
    pub duration: f64,
    pub frame_count: u64,
    /// Output frames per second (0 for audio-only).
    pub frame_rate: f64,
    /// Bits per second over the whole rendition.
    pub average_bitrate: u64,
    /// Highest bitrate of any HLS segment, as HLS `BANDWIDTH` defines it.
    pub peak_bitrate: u64,
    /// RFC 6381 codecs string, for example `avc1.64001f,mp4a.40.2`.
    pub codecs: String,
    pub video: Option<VideoReport>,
    pub audio: Option<AudioReport>,
    /// Presentation times (seconds) of every keyframe, shared by all rungs of a job.
    pub keyframe_times: Vec<f64>,
    pub segment_count: usize,
    /// Relative paths by role: `progressive`, `hls_playlist`, `hls_init`,
    /// `iframe_playlist`, `keyframe_index`.
    pub files: BTreeMap<String, String>,
    /// Every file written, with its size and sha256, by relative path.
    pub checksums: Vec<FileSum>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoReport {
    pub encoder: String,
    /// The exact option dictionary given to the encoder.
    pub encoder_options: BTreeMap<String, String>,
    /// Nominal frames per GOP (keyframes are forced by time, so a GOP may be one frame longer).
    pub gop_frames: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioReport {
    pub encoder: String,
    pub bitrate: u32,
    pub channels: u32,
    pub sample_rate: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// The keyframe byte index of a progressive MP4 (`keyframes.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyframeIndex {
    pub file: String,
    pub keyframes: Vec<KeyframeEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeyframeEntry {
    /// Presentation time in seconds.
    pub time: f64,
    /// Byte offset of the keyframe sample in the file.
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThumbnailsReport {
    pub version: u32,
    pub poster: Image,
    pub thumbnails: Vec<Image>,
    pub storyboard: Storyboard,
    pub checksums: Vec<FileSum>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub path: String,
    pub time: f64,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Storyboard {
    pub vtt: String,
    pub sheets: Vec<String>,
    pub interval: f64,
    pub tile_width: u32,
    pub tile_height: u32,
    pub columns: u32,
    pub rows: u32,
    pub tiles: usize,
}

/// One line of progress on the engine's stdout, for example
/// `{"type":"progress","fraction":0.5,"fps":212.0,"frame":450,"out_time":15.0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressLine {
    Progress { fraction: f64, fps: f64, frame: u64, out_time: f64 },
    Done { fraction: f64 },
}
