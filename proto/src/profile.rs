//! Encoding profiles: TOML files in `profiles/`, parsed into a validated [`Profile`].
//!
//! Downstream code only ever sees a `Profile` that passed validation; every error
//! names the file, the line and the key. Shipped profiles are embedded in the binary
//! so a worker machine needs no checkout to find `web`.

use serde::Deserialize;
use std::path::Path;
use toml::Spanned;

/// The schema version this build understands. Bump it when a key changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Profiles compiled into the binary, by name.
const BUILTIN: &[(&str, &str)] = &[("web", include_str!("../../profiles/web.toml")), ("vp9", include_str!("../../profiles/vp9.toml"))];

/// Largest frame dimension a profile may ask for (8K).
const MAX_RUNG_HEIGHT: u32 = 4320;
const MAX_RUNGS: usize = 16;
/// Names a rung cannot take: a job's other directories (and its tasks' names).
pub const RESERVED_NAMES: [&str; 4] = ["audio", "subtitles", "captions", "thumbnails"];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid { file: String, line: usize, key: String, message: String },
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown profile `{0}` (built in: web, vp9; or give a path to a .toml file)")]
    Unknown(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    H264,
    Vp9,
}

impl VideoCodec {
    /// The libav encoder this codec is produced with.
    pub fn encoder(self) -> &'static str {
        match self {
            VideoCodec::H264 => "libx264",
            VideoCodec::Vp9 => "libvpx-vp9",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Worker tags a machine must have all of to take this profile's tasks (a GPU,
    /// a region); empty: any worker.
    pub requires_tags: Vec<String>,
    pub video: VideoSettings,
    pub audio: AudioSettings,
    pub chunking: Chunking,
    /// Rungs sorted by height, lowest first.
    pub rungs: Vec<Rung>,
}

/// When and how a long source is cut in time, so that every worker encodes a piece
/// of it (the profile's `[chunking]` table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chunking {
    /// Sources shorter than this are encoded whole.
    pub min_duration_s: f64,
    /// Length of a chunk: a whole number of HLS segments, so that chunk boundaries
    /// are segment boundaries in every rendition.
    pub chunk_s: f64,
}

/// Default `[chunking] min_duration_s`.
pub const DEFAULT_CHUNKING_MIN_DURATION_S: f64 = 180.0;
/// Default `[chunking] chunk_s` (rounded to a whole number of segments).
pub const DEFAULT_CHUNK_S: f64 = 60.0;

