//! Which of a profile's renditions apply to a source, and at what size and rate.
//!
//! Pure: the same probe and profile always give the same plan, so the coordinator
//! can plan and each transcode process can re-derive its own rendition by name.

use crate::probe::{DolbyVision, Probe, StreamInfo, UNDECODABLE_AUDIO};
use crate::profile::{Chunking, Profile, RateControl, VideoCodec};
use serde::{Deserialize, Serialize};

/// Name of the rendition planned for a source without video.
pub const AUDIO_RENDITION: &str = "audio";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub profile: String,
    pub renditions: Vec<PlannedRendition>,
    pub skipped: Vec<Skipped>,
    /// A source with video: every audio track it keeps, the default first, each
    /// an HLS alternate of its own (the rungs' HLS is video-only; their MP4s mux
    /// the first track's packets). Empty for an audio-only source, whose one
    /// rendition carries its audio.
    #[serde(default)]
    pub audio_tracks: Vec<PlannedTrack>,
    /// The source's text subtitle streams, each a WebVTT rendition extracted by
    /// the job's audio task in its pass over the source (`s0`, `s1`, ...).
    #[serde(default)]
    pub subtitle_tracks: Vec<PlannedSubtitle>,
    /// Subtitle streams not kept, and why (pictures, not text; no audio task; the cap).
    #[serde(default)]
    pub skipped_subtitles: Vec<SkippedSubtitle>,
}

/// At most this many subtitle streams of a source are kept.
pub const MAX_SUBTITLE_TRACKS: usize = 16;

/// One text subtitle stream of the source, as a WebVTT rendition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedSubtitle {
    /// `s0`, `s1`, ... in stream order: the prefix of its files.
    pub name: String,
    pub stream: usize,
    pub codec: String,
    /// BCP 47, if the source tags it.
    pub language: Option<String>,
    /// What a player lists, unique within the job's subtitles.
    pub label: String,
    pub default: bool,
    pub forced: bool,
    pub hearing_impaired: bool,
}

/// A subtitle stream the job does not publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedSubtitle {
    pub stream: usize,
    pub codec: String,
    pub language: Option<String>,
    pub reason: String,
}

/// One audio track of the source, encoded once per job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedTrack {
    /// `a0`, `a1`, ... in plan order: the prefix of the track's files.
    pub name: String,
    /// The source stream it is made from.
    pub stream: usize,
    /// The source's language tag as BCP 47 (`en`), if it has one.
    pub language: Option<String>,
    /// What a player lists: the source's title, else its language's name, else
    /// `Track N` (N the source stream's index); unique within the job.
    pub label: String,
    /// The source's default track (the first of the plan).
    pub default: bool,
    pub audio: PlannedAudio,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRendition {
    pub name: String,
    /// 0 for an audio-only rendition.
    pub width: u32,
    pub height: u32,
    pub video: Option<PlannedVideo>,
    pub audio: Option<PlannedAudio>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedVideo {
    pub codec: VideoCodec,
    /// x264 preset (H.264) or libvpx `cpu-used` (VP9), from the profile.
    pub preset: Option<String>,
    pub cpu_used: Option<u32>,
    /// Constant output frame rate as `num/den`.
    pub frame_rate: String,
    pub gop_seconds: f64,
    pub segment_seconds: f64,
    pub crf: Option<u32>,
    pub bitrate: Option<u32>,
    pub maxrate: u32,
    pub bufsize: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedAudio {
    pub codec: String,
    pub bitrate: u32,
    pub channels: u32,
    pub sample_rate: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("the source has no audio or video stream")]
    NoMedia,
    /// Its only audio is in a codec no decoder here reads (and it has no video).
    #[error("unsupported audio codec {0}: no decoder here reads it")]
    UnsupportedAudio(String),
    #[error("the source picture is {0}x{1}, which is not a usable size")]
    BadGeometry(u32, u32),
    /// A header that claims more than any real upload needs (a decompression bomb,
    /// or a corrupt file): refused before anything is decoded.
    #[error("the source claims {0}, over the limit of {1}")]
    OverLimit(String, String),
    /// Pictures only Dolby's own processing turns into colour (see
    /// [`DolbyVision::needs_reshaping`]): refused rather than encoded green and purple.
    #[error(
        "the video is Dolby Vision profile {0} with no HDR10, HLG or SDR base layer: its colours need Dolby's reshaping, \
         which Drake cannot apply (export it as Dolby Vision profile 8, HDR10 or SDR)"
    )]
    DolbyVisionOnly(u8),
}

