//! `drake probe`: describes a source from its container headers, reading its packets
//! only when they do not say how long it is or where its video's keyframes are.
//! Decodes nothing.

use crate::av;
use crate::error::{EngineError, Result};
use crate::timeline::{Seen, Timelines};
use ff::ffi;
use ff::format::stream::Disposition;
use ffmpeg_next as ff;
use proto::probe::{
    AudioStream, COVER_ART, MAX_LANGUAGE_CHARS, MAX_TITLE_CHARS, Probe, StreamInfo, SubtitleStream, UNDECODABLE_AUDIO,
    UNREADABLE_COVER_ART, VideoStream, clean_tag,
};

/// Streams beyond this count make an input suspicious rather than useful.
pub const MAX_STREAMS: usize = 64;
/// Most attached files accepted (fonts beside ASS subtitles); libav's own limit
/// on a file's streams is 1000.
pub const MAX_ATTACHMENTS: usize = 1000;

/// `drake probe`: [`describe`], and what only the coordinator's plan uses: for a
/// local file whose header indexes no keyframe of its video, whether a chunk's
/// seek in it would read through (`Probe::seeks_by_reading`); and which cover
/// pictures decode (a song's job makes its poster from one, `thumbnails::cover`,
/// and is not given a thumbnails task that would fail).
pub fn probe(input: &str) -> Result<Probe> {
    let (ictx, keyframes) = av::open_input_indexed(input)?;
    let mut probe = describe(&ictx, input, Some(&keyframes))?;
    for s in &mut probe.streams {
        if let StreamInfo::Other { index, medium, .. } = s
            && medium == COVER_ART
            && ictx.stream(*index).and_then(|st| av::attached_picture(&st)).is_none()
        {
            *medium = UNREADABLE_COVER_ART.into();
        }
    }
    if !av::is_url(input)
        && let Some(video) = probe.main_video()
        && keyframes.get(video.index).is_none_or(Option::is_none)
        && let Some(gap) = video.keyframe_gap_s
        // A source this sparse in keyframes is encoded whole (`proto::plan::chunks`).
        && proto::plan::CHUNK_PER_KEYFRAME_GAP * gap < probe.duration
    {
        // Only a time chunk's reading is at stake, so a seek that fails here is
        // left for the chunk to report.
        probe.seeks_by_reading = seeks_by_reading(input, video.index, probe.duration, gap).unwrap_or(false);
    }
    Ok(probe)
}

