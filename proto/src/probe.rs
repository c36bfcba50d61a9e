//! The source description printed by `drake probe` and consumed by the planner.
//!
//! Sizes here are what a viewer sees: `display_*` already accounts for rotation and
//! non-square pixels, so the planner never has to.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// libav demuxer name, for example `mov,mp4,m4a,3gp,3g2,mj2` or `mpegts`.
    pub container: String,
    /// Seconds, from the container (or the longest stream when the container has
    /// none; or else read from a local file's packets, see `duration_by_reading`).
    pub duration: f64,
    /// Bits per second over the whole file; 0 when unknown.
    pub bitrate: u64,
    pub size_bytes: Option<u64>,
    /// Every stream but attachments.
    pub streams: Vec<StreamInfo>,
    /// Files the container carries beside its streams (a Matroska's fonts for its
    /// ASS subtitles, often dozens): counted, never read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attachments: u32,
    /// Where the source's timestamps start over: recordings joined end to end
    /// (MPEG-TS parts concatenated), found reading a local file without an index.
    /// The coordinator makes such a source one timeline (`drake remux`) first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeline_joins: u32,
    /// A seek in the source reads through what lies before its target, or lands
    /// far before it: a Matroska or WebM without cues (written as a stream, as a
    /// browser's MediaRecorder does), an FLV without a keyframe index. Measured on
    /// a local file without an index. Each time chunk would fetch everything
    /// before its part, so the coordinator remuxes such a source before it cuts it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seeks_by_reading: bool,
    /// Neither the container nor its streams say how long the source is (a
    /// browser's MediaRecorder file, a live stream's dump): `duration` was read
    /// from a local file's packets. The tasks that read the source over HTTP
    /// (its audio, thumbnails, chunks) would not know it, so the coordinator
    /// remuxes such a source, into a file that says, before it plans.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duration_by_reading: bool,
    /// Set by the coordinator when it remuxed the uploaded source (into Matroska
    /// with cues) to make it one timeline, seekable, or say its duration: how many
    /// parts that source's timeline was in. The probe is then the remuxed file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remuxed_parts: Option<u32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The `medium` of an audio stream no decoder here reads, listed as `Other`.
