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
    /// The HLS segments' times, for the job's DASH MPD (absent in reports from
    /// before DASH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// PSNR and SSIM against the source scaled to this rendition's size (video only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityReport>,
    /// Relative paths by role: `progressive`, `hls_playlist`, `hls_init`,
    /// `iframe_playlist`, `keyframe_index`.
    pub files: BTreeMap<String, String>,
    /// Every file written, with its size and sha256, by relative path.
    pub checksums: Vec<FileSum>,
}

/// What a DASH `SegmentTimeline` says of a track's media segments (the same
/// files HLS lists): the track's timescale, and each segment's earliest
/// presentation time and duration in it, as `[t, d]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub timescale: u32,
    pub segments: Vec<(i64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoReport {
    pub encoder: String,
    /// The exact option dictionary given to the encoder.
    pub encoder_options: BTreeMap<String, String>,
    /// Nominal frames per GOP (keyframes are forced by time, so a GOP may be one frame longer).
    pub gop_frames: u32,
}

/// A rendition's measured quality, against the source scaled to the rendition's
/// size by the same filters the encoder was fed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// PSNR of the luma plane in dB, from the total squared error over the frames
    /// measured (as ffmpeg's `psnr` filter averages); `None` if none were.
    pub psnr_y: Option<f64>,
    /// PSNR over all three planes, weighted by their pixel counts.
    pub psnr: Option<f64>,
    /// Frames the PSNR covers: every frame where the encoder reports its errors,
    /// else the frames of the GOPs decoded back (one in ten).
    pub psnr_frames: u64,
    /// Mean SSIM of the luma plane over the frames compared (ffmpeg's `ssim`
    /// filter's algorithm: 8x8 windows on a 4-pixel grid).
    pub ssim_y: Option<f64>,
    /// Mean SSIM over all planes, weighted by their pixel counts (ffmpeg's "All").
    pub ssim: Option<f64>,
    /// Frames the SSIM covers (every fourth frame of the GOPs decoded back).
    pub ssim_frames: u64,
    /// VMAF is only reported where it was measured.
    pub vmaf: Option<f64>,
    pub vmaf_note: Option<String>,
}

/// What quality is made from: sums that add up across the chunks of a rendition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QualitySums {
    /// Frames whose squared error is summed.
    pub psnr_frames: u64,
    /// Summed squared error per plane (Y, U, V).
    pub sse: [u64; 3],
    /// Pixels per frame in each plane.
    pub plane_pixels: [u64; 3],
    pub ssim_frames: u64,
    /// Summed per-frame SSIM per plane.
    pub ssim: [f64; 3],
}

/// PSNR of 8-bit samples with `sse` over `pixels`, capped at 100 dB (an exact copy).
fn psnr(sse: u64, pixels: u64) -> f64 {
    if sse == 0 {
        return 100.0;
    }
    let db = 10.0 * (255.0f64 * 255.0 * pixels as f64 / sse as f64).log10();
    (db.min(100.0) * 1000.0).round() / 1000.0
}

impl QualitySums {
    pub fn add(&mut self, other: &QualitySums) {
        self.psnr_frames += other.psnr_frames;
        self.ssim_frames += other.ssim_frames;
        for c in 0..3 {
            self.sse[c] += other.sse[c];
            self.ssim[c] += other.ssim[c];
            if self.plane_pixels[c] == 0 {
                self.plane_pixels[c] = other.plane_pixels[c];
            }
        }
    }

    pub fn report(&self, vmaf_note: &str) -> QualityReport {
        let pixels: u64 = self.plane_pixels.iter().sum();
        let measured = self.psnr_frames > 0 && pixels > 0;
        let round = |x: f64| (x * 100_000.0).round() / 100_000.0;
        let weighted = |v: &[f64; 3]| v.iter().zip(self.plane_pixels).map(|(s, p)| s * p as f64).sum::<f64>() / pixels.max(1) as f64;
        let sampled = self.ssim_frames > 0 && pixels > 0;
        QualityReport {
            psnr_y: measured.then(|| psnr(self.sse[0], self.plane_pixels[0] * self.psnr_frames)),
            psnr: measured.then(|| psnr(self.sse.iter().sum(), pixels * self.psnr_frames)),
            psnr_frames: self.psnr_frames,
            ssim_y: sampled.then(|| round(self.ssim[0] / self.ssim_frames as f64)),
            ssim: sampled.then(|| round(weighted(&self.ssim) / self.ssim_frames as f64)),
            ssim_frames: self.ssim_frames,
            vmaf: None,
            vmaf_note: Some(vmaf_note.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioReport {
    pub encoder: String,
    pub bitrate: u32,
    pub channels: u32,
    pub sample_rate: u32,
}

/// `audio.json`: a job's audio, encoded once for every rung. Each track the plan
/// keeps is an HLS alternate of its own (`TRACK.m3u8`, `TRACK.init.mp4`,
/// `TRACK.NNNNN.m4s`); the first track's packets (`audio.pkts`, never published)
/// are what every rung's MP4 muxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioTracksReport {
    pub version: u32,
    /// Packets in `audio.pkts`, and their span in seconds from the source's start
    /// (the encoder's priming before 0).
    pub packets: u64,
    pub start: f64,
    pub end: f64,
    pub sample_rate: u32,
    pub tracks: Vec<AudioTrackReport>,
    /// The source's text subtitles, extracted in the same pass.
    #[serde(default)]
    pub subtitles: Vec<SubtitleTrackReport>,
    /// The tracks the plan kept that could not be read (over the cue limit), with why.
    #[serde(default)]
    pub skipped_subtitles: Vec<crate::plan::SkippedSubtitle>,
    /// Every file written, with its size and sha256.
    pub checksums: Vec<FileSum>,
}

/// One text subtitle stream of the source as WebVTT: a single-file VTT and its
/// HLS playlist, timed like the video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtitleTrackReport {
    /// `s0`, `s1`, ...
    pub name: String,
    pub stream: usize,
    pub codec: String,
    pub language: Option<String>,
    pub label: String,
    pub default: bool,
    pub forced: bool,
    pub hearing_impaired: bool,
    pub cues: usize,
    /// Relative paths by role: `vtt`, `hls_playlist`.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioTrackReport {
    /// `a0`, `a1`, ...: the default track first.
    pub name: String,
    /// The source stream it was made from.
    pub stream: usize,
    pub language: Option<String>,
    /// What a player lists (the source's title, else its language, else `Track N`).
    pub label: String,
    pub default: bool,
    pub duration: f64,
    pub average_bitrate: u64,
    pub peak_bitrate: u64,
    /// RFC 6381, `mp4a.40.2`.
    pub codecs: String,
    pub audio: AudioReport,
    pub segment_count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// Relative paths by role: `hls_playlist`, `hls_init`.
    pub files: BTreeMap<String, String>,
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