/// Most pixels in one source frame: 8K (8192x4320).
pub const MAX_FRAME_PIXELS: u64 = 8192 * 4320;
/// Most source pixels per second to decode: 8K at 120 fps.
pub const MAX_SOURCE_PIXEL_RATE: f64 = 8192.0 * 4320.0 * 120.0;
/// Most output pixels per second over all renditions: four 4K rungs at 60 fps.
pub const MAX_OUTPUT_PIXEL_RATE: f64 = 4.0 * 3840.0 * 2160.0 * 60.0;
/// Longest source: 24 hours.
pub const MAX_DURATION_SECONDS: f64 = 24.0 * 3600.0;
/// Audio beyond these is not a real upload.
pub const MAX_SAMPLE_RATE: u32 = 384_000;
pub const MAX_CHANNELS: u32 = 64;

/// Refuses sources whose headers claim sizes, rates or lengths past the limits.
fn check_limits(probe: &Probe) -> Result<(), PlanError> {
    let over = |what: String, limit: String| Err(PlanError::OverLimit(what, limit));
    if !probe.duration.is_finite() || probe.duration > MAX_DURATION_SECONDS {
        return over(format!("a duration of {} s", probe.duration), format!("{MAX_DURATION_SECONDS} s"));
    }
    for v in probe.videos() {
        for (w, h) in [(v.coded_width, v.coded_height), (v.display_width, v.display_height)] {
            if w as u64 * h as u64 > MAX_FRAME_PIXELS {
                return over(format!("{w}x{h} pixels per frame"), "8192x4320".into());
            }
        }
        let rate = v.coded_width as f64 * v.coded_height as f64 * v.frame_rate;
        if !rate.is_finite() || rate > MAX_SOURCE_PIXEL_RATE {
            return over(format!("{:.0} pixels per second ({} fps)", rate, v.frame_rate), format!("{MAX_SOURCE_PIXEL_RATE:.0}"));
        }
    }
    for a in probe.audios() {
        if a.sample_rate > MAX_SAMPLE_RATE {
            return over(format!("a sample rate of {} Hz", a.sample_rate), format!("{MAX_SAMPLE_RATE} Hz"));
        }
        if a.channels > MAX_CHANNELS {
            return over(format!("{} audio channels", a.channels), format!("{MAX_CHANNELS}"));
        }
    }
    Ok(())
}

/// Frame rates that sources claim approximately; snapping to them keeps timestamps exact.
const STANDARD_RATES: &[(u32, u32)] = &[(24000, 1001), (24, 1), (25, 1), (30000, 1001), (30, 1), (48, 1), (50, 1), (60000, 1001), (60, 1)];

/// Turns a measured frame rate into an exact rational, snapping to broadcast rates
/// within 0.5% (variable frame rate phones report 29.97-ish averages).
pub fn rational_frame_rate(fps: f64) -> (u32, u32) {
    if let Some(&(n, d)) = STANDARD_RATES.iter().min_by(|a, b| {
        let da = (a.0 as f64 / a.1 as f64 - fps).abs();
        let db = (b.0 as f64 / b.1 as f64 - fps).abs();
        da.total_cmp(&db)
    }) {
        let r = n as f64 / d as f64;
        if ((r - fps) / r).abs() < 0.005 {
            return (n, d);
        }
    }
    if (fps - fps.round()).abs() < 0.01 {
        return (fps.round().max(1.0) as u32, 1);
    }
    ((fps * 1000.0).round().max(1.0) as u32, 1000)
}

/// The output rate for a source rate under a profile's cap: halve high rates when
/// that fits (120 -> 60, 100 -> 50), else clamp to the cap.
fn capped_rate(fps: f64, max: f64) -> (u32, u32) {
    let fps = if fps.is_finite() && fps > 0.0 { fps } else { 25.0 };
    if fps <= max + 1e-6 {
        rational_frame_rate(fps)
    } else if fps / 2.0 <= max + 1e-6 {
        rational_frame_rate(fps / 2.0)
    } else {
        rational_frame_rate(max)
    }
}

fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32 * 2).max(2)
}