pub const UNDECODABLE_AUDIO: &str = "audio without a decoder";
/// The `medium` of an embedded picture (an MP3's or M4A's front cover), listed as `Other`.
pub const COVER_ART: &str = "cover art";
/// The `medium` of an embedded picture that does not decode (or is too large to).
pub const UNREADABLE_COVER_ART: &str = "cover art that does not decode";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamInfo {
    Video(VideoStream),
    Audio(AudioStream),
    Subtitle(SubtitleStream),
    /// Data, attachments, cover art and audio no decoder here reads (`medium` says
    /// which): listed so users see them, never transcoded.
    Other {
        index: usize,
        codec: String,
        medium: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoStream {
    pub index: usize,
    pub codec: String,
    pub coded_width: u32,
    pub coded_height: u32,
    /// Upright, square-pixel size a player would show.
    pub display_width: u32,
    pub display_height: u32,
    /// Sample aspect ratio as `num:den` (`1:1` for square pixels).
    pub sample_aspect_ratio: String,
    /// Clockwise degrees a player must rotate the coded picture: 0, 90, 180 or 270.
    pub rotation: u32,
    /// Nominal frame rate, frames per second: the rate the frames were captured on,
    /// which the output's constant rate grid takes (under the profile's cap).
    pub frame_rate: f64,
    /// The container's average rate as `num/den`, which differs from `frame_rate`
    /// for variable frame rate sources in MP4 and MOV (frames over duration).
    pub avg_frame_rate: String,
    pub pix_fmt: String,
    pub bit_depth: u32,
    pub default: bool,
    /// Seconds: the longest stretch of the stream without a keyframe, the one
    /// from its last keyframe to the source's end included, as the container's
    /// keyframe index says (an MP4's sample table), or as reading a local file's
    /// packets finds them (MPEG-TS, Matroska). A chunk
    /// decodes from the keyframe before its start, so this bounds what it decodes
    /// and throws away. `None` when the container has no index and the file was not
    /// read for it (over HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyframe_gap_s: Option<f64>,
    /// Its colour description as ffprobe names it (`bt709`, `bt2020`, `arib-std-b67`,
    /// `smpte170m`, ...), where the stream gives one: what says whether its
    /// renditions are mapped to BT.709 (HDR, BT.2020) and which colours they keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color_primaries: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color_transfer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color_space: Option<String>,
    /// The stream's Dolby Vision configuration, when its container declares one
    /// (MP4's `dvcC`/`dvvC`, Matroska's block addition mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dolby_vision: Option<DolbyVision>,
}

/// A Dolby Vision stream's configuration record: what its base layer is, which
/// decides whether its pictures can be shown without Dolby's own processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DolbyVision {
    /// 5 (streaming masters), 7 (Blu-ray), 8 (phones, streaming), 9, 10 (AV1), ...
    pub profile: u8,
    pub level: u8,
    /// The base layer's signal: 0 none (IPTPQc2, Dolby's own colour space), 1
    /// HDR10, 2 SDR, 4 HLG, 6 Blu-ray HDR10.
    pub compatibility: u8,
}

impl DolbyVision {
    /// Whether the base layer is Dolby's IPTPQc2 (profile 5, profile 10.0): only
    /// the reshaping that every frame's RPU carries turns it into ordinary colour,
    /// and Drake's filters cannot apply it. Decoded as YCbCr, it is green and purple.
    pub fn needs_reshaping(&self) -> bool {
        self.compatibility == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioStream {
    pub index: usize,
    pub codec: String,
    pub channels: u32,
    pub channel_layout: String,
    pub sample_rate: u32,
    pub default: bool,
    /// The track's language tag as the container has it (ISO 639, e.g. `eng`);
    /// `None` when untagged or `und`.
    #[serde(default)]
    pub language: Option<String>,
    /// The track's title, if the container names it.
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtitleStream {
    pub index: usize,
    pub codec: String,
    /// Text subtitles (SubRip, ASS/SSA, mov_text, WebVTT) can become WebVTT; bitmap
    /// ones (PGS, DVB, VobSub) cannot.
    pub text: bool,
    pub language: Option<String>,
    pub title: Option<String>,
    pub default: bool,
    pub forced: bool,
    pub hearing_impaired: bool,
}

/// Subtitle codecs whose cues are text.
pub const TEXT_SUBTITLE_CODECS: &[&str] = &["subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text"];

/// Longest language tag and title kept from a source's metadata.
pub const MAX_LANGUAGE_CHARS: usize = 16;
pub const MAX_TITLE_CHARS: usize = 128;

/// A metadata text from an upload, made safe to show and to quote: control
/// characters and quotes dropped, trimmed, at most `max` characters; `None` if empty.
pub fn clean_tag(text: &str, max: usize) -> Option<String> {
    let kept: String = text.chars().filter(|c| !c.is_control() && *c != '"').take(max).collect();
    let kept = kept.trim();
    (!kept.is_empty()).then(|| kept.to_string())
}

impl Probe {
    pub fn videos(&self) -> impl Iterator<Item = &VideoStream> {
        self.streams.iter().filter_map(|s| match s {
            StreamInfo::Video(v) => Some(v),
            _ => None,
        })
    }

    pub fn audios(&self) -> impl Iterator<Item = &AudioStream> {
        self.streams.iter().filter_map(|s| match s {
            StreamInfo::Audio(a) => Some(a),
            _ => None,
        })
    }

    pub fn subtitles(&self) -> impl Iterator<Item = &SubtitleStream> {
        self.streams.iter().filter_map(|s| match s {
            StreamInfo::Subtitle(t) => Some(t),
            _ => None,
        })
    }

    /// The stream of the source's embedded cover picture, if it has one.
    pub fn cover_art(&self) -> Option<usize> {
        self.streams.iter().find_map(|s| match s {
            StreamInfo::Other { index, medium, .. } if medium == COVER_ART => Some(*index),
            _ => None,
        })
    }

    /// The video stream Drake transcodes: the default-flagged one, else the first.
    pub fn main_video(&self) -> Option<&VideoStream> {
        self.videos().find(|v| v.default).or_else(|| self.videos().next())
    }

    /// The audio stream Drake transcodes: the default track only, else the first.
    pub fn main_audio(&self) -> Option<&AudioStream> {
        self.audios().find(|a| a.default).or_else(|| self.audios().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_from_an_upload_are_cleaned_and_bounded() {
        assert_eq!(clean_tag(" eng\n", 16).as_deref(), Some("eng"));
        assert_eq!(clean_tag("Director\"s \r\ncut", 128).as_deref(), Some("Directors cut"));
        assert_eq!(clean_tag("\u{7}", 16), None);
        assert_eq!(clean_tag(&"é".repeat(500), 128).map(|t| t.chars().count()), Some(128));
    }

    #[test]
    fn probes_stored_before_languages_were_probed_still_read() {
        let old = r#"{"index":1,"codec":"aac","channels":2,"channel_layout":"stereo","sample_rate":48000,"default":true}"#;
        let a: AudioStream = serde_json::from_str(old).unwrap();
        assert_eq!((a.language, a.title), (None, None));
    }
}