/// Describes an open input. `keyframes` is what its header indexes (from
/// `av::open_input_indexed`), in stream order, for the video's `keyframe_gap_s`; a
/// local file whose header indexes none is read for them. `None`: the caller has
/// no use for the gap, and it is left out unless a file without a duration is read
/// anyway.
pub fn describe(ictx: &ff::format::context::Input, input: &str, keyframes: Option<&[Option<av::KeyframeIndex>]>) -> Result<Probe> {
    let is_attachment = |s: &ff::format::stream::Stream| av::params(s).codec_type == ffi::AVMediaType::AVMEDIA_TYPE_ATTACHMENT;
    let attachments = ictx.streams().filter(is_attachment).count();
    let media = ictx.nb_streams() as usize - attachments;
    if media > MAX_STREAMS {
        return Err(EngineError::bad(format!("{media} streams (at most {MAX_STREAMS} are accepted)")));
    }
    if attachments > MAX_ATTACHMENTS {
        return Err(EngineError::bad(format!("{attachments} attached files (at most {MAX_ATTACHMENTS} are accepted)")));
    }
    let mut streams = Vec::new();
    let mut longest = 0.0f64;
    for s in ictx.streams().filter(|s| !is_attachment(s)) {
        let p = av::params(&s);
        let default = s.disposition().contains(Disposition::DEFAULT);
        if s.duration() > 0 {
            longest = longest.max(s.duration() as f64 * f64::from(s.time_base()));
        }
        let info = match p.codec_type {
            ffi::AVMediaType::AVMEDIA_TYPE_VIDEO if s.disposition().contains(Disposition::ATTACHED_PIC) => other(&s, COVER_ART),
            ffi::AVMediaType::AVMEDIA_TYPE_VIDEO => {
                let rotation = av::rotation(&s);
                let sar = if p.sample_aspect_ratio.num > 0 && p.sample_aspect_ratio.den > 0 {
                    (p.sample_aspect_ratio.num as u32, p.sample_aspect_ratio.den as u32)
                } else {
                    (1, 1)
                };
                let (w, h) = (p.width.max(0) as u32, p.height.max(0) as u32);
                let dw = ((w as u64 * sar.0 as u64) as f64 / sar.1 as f64).round() as u32;
                let (display_width, display_height) = if rotation % 180 == 90 { (h, dw) } else { (dw, h) };
                let avg = s.avg_frame_rate();
                let nominal = av::nominal_frame_rate(ictx, &s);
                let known = |r: ff::Rational| r.numerator() > 0 && r.denominator() > 0;
                let rate = if known(nominal) { nominal } else { avg };
                let frame_rate = if known(rate) { f64::from(rate) } else { 0.0 };
                StreamInfo::Video(VideoStream {
                    index: s.index(),
                    codec: av::codec_name(p.codec_id),
                    coded_width: w,
                    coded_height: h,
                    display_width,
                    display_height,
                    sample_aspect_ratio: format!("{}:{}", sar.0, sar.1),
                    rotation,
                    frame_rate: (frame_rate * 1000.0).round() / 1000.0,
                    avg_frame_rate: format!("{}/{}", avg.numerator(), avg.denominator()),
                    pix_fmt: av::pix_fmt_name(p.format),
                    bit_depth: av::bit_depth(p.format),
                    default,
                    keyframe_gap_s: None,
                    color_primaries: av::colour_name(ffi::av_color_primaries_name, p.color_primaries),
                    color_transfer: av::colour_name(ffi::av_color_transfer_name, p.color_trc),
                    color_space: av::colour_name(ffi::av_color_space_name, p.color_space),
                    dolby_vision: av::dolby_vision(&s),
                })
            }
            // A track no decoder here reads (a newer phone's spatial audio beside its
            // stereo track) is listed, not planned: it would fail the whole job.
            ffi::AVMediaType::AVMEDIA_TYPE_AUDIO if ff::decoder::find(p.codec_id.into()).is_none() => other(&s, UNDECODABLE_AUDIO),
            ffi::AVMediaType::AVMEDIA_TYPE_AUDIO => StreamInfo::Audio(AudioStream {
                index: s.index(),
                codec: av::codec_name(p.codec_id),
                channels: p.ch_layout.nb_channels.max(0) as u32,
                channel_layout: av::channel_layout_name(p),
                sample_rate: p.sample_rate.max(0) as u32,
                default,
                language: language(&s),
                title: title(&s),
            }),
            ffi::AVMediaType::AVMEDIA_TYPE_SUBTITLE => {
                let codec = av::codec_name(p.codec_id);
                StreamInfo::Subtitle(SubtitleStream {
                    index: s.index(),
                    text: proto::probe::TEXT_SUBTITLE_CODECS.contains(&codec.as_str()),
                    codec,
                    language: language(&s),
                    title: title(&s),
                    default,
                    forced: s.disposition().contains(Disposition::FORCED),
                    hearing_impaired: s.disposition().contains(Disposition::HEARING_IMPAIRED),
                })
            }
            _ => other(&s, "data"),
        };
        streams.push(info);
    }
    let wanted = keyframes.is_some();
    let mut keyframes = keyframes.map(<[_]>::to_vec).unwrap_or_default();
    let local = !av::is_url(input);
    let said = match (ictx.duration(), longest) {
        (d, _) if d > 0 => Some(d as f64 / f64::from(ff::ffi::AV_TIME_BASE)),
        (_, l) if l > 0.0 => Some(l),
        _ => None,
    };
    // MPEG-TS, FLV and Matroska (see `av::keyframe_index`).
    let unindexed = streams.iter().any(|s| matches!(s, StreamInfo::Video(v) if keyframes.get(v.index).is_none_or(Option::is_none)));
    if !local && said.is_none() {
        // Reading the packets over HTTP would fetch the whole source once more. The
        // farm remuxes such a source before any task reads it so (`duration_by_reading`).
        return Err(EngineError::bad(
            "nothing in its headers says how long it is (a Matroska or WebM written as a stream, as a browser \
             records), and it is read over HTTP: give a local copy, or `drake remux` it first",
        ));
    }
    let (mut duration, mut timeline_joins) = (said.unwrap_or(0.0), 0);
    // What the container does not say, a local file's packets do (a URL was refused above).
    let duration_by_reading = said.is_none();
    if duration_by_reading || (local && wanted && unindexed) {
        let read = by_reading(input)?;
        (keyframes, timeline_joins) = (read.keyframes, read.joins);
        duration = said.unwrap_or(read.end);
        if duration <= 0.0 {
            return Err(EngineError::bad(
                "nothing in it says how long it is: no packet carries a timestamp (a raw H.264 or HEVC stream, outside \
                 any container?); put it in one first, e.g. `ffmpeg -framerate 30 -i SOURCE -c copy OUT.mp4`",
            ));
        }
    }
    for s in &mut streams {
        if let StreamInfo::Video(v) = s
            && let Some(Some(k)) = keyframes.get(v.index)
        {
            v.keyframe_gap_s = Some((k.gap(duration) * 1000.0).round() / 1000.0);
        }
    }
    let size_bytes = if av::is_url(input) { None } else { std::fs::metadata(input).ok().map(|m| m.len()) };
    Ok(Probe {
        container: ictx.format().name().to_string(),
        duration: (duration * 1e6).round() / 1e6,
        bitrate: ictx.bit_rate().max(0) as u64,
        size_bytes,
        streams,
        attachments: attachments as u32,
        timeline_joins,
        seeks_by_reading: false,
        duration_by_reading,
        remuxed_parts: None,
    })
}

