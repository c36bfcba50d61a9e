//! Caption files a user sends with a job (sidecars): SubRip (`.srt`) and WebVTT
//! (`.vtt`). Both are read strictly into cues, with the line of the first problem,
//! and written out as WebVTT, the one caption format HLS and DASH players share.

use std::fmt;

/// Largest caption file accepted.
pub const MAX_CAPTION_BYTES: usize = 4 << 20;
/// Most cues in one file (a 6 h film at one cue a second).
pub const MAX_CUES: usize = 25_000;
/// Longest cue text, in characters.
pub const MAX_CUE_CHARS: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    SubRip,
    WebVtt,
}

impl Format {
    /// By file name (`.srt`, `.vtt`), else by content (a WebVTT file starts `WEBVTT`).
    pub fn detect(name: &str, text: &str) -> Format {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".srt") {
            Format::SubRip
        } else if lower.ends_with(".vtt") || text.trim_start_matches('\u{feff}').starts_with("WEBVTT") {
            Format::WebVtt
        } else {
            Format::SubRip
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    /// Seconds from the start of the media.
    pub start: f64,
    pub end: f64,
    /// WebVTT cue settings (`line:0 align:start`...), empty for SubRip.
    pub settings: String,
    pub text: String,
}

/// What is wrong with a caption file, and where (1-based line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for CaptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for CaptionError {}

fn error<T>(line: usize, message: impl Into<String>) -> Result<T, CaptionError> {
    Err(CaptionError { line, message: message.into() })
}

/// Reads a caption file of `format` into its cues.
pub fn parse(bytes: &[u8], format: Format) -> Result<Vec<Cue>, CaptionError> {
    if bytes.len() > MAX_CAPTION_BYTES {
        return error(0, format!("{} bytes; at most {MAX_CAPTION_BYTES} are accepted", bytes.len()));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
            return error(line, "not UTF-8 text");
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let mut at = 0;
    let separator = match format {
        Format::SubRip => ',',
        Format::WebVtt => {
            let first = lines.first().copied().unwrap_or_default();
            let rest = first.strip_prefix("WEBVTT");
            if !rest.is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t'])) {
                return error(1, "a WebVTT file must start with WEBVTT");
            }
            // The header runs to the first blank line.
            while at < lines.len() && !lines[at].trim().is_empty() {
                at += 1;
            }
            '.'
        }
    };
    let mut cues = Vec::new();
    while at < lines.len() {
        if lines[at].trim().is_empty() {
            at += 1;
            continue;
        }
        // One block: up to the next blank line.
        let start = at;
        while at < lines.len() && !lines[at].trim().is_empty() {
            at += 1;
        }
        let block = &lines[start..at];
        if format == Format::WebVtt && ["NOTE", "STYLE", "REGION"].iter().any(|k| block[0] == *k || block[0].starts_with(&format!("{k} ")))
        {
            continue;
        }
        // An optional identifier (SubRip: the cue number), then the timing line.
        let timing_at = if block[0].contains("-->") { 0 } else { 1 };
        if format == Format::SubRip && timing_at == 1 && block[0].trim().parse::<u64>().is_err() {
            return error(start + 1, format!("expected a cue number or a timing line, found {:?}", clip(block[0])));
        }
        let Some(timing) = block.get(timing_at) else {
            return error(start + 1, "a cue without a timing line");
        };
        let line_no = start + timing_at + 1;
        let (from, rest) = timing.split_once("-->").map_or((None, ""), |(a, b)| (Some(a), b));
        let Some(from) = from else {
            return error(line_no, format!("expected START --> END, found {:?}", clip(timing)));
        };
        let rest = rest.trim_start();
        let (to, settings) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        let start_s = timestamp(from.trim(), separator).ok_or_else(|| bad_time(line_no, from))?;
        let end_s = timestamp(to.trim(), separator).ok_or_else(|| bad_time(line_no, to))?;
        if end_s <= start_s {
            return error(line_no, "the cue ends before it starts");
        }
        let body = &block[timing_at + 1..];
        if let Some(k) = body.iter().position(|l| l.contains("-->")) {
            return error(line_no + 1 + k, "a timing line inside a cue's text (missing blank line?)");
        }
        let text = body.join("\n");
        if text.chars().count() > MAX_CUE_CHARS {
            return error(line_no + 1, format!("a cue of over {MAX_CUE_CHARS} characters"));
        }
        if cues.len() == MAX_CUES {
            return error(start + 1, format!("more than {MAX_CUES} cues"));
        }
        let settings = if format == Format::WebVtt { settings.trim().to_string() } else { String::new() };
        cues.push(Cue { start: start_s, end: end_s, settings, text });
    }
    Ok(cues)
}

fn bad_time(line: usize, found: &str) -> CaptionError {
    CaptionError { line, message: format!("bad timestamp {:?} (expected HH:MM:SS,mmm or HH:MM:SS.mmm)", clip(found.trim())) }
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// `[HH:]MM:SS<sep>mmm` in seconds (SubRip always has hours; either separator is
/// accepted from SubRip, as real files mix them).
fn timestamp(s: &str, separator: char) -> Option<f64> {
    let (clock, millis) = s.rsplit_once(separator).or_else(|| if separator == ',' { s.rsplit_once('.') } else { None })?;
    if millis.len() != 3 || !millis.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let parts: Vec<&str> = clock.split(':').collect();
    let number = |p: &str, two: bool| {
        (!p.is_empty() && (!two || p.len() == 2) && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse::<u64>().ok()).flatten()
    };
    let (h, m, sec) = match parts.as_slice() {
        [h, m, s] => (number(h, false)?, number(m, true)?, number(s, true)?),
        [m, s] if separator == '.' => (0, number(m, true)?, number(s, true)?),
        _ => return None,
    };
    if m >= 60 || sec >= 60 || h > 99 {
        return None;
    }
    Some((h * 3600 + m * 60 + sec) as f64 + millis.parse::<f64>().ok()? / 1000.0)
}

/// WebVTT time: `HH:MM:SS.mmm`.
pub fn vtt_time(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// The cues as a WebVTT file.
pub fn to_webvtt(cues: &[Cue]) -> String {
    let mut out = String::from("WEBVTT\n");
    for c in cues {
        out.push('\n');
        out.push_str(&vtt_time(c.start));
        out.push_str(" --> ");
        out.push_str(&vtt_time(c.end));
        if !c.settings.is_empty() {
            out.push(' ');
            out.push_str(&c.settings);
        }
        out.push('\n');
        if !c.text.is_empty() {
            out.push_str(&c.text);
            out.push('\n');
        }
    }
    out
}

/// WebVTT for an HLS subtitles rendition: the cues mapped onto the video's
/// timeline, whose media time 0 is the source's start.
pub fn to_hls_webvtt(cues: &[Cue]) -> String {
    to_webvtt(cues).replacen("WEBVTT\n", "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n", 1)
}

/// The HLS media playlist of a single-file WebVTT rendition spanning `duration`
/// seconds (the source's).
pub fn single_file_playlist(vtt: &str, duration: f64) -> String {
    let target = duration.ceil().max(1.0) as u64;
    format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXTINF:{duration:.6},\n{vtt}\n#EXT-X-ENDLIST\n"
    )
}

/// Most caption files one job may carry.
pub const MAX_SIDECARS: usize = 8;
/// Longest label of a caption file, in characters.
pub const MAX_LABEL_CHARS: usize = 100;

/// A caption file sent with a job: uploaded with it, or named by URL and fetched
/// by the coordinator when it probes the job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sidecar {
    /// BCP 47.
    pub language: String,
    /// What a player lists (by default the language's name).
    pub label: String,
    /// The uploaded file's name, or the URL's last path segment: its extension
    /// says SubRip or WebVTT.
    pub file: String,
    /// Where the coordinator fetches it from; `None` when it was uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Sidecar {
    /// A caption file's description from what a submit said: its language (any
    /// BCP 47 or ISO 639-2 tag), an optional label and its file name or URL.
    pub fn new(language: &str, label: Option<&str>, file: &str, url: Option<String>) -> Result<Sidecar, String> {
        let language = crate::language::bcp47(language).ok_or_else(|| format!("caption language {language:?} is not a language tag"))?;
        let label = match label.map(str::trim).filter(|l| !l.is_empty()) {
            Some(l) if l.chars().count() > MAX_LABEL_CHARS || l.chars().any(|c| c.is_control() || c == '"') => {
                return Err(format!("a caption label is at most {MAX_LABEL_CHARS} characters, without quotes or control characters"));
            }
            Some(l) => l.to_string(),
            None => crate::language::name(&language).map_or_else(|| language.clone(), str::to_string),
        };
        let file: String = file.rsplit(['/', '\\']).next().unwrap_or_default().chars().filter(|c| !c.is_control()).take(200).collect();
        Ok(Sidecar { language, label, file, url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRT: &str =
        "\u{feff}1\r\n00:00:01,000 --> 00:00:02,500\r\nHello,\r\n<i>world</i>\r\n\r\n2\r\n00:01:02.250 --> 00:01:03,000\r\nAgain\r\n";

    #[test]
    fn subrip_becomes_webvtt() {
        let cues = parse(SRT.as_bytes(), Format::SubRip).unwrap();
        assert_eq!(cues.len(), 2);
        assert_eq!((cues[0].start, cues[0].end, cues[0].text.as_str()), (1.0, 2.5, "Hello,\n<i>world</i>"));
        assert_eq!((cues[1].start, cues[1].end), (62.25, 63.0));
        let vtt = to_webvtt(&cues);
        assert_eq!(vtt, "WEBVTT\n\n00:00:01.000 --> 00:00:02.500\nHello,\n<i>world</i>\n\n00:01:02.250 --> 00:01:03.000\nAgain\n");
        // What it writes, it reads back.
        assert_eq!(parse(vtt.as_bytes(), Format::WebVtt).unwrap(), cues);
    }

    #[test]
    fn webvtt_keeps_settings_and_skips_notes() {
        let vtt = "WEBVTT - a title\nKind: captions\n\nNOTE made by hand\nsecond line\n\nSTYLE\n::cue { color: red }\n\nintro\n00:05.000 --> 00:06.000 line:0 align:start\nTop\n";
        let cues = parse(vtt.as_bytes(), Format::WebVtt).unwrap();
        assert_eq!(cues, [Cue { start: 5.0, end: 6.0, settings: "line:0 align:start".into(), text: "Top".into() }]);
    }

    #[test]
    fn malformed_files_name_the_line() {
        let cases: [(&str, Format, usize, &str); 7] = [
            ("1\n00:00:01,000 -> 00:00:02,000\nx\n", Format::SubRip, 2, "expected START --> END"),
            ("1\n00:00:01,000 --> 00:00:0x,000\nx\n", Format::SubRip, 2, "bad timestamp"),
            ("1\n00:00:03,000 --> 00:00:02,000\nx\n", Format::SubRip, 2, "ends before it starts"),
            ("1\n00:00:01,000 --> 00:00:02,000\nx\n\nhello\n", Format::SubRip, 5, "expected a cue number"),
            ("1\n00:00:01,000 --> 00:00:02,000\nx\n2\n00:00:03,000 --> 00:00:04,000\ny\n", Format::SubRip, 5, "missing blank line"),
            ("WEBVT\n\n00:01.000 --> 00:02.000\nx\n", Format::WebVtt, 1, "must start with WEBVTT"),
            ("WEBVTT\n\n00:01.000 --> 00:61.000\nx\n", Format::WebVtt, 3, "bad timestamp"),
        ];
        for (text, format, line, says) in cases {
            let e = parse(text.as_bytes(), format).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(says), "{text:?}: {e}");
        }
        let e = parse(b"1\n00:00:01,000 --> 00:00:02,000\n\xff\n", Format::SubRip).unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (3, "not UTF-8 text"));
        assert!(parse(&vec![b'a'; MAX_CAPTION_BYTES + 1], Format::SubRip).is_err());
    }

    #[test]
    fn formats_are_told_by_name_then_content() {
        assert_eq!(Format::detect("fr.SRT", "WEBVTT"), Format::SubRip);
        assert_eq!(Format::detect("fr.vtt", ""), Format::WebVtt);
        assert_eq!(Format::detect("captions", "\u{feff}WEBVTT\n"), Format::WebVtt);
    }

    #[test]
    fn a_sidecar_has_a_language_tag_a_label_and_a_bare_file_name() {
        let s = Sidecar::new("ger", None, "../../etc/de.vtt", None).unwrap();
        assert_eq!((s.language.as_str(), s.label.as_str(), s.file.as_str()), ("de", "German", "de.vtt"));
        let s = Sidecar::new("pt-BR", Some(" Portuguese (Brazil) "), "https://x.example/subs/pt.srt", None).unwrap();
        assert_eq!((s.language.as_str(), s.label.as_str(), s.file.as_str()), ("pt-br", "Portuguese (Brazil)", "pt.srt"));
        assert_eq!(Sidecar::new("x-klingon", None, "k.vtt", None).unwrap().label, "x-klingon");
        assert!(Sidecar::new("und", None, "a.vtt", None).is_err(), "a caption file has a language");
        assert!(Sidecar::new("en", Some("say \"hi\""), "a.vtt", None).is_err(), "a label goes into playlists as a quoted string");
        assert!(Sidecar::new("en", Some(&"x".repeat(MAX_LABEL_CHARS + 1)), "a.vtt", None).is_err());
    }

    #[test]
    fn hls_webvtt_maps_media_time_zero_and_its_playlist_spans_the_source() {
        let cues = parse(b"1\n00:00:01,000 --> 00:00:02,000\nHi\n", Format::SubRip).unwrap();
        assert_eq!(to_hls_webvtt(&cues), "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n\n00:00:01.000 --> 00:00:02.000\nHi\n");
        let playlist = single_file_playlist("c0.vtt", 8.5);
        assert!(
            playlist.contains("#EXT-X-TARGETDURATION:9\n") && playlist.contains("#EXTINF:8.500000,\nc0.vtt\n#EXT-X-ENDLIST"),
            "{playlist}"
        );
    }
}