/// Largest even number not above `x`: the source-size fallback never upscales.
fn even_down(x: f64) -> u32 {
    ((x / 2.0).floor() as u32 * 2).max(2)
}

pub fn plan(probe: &Probe, profile: &Profile) -> Result<Plan, PlanError> {
    check_limits(probe)?;
    let plan = plan_within_limits(probe, profile)?;
    let output_rate: f64 = plan
        .renditions
        .iter()
        .filter_map(|r| {
            let v = r.video.as_ref()?;
            let (num, den) = v.frame_rate.split_once('/')?;
            Some(r.width as f64 * r.height as f64 * num.parse::<f64>().ok()? / den.parse::<f64>().ok()?.max(1.0))
        })
        .sum();
    if output_rate > MAX_OUTPUT_PIXEL_RATE {
        return Err(PlanError::OverLimit(format!("{output_rate:.0} output pixels per second"), format!("{MAX_OUTPUT_PIXEL_RATE:.0}")));
    }
    Ok(plan)
}

fn plan_within_limits(probe: &Probe, profile: &Profile) -> Result<Plan, PlanError> {
    let audio = probe.main_audio().map(|_| PlannedAudio {
        codec: "aac".into(),
        bitrate: profile.audio.bitrate,
        channels: profile.audio.channels,
        sample_rate: profile.audio.sample_rate,
    });
    let Some(v) = probe.main_video() else {
        if audio.is_none() {
            let unread = probe.streams.iter().find_map(|s| match s {
                StreamInfo::Other { codec, medium, .. } if medium == UNDECODABLE_AUDIO => Some(codec.clone()),
                _ => None,
            });
            return Err(unread.map_or(PlanError::NoMedia, PlanError::UnsupportedAudio));
        }
        let skipped = profile.rungs.iter().map(|r| Skipped { name: r.name.clone(), reason: "the source has no video".into() }).collect();
        let r = PlannedRendition { name: AUDIO_RENDITION.into(), width: 0, height: 0, video: None, audio };
        let (subtitle_tracks, skipped_subtitles) = subtitle_tracks(probe, false);
        return Ok(Plan {
            profile: profile.name.clone(),
            renditions: vec![r],
            skipped,
            audio_tracks: Vec::new(),
            subtitle_tracks,
            skipped_subtitles,
        });
    };
    let (dw, dh) = (v.display_width, v.display_height);
    if dw < 2 || dh < 2 || dw > 16384 || dh > 16384 {
        return Err(PlanError::BadGeometry(dw, dh));
    }
    if let Some(dv) = v.dolby_vision.filter(DolbyVision::needs_reshaping) {
        return Err(PlanError::DolbyVisionOnly(dv.profile));
    }
    // Rungs are named by the short side, so a portrait 1080x1920 phone video gets "1080p".
    let (short, long) = (dw.min(dh) as f64, dw.max(dh) as f64);
    let portrait = dh > dw;
    let (num, den) = capped_rate(v.frame_rate, profile.video.max_frame_rate);
    let video_for = |rate: RateControl| {
        let (crf, bitrate, maxrate, bufsize) = match rate {
            RateControl::CappedCrf { crf, maxrate, bufsize } => (Some(crf), None, maxrate, bufsize),
            RateControl::Bitrate { bitrate, maxrate, bufsize } => (None, Some(bitrate), maxrate, bufsize),
        };
        PlannedVideo {
            codec: profile.video.codec,
            preset: profile.video.preset.clone(),
            cpu_used: profile.video.cpu_used,
            frame_rate: format!("{num}/{den}"),
            gop_seconds: profile.video.gop_seconds,
            segment_seconds: profile.video.segment_seconds,
            crf,
            bitrate,
            maxrate,
            bufsize,
        }
    };
    let sized = |short_side: f64| {
        // At the source's own size, never a pixel more than the source.
        let s = if short_side >= short { even_down(short_side) } else { even(short_side) };
        let l = even(long * s as f64 / short).min(even_down(long));
        if portrait { (s, l) } else { (l, s) }
    };

    let mut renditions = Vec::new();
    let mut skipped = Vec::new();
    for rung in &profile.rungs {
        if rung.height as f64 > short {
            skipped.push(Skipped { name: rung.name.clone(), reason: format!("would upscale: the source is {dw}x{dh}") });
            continue;
        }
        let (width, height) = sized(rung.height as f64);
        renditions.push(PlannedRendition {
            name: rung.name.clone(),
            width,
            height,
            video: Some(video_for(rung.rate)),
            audio: audio.clone(),
        });
    }
    if renditions.is_empty() {
        // Smaller than the lowest rung: one rendition at the source's own (even) size.
        let (width, height) = sized(short);
        let lowest = &profile.rungs[0];
        renditions.push(PlannedRendition {
            name: format!("{}p", width.min(height)),
            width,
            height,
            video: Some(video_for(lowest.rate)),
            audio: audio.clone(),
        });
    }
    let audio_tracks = audio.map(|a| audio_tracks(probe, profile, &a)).unwrap_or_default();
    let (subtitle_tracks, skipped_subtitles) = subtitle_tracks(probe, true);
    Ok(Plan { profile: profile.name.clone(), renditions, skipped, audio_tracks, subtitle_tracks, skipped_subtitles })
}