#[derive(Debug, Clone, PartialEq)]
pub struct VideoSettings {
    pub codec: VideoCodec,
    /// x264 preset (H.264 only).
    pub preset: Option<String>,
    /// libvpx `cpu-used` speed (VP9 only).
    pub cpu_used: Option<u32>,
    pub gop_seconds: f64,
    pub segment_seconds: f64,
    pub max_frame_rate: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioSettings {
    /// Bits per second.
    pub bitrate: u32,
    pub channels: u32,
    pub sample_rate: u32,
    /// Most audio tracks of a source kept (the default first, then in source order).
    pub max_tracks: usize,
}

/// Most audio tracks any profile keeps.
pub const MAX_AUDIO_TRACKS: usize = 16;
/// Audio tracks kept when a profile does not say.
pub const DEFAULT_AUDIO_TRACKS: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    pub name: String,
    /// Height of a landscape picture; for portrait sources it bounds the width.
    pub height: u32,
    pub rate: RateControl,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateControl {
    /// Constant quality with a VBV cap (bits per second).
    CappedCrf { crf: u32, maxrate: u32, bufsize: u32 },
    /// Average bitrate with a VBV cap (bits per second).
    Bitrate { bitrate: u32, maxrate: u32, bufsize: u32 },
}

impl RateControl {
    pub fn maxrate(&self) -> u32 {
        match *self {
            RateControl::CappedCrf { maxrate, .. } | RateControl::Bitrate { maxrate, .. } => maxrate,
        }
    }
}

// ---- raw TOML shape -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    schema: Spanned<u32>,
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    requires_tags: Option<Spanned<Vec<String>>>,
    video: RawVideo,
    audio: RawAudio,
    chunking: Option<RawChunking>,
    rendition: Vec<RawRung>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChunking {
    min_duration_s: Option<Spanned<f64>>,
    chunk_s: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVideo {
    codec: VideoCodec,
    preset: Option<Spanned<String>>,
    cpu_used: Option<Spanned<u32>>,
    gop_seconds: Spanned<f64>,
    segment_seconds: Spanned<f64>,
    max_frame_rate: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudio {
    codec: Spanned<String>,
    bitrate_kbps: Spanned<u32>,
    channels: Spanned<u32>,
    sample_rate: Spanned<u32>,
    max_tracks: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRung {
    name: Spanned<String>,
    height: Spanned<u32>,
    crf: Option<Spanned<u32>>,
    bitrate_kbps: Option<Spanned<u32>>,
    maxrate_kbps: Spanned<u32>,
    bufsize_kbps: Spanned<u32>,
}

const X264_PRESETS: &[&str] = &["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"];

impl Profile {
    /// Resolves `--profile NAME|PATH`: a path if it names a file (or ends in `.toml`),
    /// else `$DRAKE_PROFILES_DIR/NAME.toml` when that exists, else a built-in profile.
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        let as_path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            return Profile::from_file(as_path);
        }
        if !name_or_path.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ProfileError::Unknown(name_or_path.to_string()));
        }
        if let Some(dir) = std::env::var_os("DRAKE_PROFILES_DIR") {
            let candidate = Path::new(&dir).join(format!("{name_or_path}.toml"));
            if candidate.is_file() {
                return Profile::from_file(&candidate);
            }
        }
        match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, text)) => Profile::parse(text, &format!("profiles/{n}.toml")),
            None => Err(ProfileError::Unknown(name_or_path.to_string())),
        }
    }

    pub fn from_file(path: &Path) -> Result<Profile, ProfileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read { file: file.clone(), source })?;
        Profile::parse(&text, &file)
    }

    /// Names of the profiles compiled into the binary.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(n, _)| *n)
    }

    /// Parses and validates profile text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileError> {
        let err = |span: std::ops::Range<usize>, key: &str, message: String| ProfileError::Invalid {
            file: file.to_string(),
            line: line_of(text, span.start),
            key: key.to_string(),
            message,
        };
        let raw: RawProfile = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = key_at(text, span.start).unwrap_or_else(|| "(document)".into());
            err(span, &key, e.message().trim().to_string())
        })?;

        if *raw.schema.get_ref() != SCHEMA_VERSION {
            return Err(err(
                raw.schema.span(),
                "schema",
                format!("schema version {} is not supported (this build reads {SCHEMA_VERSION})", raw.schema.get_ref()),
            ));
        }
        let name = raw.name.get_ref().clone();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err(raw.name.span(), "name", "must be non-empty letters, digits, `-` or `_`".into()));
        }

        let v = &raw.video;
        let (preset, cpu_used) = match v.codec {
            VideoCodec::H264 => {
                if let Some(c) = &v.cpu_used {
                    return Err(err(c.span(), "video.cpu_used", "only applies to codec = \"vp9\"".into()));
                }
                let p = v.preset.as_ref().ok_or_else(|| err(0..0, "video.preset", "required for h264".into()))?;
                if !X264_PRESETS.contains(&p.get_ref().as_str()) {
                    return Err(err(p.span(), "video.preset", format!("must be one of {}", X264_PRESETS.join(", "))));
                }
                (Some(p.get_ref().clone()), None)
            }
            VideoCodec::Vp9 => {
                if let Some(p) = &v.preset {
                    return Err(err(p.span(), "video.preset", "only applies to codec = \"h264\"".into()));
                }
                let c = v.cpu_used.as_ref().ok_or_else(|| err(0..0, "video.cpu_used", "required for vp9".into()))?;
                if *c.get_ref() > 8 {
                    return Err(err(c.span(), "video.cpu_used", "must be 0..=8".into()));
                }
                (None, Some(*c.get_ref()))
            }
        };
        let range = |s: &Spanned<f64>, key: &str, lo: f64, hi: f64| {
            let x = *s.get_ref();
            if x.is_finite() && (lo..=hi).contains(&x) { Ok(x) } else { Err(err(s.span(), key, format!("must be between {lo} and {hi}"))) }
        };
        let gop_seconds = range(&v.gop_seconds, "video.gop_seconds", 0.5, 10.0)?;
        let segment_seconds = range(&v.segment_seconds, "video.segment_seconds", 1.0, 30.0)?;
        let segment_gops = segment_seconds / gop_seconds;
        if (segment_gops - segment_gops.round()).abs() > 1e-9 {
            return Err(err(
                v.segment_seconds.span(),
                "video.segment_seconds",
                "must be a whole number of GOPs (a multiple of gop_seconds)".into(),
            ));
        }
        let max_frame_rate = range(&v.max_frame_rate, "video.max_frame_rate", 1.0, 120.0)?;

        let raw_chunking = raw.chunking.as_ref();
        let min_duration_s = match raw_chunking.and_then(|c| c.min_duration_s.as_ref()) {
            Some(m) => range(m, "chunking.min_duration_s", 0.0, 86_400.0)?,
            None => DEFAULT_CHUNKING_MIN_DURATION_S,
        };
        let chunk_s = match raw_chunking.and_then(|c| c.chunk_s.as_ref()) {
            Some(c) => {
                let x = range(c, "chunking.chunk_s", segment_seconds, 3600.0)?;
                let segments = x / segment_seconds;
                if (segments - segments.round()).abs() > 1e-9 {
                    return Err(err(
                        c.span(),
                        "chunking.chunk_s",
                        "must be a whole number of segments (a multiple of segment_seconds)".into(),
                    ));
                }
                x
            }
            None => (DEFAULT_CHUNK_S / segment_seconds).round().max(1.0) * segment_seconds,
        };

        let a = &raw.audio;
        if a.codec.get_ref() != "aac" {
            return Err(err(a.codec.span(), "audio.codec", "only \"aac\" is supported".into()));
        }
        if !(16..=512).contains(a.bitrate_kbps.get_ref()) {
            return Err(err(a.bitrate_kbps.span(), "audio.bitrate_kbps", "must be 16..=512".into()));
        }
        if !(1..=2).contains(a.channels.get_ref()) {
            return Err(err(a.channels.span(), "audio.channels", "must be 1 or 2".into()));
        }
        if ![32000, 44100, 48000].contains(a.sample_rate.get_ref()) {
            return Err(err(a.sample_rate.span(), "audio.sample_rate", "must be 32000, 44100 or 48000".into()));
        }
        let max_tracks = match &a.max_tracks {
            Some(m) if !(1..=MAX_AUDIO_TRACKS).contains(m.get_ref()) => {
                return Err(err(m.span(), "audio.max_tracks", format!("must be 1..={MAX_AUDIO_TRACKS}")));
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_AUDIO_TRACKS,
        };

        if raw.rendition.is_empty() || raw.rendition.len() > MAX_RUNGS {
            return Err(err(0..0, "rendition", format!("a profile needs 1..={MAX_RUNGS} [[rendition]] tables")));
        }
        let mut rungs = Vec::with_capacity(raw.rendition.len());
        for r in &raw.rendition {
            let rname = r.name.get_ref();
            if rname.is_empty()
                || RESERVED_NAMES.contains(&rname.as_str())
                || !rname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                let reserved = RESERVED_NAMES.map(|n| format!("`{n}`")).join(", ");
                return Err(err(r.name.span(), "rendition.name", format!("must be letters, digits, `-` or `_`, and none of {reserved}")));
            }
            if rungs.iter().any(|x: &Rung| &x.name == rname) {
                return Err(err(r.name.span(), "rendition.name", format!("`{rname}` is used twice")));
            }
            let h = *r.height.get_ref();
            if !(16..=MAX_RUNG_HEIGHT).contains(&h) || h % 2 != 0 {
                return Err(err(r.height.span(), "rendition.height", format!("must be an even number in 16..={MAX_RUNG_HEIGHT}")));
            }
            let kbps = |s: &Spanned<u32>, key: &str| {
                if (50..=100_000).contains(s.get_ref()) {
                    Ok(s.get_ref() * 1000)
                } else {
                    Err(err(s.span(), key, "must be 50..=100000 kb/s".into()))
                }
            };
            let maxrate = kbps(&r.maxrate_kbps, "rendition.maxrate_kbps")?;
            let bufsize = kbps(&r.bufsize_kbps, "rendition.bufsize_kbps")?;
            let rate = match (&r.crf, &r.bitrate_kbps) {
                (Some(crf), None) => {
                    let max = if v.codec == VideoCodec::H264 { 51 } else { 63 };
                    if *crf.get_ref() > max {
                        return Err(err(crf.span(), "rendition.crf", format!("must be 0..={max}")));
                    }
                    RateControl::CappedCrf { crf: *crf.get_ref(), maxrate, bufsize }
                }
                (None, Some(b)) => {
                    let bitrate = kbps(b, "rendition.bitrate_kbps")?;
                    if bitrate > maxrate {
                        return Err(err(b.span(), "rendition.bitrate_kbps", "must not exceed maxrate_kbps".into()));
                    }
                    RateControl::Bitrate { bitrate, maxrate, bufsize }
                }
                _ => {
                    return Err(err(r.name.span(), "rendition", format!("`{rname}` needs exactly one of `crf` or `bitrate_kbps`")));
                }
            };
            rungs.push(Rung { name: rname.clone(), height: h, rate });
        }
        rungs.sort_by_key(|r| r.height);

        let requires_tags = match raw.requires_tags {
            Some(tags) => {
                let span = tags.span();
                valid_tags(tags.into_inner()).map_err(|m| err(span, "requires_tags", m))?
            }
            None => Vec::new(),
        };
        Ok(Profile {
            name,
            description: raw.description,
            requires_tags,
            video: VideoSettings { codec: v.codec, preset, cpu_used, gop_seconds, segment_seconds, max_frame_rate },
            chunking: Chunking { min_duration_s, chunk_s },
            audio: AudioSettings {
                bitrate: a.bitrate_kbps.get_ref() * 1000,
                channels: *a.channels.get_ref(),
                sample_rate: *a.sample_rate.get_ref(),
                max_tracks,
            },
            rungs,
        })
    }
}

/// Most tags a profile or a job may require.
pub const MAX_REQUIRED_TAGS: usize = 16;

/// Checks worker tags a profile or job requires: each 1 to 64 of `a-z 0-9 . _ -`
/// (as worker `--tags` are), at most [`MAX_REQUIRED_TAGS`]. Returns them sorted and
/// without repeats.
pub fn valid_tags(tags: Vec<String>) -> Result<Vec<String>, String> {
    if tags.len() > MAX_REQUIRED_TAGS {
        return Err(format!("at most {MAX_REQUIRED_TAGS} tags"));
    }
    for t in &tags {
        let ok = !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !ok {
            return Err(format!("{t:?} is not a tag (1 to 64 of a-z, 0-9, '.', '_', '-')"));
        }
    }
    let mut tags = tags;
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key written on the line holding `offset`, for errors raised by serde itself.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split('=').next()?.trim();
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

#[cfg(test)]
mod tests;
