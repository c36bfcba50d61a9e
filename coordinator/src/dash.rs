//! The job's DASH MPD (`manifest.mpd`): CMAF, DASH-IF interoperable, over the very
//! init and media segments HLS lists, so DASH costs no second copy of the media.
//!
//! Pure text from the task reports the finalize already verified; it reads no
//! file and never looks inside the media. Each track's `SegmentTimeline` comes
//! from the worker's reading of its `moof` boxes (`proto::report::Timeline`).

use serde_json::Value;
use std::fmt::Write as _;

/// The MPD for `renditions` (manifest entries of the video rungs, lowest first),
/// the `audio` entry (its `tracks`) and the text `subtitles` entries, all with
/// paths relative to the job directory. `None` when a track lacks its timeline
/// (a report from before DASH): an MPD must list every segment's time.
pub fn mpd(renditions: &[Value], audio: &Value, subtitles: &[Value]) -> Option<String> {
    let videos: Vec<&Value> = renditions.iter().filter(|r| r["video"].is_object()).collect();
    let tracks = audio["tracks"].as_array().map(Vec::as_slice).unwrap_or_default();
    let all: Vec<&Value> = videos.iter().copied().chain(tracks).collect();
    if videos.is_empty() || all.iter().any(|t| !t["timeline"]["segments"].is_array()) {
        return None;
    }
    let duration = all.iter().filter_map(|t| t["duration"].as_f64()).fold(0.0, f64::max);
    let max_segment = all
        .iter()
        .filter_map(|t| timeline(t))
        .flat_map(|(scale, s)| s.into_iter().map(move |(_, d)| d as f64 / f64::from(scale.max(1))))
        .fold(2.0, f64::max);
    let mut m = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        m,
        "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019\" \
         type=\"static\" mediaPresentationDuration=\"{}\" maxSegmentDuration=\"{}\" minBufferTime=\"PT2S\">",
        iso_duration(duration),
        iso_duration(max_segment)
    );
    let _ = writeln!(m, "  <Period id=\"0\" start=\"PT0S\">");

    let (max_w, max_h) =
        videos.iter().fold((0, 0), |(w, h), r| (w.max(r["width"].as_u64().unwrap_or(0)), h.max(r["height"].as_u64().unwrap_or(0))));
    let _ = writeln!(
        m,
        "    <AdaptationSet id=\"0\" contentType=\"video\" mimeType=\"video/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\" maxWidth=\"{max_w}\" maxHeight=\"{max_h}\">"
    );
    for r in &videos {
        let dir = dir_name(r);
        let codecs = r["codecs"].as_str().unwrap_or_default().split(',').next().unwrap_or_default();
        let _ = write!(
            m,
            "      <Representation id=\"{}\" bandwidth=\"{}\" codecs=\"{}\" width=\"{}\" height=\"{}\" sar=\"1:1\"",
            esc(dir),
            r["peak_bitrate"].as_u64().unwrap_or(0),
            esc(codecs),
            r["width"],
            r["height"]
        );
        if let Some(rate) = r["frame_rate"].as_f64().and_then(frame_rate) {
            let _ = write!(m, " frameRate=\"{rate}\"");
        }
        m.push_str(">\n");
        let roles = &r["file_roles"];
        let init = roles["hls_init"].as_str().unwrap_or("init.mp4");
        let _ = writeln!(m, "        <BaseURL>{}/</BaseURL>", esc(dir));
        segment_template(&mut m, r, init, "seg_$Number%05d$.m4s");
        m.push_str("      </Representation>\n");
    }
    m.push_str("    </AdaptationSet>\n");

    let audio_dir = audio["dir"].as_str().and_then(|d| d.rsplit('/').next()).unwrap_or(crate::storage::AUDIO_DIR);
    for (i, t) in tracks.iter().enumerate() {
        let name = t["name"].as_str().unwrap_or_default();
        let _ = write!(
            m,
            "    <AdaptationSet id=\"{}\" contentType=\"audio\" mimeType=\"audio/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\"",
            i + 1
        );
        if let Some(lang) = t["language"].as_str() {
            let _ = write!(m, " lang=\"{}\"", esc(lang));
        }
        m.push_str(">\n");
        let _ = writeln!(m, "      <Label>{}</Label>", esc(t["label"].as_str().unwrap_or(name)));
        let role = if t["default"] == true { "main" } else { "alternate" };
        let _ = writeln!(m, "      <Role schemeIdUri=\"urn:mpeg:dash:role:2011\" value=\"{role}\"/>");
        let _ = writeln!(
            m,
            "      <Representation id=\"{}\" bandwidth=\"{}\" codecs=\"{}\" audioSamplingRate=\"{}\">",
            esc(name),
            t["peak_bitrate"].as_u64().unwrap_or(0),
            esc(t["codecs"].as_str().unwrap_or("mp4a.40.2")),
            t["audio"]["sample_rate"]
        );
        let _ = writeln!(
            m,
            "        <AudioChannelConfiguration schemeIdUri=\"urn:mpeg:mpegB:cicp:ChannelConfiguration\" value=\"{}\"/>",
            t["audio"]["channels"]
        );
        let _ = writeln!(m, "        <BaseURL>{}/</BaseURL>", esc(audio_dir));
        let init = t["file_roles"]["hls_init"].as_str().map_or_else(|| format!("{name}.init.mp4"), str::to_string);
        segment_template(&mut m, t, &init, &format!("{name}.$Number%05d$.m4s"));
        m.push_str("      </Representation>\n    </AdaptationSet>\n");
    }

    for (i, s) in subtitles.iter().enumerate() {
        let name = s["name"].as_str().unwrap_or_default();
        let _ = write!(m, "    <AdaptationSet id=\"{}\" contentType=\"text\" mimeType=\"text/vtt\"", tracks.len() + 1 + i);
        if let Some(lang) = s["language"].as_str() {
            let _ = write!(m, " lang=\"{}\"", esc(lang));
        }
        m.push_str(">\n");
        let _ = writeln!(m, "      <Label>{}</Label>", esc(s["label"].as_str().unwrap_or(name)));
        let role = if s["forced"] == true {
            "forced-subtitle"
        } else if s["hearing_impaired"] == true {
            "caption"
        } else {
            "subtitle"
        };
        let _ = writeln!(m, "      <Role schemeIdUri=\"urn:mpeg:dash:role:2011\" value=\"{role}\"/>");
        let _ = writeln!(m, "      <Representation id=\"{}\" bandwidth=\"256\">", esc(name));
        let vtt = s["file_roles"]["vtt"].as_str().unwrap_or_default();
        let dir = s["dir"].as_str().and_then(|d| d.rsplit('/').next()).unwrap_or(audio_dir);
        let _ = writeln!(m, "        <BaseURL>{}/{}</BaseURL>", esc(dir), esc(vtt));
        m.push_str("      </Representation>\n    </AdaptationSet>\n");
    }
    m.push_str("  </Period>\n</MPD>\n");
    Some(m)
}

