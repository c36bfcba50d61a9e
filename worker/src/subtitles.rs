//! A source's text subtitle stream (SubRip, ASS/SSA, mov_text, WebVTT) as cues,
//! timed like the video Drake makes from it: from the container's start, which
//! every output starts at 0. Bitmap subtitles (PGS, DVB, VobSub) have no text.

use crate::av;
use crate::error::{EngineError, Result};
use ff::ffi;
use ffmpeg_next as ff;
use proto::captions::{Cue, MAX_CUE_CHARS, MAX_CUES};
use std::ffi::CStr;

/// Reads subtitle stream `index` of `input` into cues, in presentation order.
pub fn extract(input: &str, index: usize) -> Result<Vec<Cue>> {
    let mut ictx = av::open_input(input)?;
    let mut extractor = Extractor::new(&ictx, index)?;
    for (stream, packet) in ictx.packets() {
        if stream.index() == index {
            extractor.feed(&packet);
        }
    }
    // Over HTTP, a store that stayed away ends the packets as the file's end would.
    if let Some(failed) = av::read_failure(&ictx) {
        return Err(failed);
    }
    extractor.finish().map_err(|why| EngineError::bad(format!("subtitle stream {index}: {why}")))
}

/// One subtitle stream's decoder and the cues it has made, fed that stream's
/// packets by whoever reads the source (so a task's one pass over it serves its
/// audio and its subtitles alike).
pub struct Extractor {
    pub index: usize,
    decoder: ff::decoder::Subtitle,
    time_base: f64,
    start: f64,
    cues: Vec<Cue>,
    /// Why the stream's cues cannot be kept, once they cannot: the rest are not read.
    failed: Option<String>,
}

impl Extractor {
    /// The extractor of stream `index` of `ictx`: bad input if it is no text subtitle stream.
    pub fn new(ictx: &ff::format::context::Input, index: usize) -> Result<Extractor> {
        let Some(st) = ictx.stream(index) else {
            return Err(EngineError::bad(format!("the source has no stream {index}")));
        };
        let p = av::params(&st);
        let codec = av::codec_name(p.codec_id);
        if p.codec_type != ffi::AVMediaType::AVMEDIA_TYPE_SUBTITLE {
            return Err(EngineError::bad(format!("stream {index} is not subtitles")));
        }
        if !proto::probe::TEXT_SUBTITLE_CODECS.contains(&codec.as_str()) {
            return Err(EngineError::bad(format!("stream {index} is {codec} subtitles: pictures, not text")));
        }
        let ctx = ff::codec::context::Context::from_parameters(st.parameters())
            .map_err(|e| EngineError::internal("reading decoder parameters", e))?;
        let decoder = ctx.decoder().subtitle().map_err(|e| EngineError::bad(format!("{codec} subtitles: {e}")))?;
        Ok(Extractor {
            index,
            decoder,
            time_base: f64::from(st.time_base()),
            start: av::start_seconds(ictx),
            cues: Vec::new(),
            failed: None,
        })
    }

    /// Decodes one packet of the stream; a damaged cue is skipped, as a player
    /// would. Past [`MAX_CUES`] the stream fails alone (see [`Extractor::finish`]).
    pub fn feed(&mut self, packet: &ff::Packet) {
        if self.failed.is_some() {
            return;
        }
        let Some(pts) = packet.pts().or(packet.dts()) else { return };
        let seconds = |ts: i64| ts as f64 * self.time_base - self.start;
        let mut sub = ff::Subtitle::new();
        match self.decoder.decode(packet, &mut sub) {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        let at = seconds(pts) + f64::from(sub.start()) / 1000.0;
        let end = if sub.end() > sub.start() && sub.end() != u32::MAX {
            seconds(pts) + f64::from(sub.end()) / 1000.0
        } else {
            seconds(pts + packet.duration())
        };
        let text: Vec<String> = sub.rects().filter_map(|r| rect_text(&r)).filter(|t| !t.is_empty()).collect();
        if text.is_empty() || end <= at {
            return;
        }
        if self.cues.len() == MAX_CUES {
            self.failed = Some(format!("more than {MAX_CUES} cues"));
            self.cues = Vec::new();
            return;
        }
        let text: String = text.join("\n").chars().take(MAX_CUE_CHARS).collect();
        self.cues.push(Cue { start: at.max(0.0), end, settings: String::new(), text });
    }

    /// The cues, in presentation order, or why the stream cannot be kept.
    pub fn finish(mut self) -> std::result::Result<Vec<Cue>, String> {
        if let Some(why) = self.failed {
            return Err(why);
        }
        self.cues.sort_by(|a, b| a.start.total_cmp(&b.start));
        Ok(self.cues)
    }
}

/// A rectangle's text, as WebVTT cue text: ASS events lose their fields and
/// override tags, and what WebVTT would read as markup is escaped.
fn rect_text(r: &ff::codec::subtitle::Rect) -> Option<String> {
    // SAFETY: the rect belongs to a live AVSubtitle; its text fields are NUL-terminated
    // C strings owned by it (read lossily: a file's bytes may not be UTF-8).
    let raw = |p: *const std::os::raw::c_char| (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
    let plain = match r {
        ff::codec::subtitle::Rect::Ass(a) => ass_text(&raw(unsafe { (*a.as_ptr()).ass })?),
        ff::codec::subtitle::Rect::Text(t) => raw(unsafe { (*t.as_ptr()).text })?,
        _ => return None,
    };
    Some(plain.trim().replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"))
}

/// The text of an ASS event as libav's decoders write it
/// (`ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text`).
fn ass_text(event: &str) -> String {
    let text = event.splitn(9, ',').nth(8).unwrap_or(event);
    let mut out = String::with_capacity(text.len());
    let mut in_override = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' => in_override = true,
            '}' if in_override => in_override = false,
            _ if in_override => {}
            '\\' => match chars.peek() {
                Some('N' | 'n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('h') => {
                    chars.next();
                    out.push(' ');
                }
                _ => out.push('\\'),
            },
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ass_events_become_plain_text() {
        assert_eq!(ass_text("0,0,Default,,0,0,0,,Hello\\N{\\i1}world{\\i0}, again"), "Hello\nworld, again");
        assert_eq!(ass_text("3,0,Default,,0,0,0,,a\\hb"), "a b");
    }
}