/// Whether a time chunk's seek in a local file would read through what lies
/// before its part (see `Probe::seeks_by_reading`). Seeks to the middle of the
/// file as a chunk does, reads on to it, and counts what libav read, in seconds
/// of the file: a seek by an index (MP4's, Matroska's cues) or by a binary search
/// (MPEG-TS) reads about one keyframe gap; one without either reads the half.
fn seeks_by_reading(input: &str, video: usize, duration: f64, gap: f64) -> Result<bool> {
    let size = std::fs::metadata(input).map_err(|e| EngineError::bad(format!("cannot read {input}: {e}")))?.len();
    if size == 0 || duration <= 0.0 {
        return Ok(false);
    }
    let mut ictx = av::open_input(input)?;
    let (start, middle) = (av::start_seconds(&ictx), duration / 2.0);
    let time_base = f64::from(ictx.stream(video).expect("the probed stream exists").time_base());
    let before = av::bytes_read(&ictx);
    let next = |i: &mut ff::format::context::Input| Ok(i.packets().next().map(|(_, p)| p));
    if av::seek_keyframe_before(&mut ictx, video, start, middle, next)?.is_some() {
        for (s, pkt) in ictx.packets() {
            if s.index() == video && pkt.pts().or(pkt.dts()).is_some_and(|t| t as f64 * time_base - start >= middle) {
                break;
            }
        }
    }
    let read = av::bytes_read(&ictx) - before;
    let read_s = read as f64 / size as f64 * duration;
    // More than the gap a seek by an index decodes from (and the second early a
    // chunk seeks), by half of all that lies before the middle.
    Ok(read > SEEK_READ_FLOOR && read_s > gap + 1.0 + middle / 2.0)
}

/// A seek that reads less than this costs a chunk too little to remux its source
/// for; in a small file, a binary search's reads are a large part of it.
const SEEK_READ_FLOOR: u64 = 1 << 20;

/// What reading a local file's packets, undecoded, finds.
struct Reading {
    /// Where its last packet ends.
    end: f64,
    /// Each stream's keyframes, their index ending where the stream does.
    keyframes: Vec<Option<av::KeyframeIndex>>,
    /// Where the timestamps of a stream start over (the most of any stream).
    joins: u32,
}