/// A track's timescale and `[t, d]` segments.
fn timeline(t: &Value) -> Option<(u32, Vec<(i64, u64)>)> {
    let scale = t["timeline"]["timescale"].as_u64()? as u32;
    let segments = t["timeline"]["segments"].as_array()?.iter().filter_map(|s| Some((s[0].as_i64()?, s[1].as_u64()?))).collect();
    Some((scale, segments))
}

/// `SegmentTemplate` with its `SegmentTimeline`: the first segment's time, then
/// runs of equal durations (`r` repeats). The segments' own presentation times
/// start at the first `t`, which `presentationTimeOffset` maps to the period's 0
/// (a video track with B-frames starts a couple of frames in).
fn segment_template(m: &mut String, track: &Value, init: &str, media: &str) {
    let (scale, segments) = timeline(track).unwrap_or_default();
    let first = segments.first().map_or(0, |s| s.0);
    let _ = writeln!(
        m,
        "        <SegmentTemplate timescale=\"{scale}\" presentationTimeOffset=\"{first}\" startNumber=\"0\" initialization=\"{}\" media=\"{}\">",
        esc(init),
        esc(media)
    );
    m.push_str("          <SegmentTimeline>\n");
    let mut i = 0;
    while i < segments.len() {
        let d = segments[i].1;
        let mut repeats = 0;
        while i + repeats + 1 < segments.len() && segments[i + repeats + 1].1 == d {
            repeats += 1;
        }
        let t = if i == 0 { format!(" t=\"{first}\"") } else { String::new() };
        let r = if repeats > 0 { format!(" r=\"{repeats}\"") } else { String::new() };
        let _ = writeln!(m, "            <S{t} d=\"{d}\"{r}/>");
        i += repeats + 1;
    }
    m.push_str("          </SegmentTimeline>\n        </SegmentTemplate>\n");
}