/// What a player lists for a track: its title, else its language's name, else
/// `Track N` (N its stream index); with the index added where `taken` already
/// has the name (a player's menu needs every name once; HLS requires it in a group).
fn track_label(title: Option<&str>, language: Option<&str>, index: usize, taken: &[&str]) -> String {
    let named = title.map(str::to_string).or_else(|| {
        let tag = language?;
        Some(crate::language::name(tag).map_or_else(|| tag.to_string(), str::to_string))
    });
    let label = named.unwrap_or_else(|| format!("Track {index}"));
    if taken.contains(&label.as_str()) { format!("{label} ({index})") } else { label }
}

/// The subtitle streams a source keeps: its text ones in stream order, up to
/// [`MAX_SUBTITLE_TRACKS`], when it has a video to caption; every other one
/// skipped with its reason. The job's audio task extracts them in its pass over
/// the source, or for a source without audio a task of their own.
fn subtitle_tracks(probe: &Probe, with_video: bool) -> (Vec<PlannedSubtitle>, Vec<SkippedSubtitle>) {
    let (mut kept, mut skipped): (Vec<PlannedSubtitle>, Vec<SkippedSubtitle>) = (Vec::new(), Vec::new());
    for t in probe.subtitles() {
        let reason = if !t.text {
            Some(format!("{} subtitles are pictures, not text: they cannot become WebVTT", t.codec))
        } else if !with_video {
            Some("the source has no video to caption".to_string())
        } else if kept.len() == MAX_SUBTITLE_TRACKS {
            Some(format!("over the limit of {MAX_SUBTITLE_TRACKS} subtitle tracks"))
        } else {
            None
        };
        if let Some(reason) = reason {
            skipped.push(SkippedSubtitle { stream: t.index, codec: t.codec.clone(), language: t.language.clone(), reason });
            continue;
        }
        let taken: Vec<&str> = kept.iter().map(|k| k.label.as_str()).collect();
        let label = track_label(t.title.as_deref(), t.language.as_deref(), t.index, &taken);
        kept.push(PlannedSubtitle {
            name: format!("s{}", kept.len()),
            stream: t.index,
            codec: t.codec.clone(),
            language: t.language.as_deref().and_then(crate::language::bcp47),
            label,
            default: t.default,
            forced: t.forced,
            hearing_impaired: t.hearing_impaired,
        });
    }
    (kept, skipped)
}

/// The tracks a source keeps: its default (or first) audio track, then the others
/// in stream order, up to the profile's `max_tracks`.
fn audio_tracks(probe: &Probe, profile: &Profile, planned: &PlannedAudio) -> Vec<PlannedTrack> {
    let Some(main) = probe.main_audio() else { return Vec::new() };
    let ordered = std::iter::once(main).chain(probe.audios().filter(|a| a.index != main.index));
    let mut tracks: Vec<PlannedTrack> = Vec::new();
    for (k, a) in ordered.take(profile.audio.max_tracks).enumerate() {
        let language = a.language.as_deref().and_then(crate::language::bcp47);
        let taken: Vec<&str> = tracks.iter().map(|t| t.label.as_str()).collect();
        let label = track_label(a.title.as_deref(), a.language.as_deref(), a.index, &taken);
        tracks.push(PlannedTrack { name: format!("a{k}"), stream: a.index, language, label, default: k == 0, audio: planned.clone() });
    }
    tracks
}