/// Reads a local file's packets, without decoding them, to its end: for the
/// duration of a file whose container does not say it (a browser's MediaRecorder
/// WebM, a Matroska recording written as a stream), and the keyframes and joins of
/// one that has no index (such a file has none either). All of it, since a join
/// anywhere would otherwise be found only by the encode that reaches it (a 1 GB
/// MPEG-TS takes 0.9 s from the page cache here, 1.6 s from disk). Over HTTP this
/// would fetch the whole source, so there the duration, the keyframes and the
/// joins stay unknown.
fn by_reading(input: &str) -> Result<Reading> {
    let mut ictx = av::open_input(input)?;
    let start = av::start_seconds(&ictx);
    let time_bases: Vec<ff::Rational> = ictx.streams().map(|s| s.time_base()).collect();
    let watched: Vec<bool> = ictx
        .streams()
        .map(|s| matches!(av::params(&s).codec_type, ffi::AVMediaType::AVMEDIA_TYPE_AUDIO | ffi::AVMediaType::AVMEDIA_TYPE_VIDEO))
        .collect();
    let mut keyframes: Vec<Option<av::KeyframeIndex>> = vec![None; time_bases.len()];
    let mut ends = vec![0.0f64; time_bases.len()];
    let mut joins = vec![0u32; time_bases.len()];
    let mut timelines = Timelines::default();
    for (stream, pkt) in ictx.packets() {
        let i = stream.index();
        if let Some(dts) = pkt.dts().filter(|_| watched[i])
            && let Seen::Joined { .. } = timelines.see(i, dts as f64 * f64::from(time_bases[i]))
        {
            joins[i] += 1;
        }
        if let Some(ts) = pkt.pts().or(pkt.dts()) {
            let t = ts as f64 * f64::from(time_bases[i]) - start;
            ends[i] = ends[i].max(t + pkt.duration().max(0) as f64 * f64::from(time_bases[i]));
            if pkt.is_key() {
                av::KeyframeIndex::add(&mut keyframes[i], t);
            }
        }
    }
    for (k, end) in keyframes.iter_mut().zip(&ends) {
        if let Some(k) = k {
            k.end = Some(*end);
        }
    }
    Ok(Reading { end: ends.iter().fold(0.0f64, |a, &b| a.max(b)), keyframes, joins: joins.into_iter().max().unwrap_or(0) })
}

/// A stream's language tag (`und`, undetermined, is none).
fn language(s: &ff::format::stream::Stream) -> Option<String> {
    s.metadata().get("language").and_then(|l| clean_tag(l, MAX_LANGUAGE_CHARS)).filter(|l| !l.eq_ignore_ascii_case("und"))
}

fn title(s: &ff::format::stream::Stream) -> Option<String> {
    s.metadata().get("title").and_then(|t| clean_tag(t, MAX_TITLE_CHARS))
}

fn other(s: &ff::format::stream::Stream, medium: &str) -> StreamInfo {
    StreamInfo::Other { index: s.index(), codec: av::codec_name(av::params(s).codec_id), medium: medium.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading a file without an index finds where it ends and each keyframe.
    #[test]
    fn reading_finds_the_end_and_the_keyframes() {
        ff::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("every2s.ts");
        #[rustfmt::skip]
        let made = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=30:d=20", "-c:v", "libx264", "-preset", "ultrafast",
                   "-x264-params", "keyint=60:min-keyint=60:scenecut=0"])
            .arg(&ts)
            .status()
            .unwrap();
        assert!(made.success());
        let read = by_reading(ts.to_str().unwrap()).unwrap();
        let (end, keyframes) = (read.end, read.keyframes[0].unwrap());
        assert!((end - 20.0).abs() < 0.1 && (keyframes.longest_gap - 2.0).abs() < 0.01 && keyframes.last > 17.9, "{end} {keyframes:?}");
        assert_eq!(read.joins, 0);
    }
}