/// The rendition's directory name (the last part of its `dir`).
fn dir_name(r: &Value) -> &str {
    r["dir"].as_str().and_then(|d| d.rsplit('/').next()).unwrap_or_default()
}

/// An MPD frame rate: whole (`30`), NTSC (`30000/1001`) or halves (`25/2`),
/// else none (the report keeps the rate to the millisecond only).
fn frame_rate(fps: f64) -> Option<String> {
    if fps <= 0.0 {
        return None;
    }
    if (fps - fps.round()).abs() < 1e-3 {
        return Some(format!("{}", fps.round() as u64));
    }
    let ntsc = (fps * 1.001).round();
    if (fps - ntsc / 1.001).abs() < 1e-3 {
        return Some(format!("{}/1001", ntsc as u64 * 1000));
    }
    ((fps * 2.0 - (fps * 2.0).round()).abs() < 1e-3).then(|| format!("{}/2", (fps * 2.0).round() as u64))
}

/// `xs:duration` in seconds, to the millisecond.
fn iso_duration(seconds: f64) -> String {
    format!("PT{:.3}S", seconds.max(0.0))
}

/// Text and attribute values as XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timelines_run_length_encode_and_start_at_the_first_presentation_time() {
        let r = json!({"dir": "jobs/j/240p", "video": {}, "codecs": "avc1.64000d", "width": 426, "height": 240, "frame_rate": 29.97,
            "peak_bitrate": 400000, "duration": 14.0, "file_roles": {"hls_init": "init.mp4"},
            "timeline": {"timescale": 15360, "segments": [[1024, 92160], [93184, 92160], [185344, 30720]]}});
        let a = json!({"dir": "jobs/j/audio", "tracks": [{"name": "a0", "language": "en", "label": "English", "default": true,
            "codecs": "mp4a.40.2", "peak_bitrate": 130000, "duration": 14.0, "audio": {"sample_rate": 48000, "channels": 2},
            "file_roles": {"hls_init": "a0.init.mp4"}, "timeline": {"timescale": 48000, "segments": [[0, 289792]]}}]});
        let m = mpd(std::slice::from_ref(&r), &a, &[]).unwrap();
        assert!(m.contains("presentationTimeOffset=\"1024\""), "{m}");
        assert!(m.contains("<S t=\"1024\" d=\"92160\" r=\"1\"/>\n            <S d=\"30720\"/>"), "{m}");
        assert!(m.contains("frameRate=\"30000/1001\""), "{m}");
        assert!(m.contains("lang=\"en\""), "{m}");
        assert!(m.contains("media=\"a0.$Number%05d$.m4s\""), "{m}");
        let old = json!({"dir": "jobs/j/240p", "video": {}});
        assert!(mpd(&[old], &a, &[]).is_none(), "a report without a timeline makes no MPD");
    }

    #[test]
    fn frame_rates() {
        assert_eq!(frame_rate(30.0).as_deref(), Some("30"));
        assert_eq!(frame_rate(29.97).as_deref(), Some("30000/1001"));
        assert_eq!(frame_rate(23.976).as_deref(), Some("24000/1001"));
        assert_eq!(frame_rate(12.5).as_deref(), Some("25/2"));
        assert_eq!(frame_rate(14.286), None);
    }
}