/// How a long source is cut in time: the job's output frame grid, computed once
/// from the probe and shared by every rendition, and each chunk's frames on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPlan {
    /// The constant output frame rate of every rendition, as `num/den`.
    pub frame_rate: String,
    /// Frames in the whole output: the source's duration on the grid, rounded.
    pub total_frames: u64,
    pub chunk_s: f64,
    /// In order; together they cover frames `0..total_frames` exactly once.
    pub chunks: Vec<PlannedChunk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChunk {
    pub index: u32,
    /// The chunk's first frame: the first frame at or after its start mark, where
    /// an unchunked encode forces its IDR too.
    pub start_frame: u64,
    pub frames: u64,
}

impl PlannedChunk {
    pub fn end_frame(&self) -> u64 {
        self.start_frame + self.frames
    }
}

/// The first frame at or after `ms` milliseconds at `num/den` fps, in exact
/// integer arithmetic: where the encoder forces an IDR for a mark at `ms`.
pub fn first_frame_at(ms: u128, (num, den): (u64, u64)) -> u64 {
    (ms * u128::from(num)).div_ceil(1000 * u128::from(den)) as u64
}

/// Most chunks one job is cut into; longer sources get longer chunks.
pub const MAX_CHUNKS: usize = 1000;

/// A chunk is at least this many times as long as the longest stretch of its
/// source without a keyframe. A chunk decodes from the source keyframe before its
/// start and throws away the frames before it, up to that stretch: at this ratio,
/// at most half a chunk's decode, a quarter on average. A source with one keyframe
/// (a screen recording, a browser's MediaRecorder WebM) would otherwise decode
/// everything before each chunk again, and its chunks would cost the square of its
/// length.
pub const CHUNK_PER_KEYFRAME_GAP: f64 = 2.0;

/// Cuts a source into chunks, or `None` when it is encoded whole: it is shorter
/// than `min_duration_s`, has no video, or would make a single chunk. Chunks start
/// at multiples of `chunk_s`, doubled until there are at most [`MAX_CHUNKS`] and
/// each is at least [`CHUNK_PER_KEYFRAME_GAP`] times the source's longest keyframe
/// gap; a last piece shorter than half a chunk joins the one before it.
pub fn chunks(plan: &Plan, source: &Probe, chunking: &Chunking) -> Option<ChunkPlan> {
    let duration = source.duration;
    if !duration.is_finite() || duration < chunking.min_duration_s || chunking.chunk_s <= 0.0 {
        return None;
    }
    let frame_rate = plan.renditions.iter().find_map(|r| r.video.as_ref())?.frame_rate.clone();
    let (num, den) = frame_rate.split_once('/').and_then(|(n, d)| Some((n.parse::<u64>().ok()?, d.parse::<u64>().ok()?)))?;
    if num == 0 || den == 0 {
        return None;
    }
    let total_frames = (duration * num as f64 / den as f64).round() as u64;
    // A gap beyond the source's end (a bad index) still ends the doubling.
    let keyframe_gap = source.main_video().and_then(|v| v.keyframe_gap_s).filter(|g| g.is_finite()).unwrap_or(0.0).min(duration);
    let mut chunk_s = chunking.chunk_s;
    while duration / chunk_s > MAX_CHUNKS as f64 || chunk_s < CHUNK_PER_KEYFRAME_GAP * keyframe_gap {
        chunk_s *= 2.0;
    }
    let chunk_ms = (chunk_s * 1000.0).round() as u128;
    let start_of = |k: u64| first_frame_at(u128::from(k) * chunk_ms, (num, den));
    let mut starts: Vec<u64> = (0..).map(start_of).take_while(|&s| s < total_frames).collect();
    let last_piece = total_frames - starts.last().copied().unwrap_or(0);
    if starts.len() > 1 && (last_piece as f64) < (start_of(1) as f64) / 2.0 {
        starts.pop();
    }
    if starts.len() < 2 {
        return None;
    }
    let chunks = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = starts.get(i + 1).copied().unwrap_or(total_frames);
            PlannedChunk { index: i as u32, start_frame: start, frames: end - start }
        })
        .collect();
    Some(ChunkPlan { frame_rate, total_frames, chunk_s, chunks })
}

#[cfg(test)]
mod tests;
