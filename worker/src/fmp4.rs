//! Turns one fragmented MP4 (one `moof`+`mdat` per GOP) into HLS: an init segment,
//! media segments of whole GOPs, the media playlist and the I-frame playlist.
//!
//! Pure byte work on a file the engine just wrote; it never decodes. Boxes are read
//! with the minimum of ISO BMFF parsing: top-level boxes; `mdhd`/`trex` inside `moov`
//! for the track's timescale and default duration; and `tfhd`/`tfdt`/`trun` inside
//! `moof` to find where each fragment's first sample lies and when it plays (what
//! a DASH `SegmentTimeline` lists).

use std::fmt::Write as _;
use std::ops::Range;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Fmp4Error {
    #[error("malformed fragmented MP4: {0}")]
    Malformed(String),
}

/// A top-level box: its type, where it starts and how long it is (header included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxRef {
    pub kind: [u8; 4],
    pub range: (u64, u64),
}

impl BoxRef {
    fn bytes(&self) -> Range<usize> {
        self.range.0 as usize..self.range.1 as usize
    }
}

/// Iterates the boxes in `data[range]`.
pub fn boxes(data: &[u8], range: Range<usize>) -> Result<Vec<BoxRef>, Fmp4Error> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let (kind, size) = box_header(&data[at..range.end.min(at + 16)], (range.end - at) as u64)?;
        out.push(BoxRef { kind, range: (at as u64, at as u64 + size) });
        at += size as usize;
    }
    Ok(out)
}

/// One `moof`+`mdat` pair, where its first sample of `track_id` lies and when
/// its samples play.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub moof: (u64, u64),
    pub mdat: (u64, u64),
    /// Byte range of the track's first sample, absolute in the file.
    pub first_sample: (u64, u64),
    /// In the track's timescale: the first sample's decode time (`tfdt`), the
    /// earliest presentation time of any sample (decode time plus composition
    /// offset), and the sum of the samples' durations. Zero where the file says
    /// nothing (no `tfdt`, no durations).
    pub decode_time: u64,
    pub earliest_presentation: i64,
    pub duration: u64,
}

/// The parsed layout of a fragmented MP4: `ftyp`+`moov` bytes, then fragments.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub init: (u64, u64),
    /// The track's timescale (its `mdhd`), 0 if the `moov` does not say.
    pub timescale: u32,
    pub fragments: Vec<Fragment>,
}

/// What the `moov` says of one track that fragments need: its timescale and the
/// default sample duration of its `trex`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct TrackDefaults {
    timescale: u32,
    sample_duration: u32,
}

/// The layout of a fragmented MP4 file, reading only box headers, `moov` and
/// `moof` boxes, so a multi-gigabyte rendition is never held in memory.
pub fn layout_file(path: &std::path::Path, track_id: u32) -> std::io::Result<Layout> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut top = Vec::new();
    let mut at = 0u64;
    let mut header = [0u8; 16];
    while at < len {
        f.seek(SeekFrom::Start(at))?;
        let n = (len - at).min(16) as usize;
        f.read_exact(&mut header[..n])?;
        let (kind, size) = box_header(&header[..n], len - at).map_err(std::io::Error::other)?;
        top.push(BoxRef { kind, range: (at, at + size) });
        at += size;
    }
    // Box bodies by their start: the moov and every moof (each a few KB).
    let mut bodies = std::collections::HashMap::new();
    for b in top.iter().filter(|b| &b.kind == b"moof" || &b.kind == b"moov") {
        let mut buf = vec![0u8; (b.range.1 - b.range.0) as usize];
        f.seek(SeekFrom::Start(b.range.0))?;
        f.read_exact(&mut buf)?;
        bodies.insert(b.range.0, buf);
    }
    let whole = |b: &BoxRef, buf: &Vec<u8>| BoxRef { kind: b.kind, range: (0, buf.len() as u64) };
    assemble(
        &top,
        |moov| {
            let buf = &bodies[&moov.range.0];
            track_defaults(buf, &whole(moov, buf), track_id)
        },
        |moof, defaults| {
            let buf = &bodies[&moof.range.0];
            track_fragment(buf, &whole(moof, buf), track_id, defaults)
        },
    )
    .map_err(std::io::Error::other)
}

/// Type and total size of the box whose header starts `header`; `left` bytes remain in the file.
fn box_header(header: &[u8], left: u64) -> Result<([u8; 4], u64), Fmp4Error> {
    if header.len() < 8 {
        return Err(Fmp4Error::Malformed(format!("{} stray bytes at the end", header.len())));
    }
    let size32 = u32::from_be_bytes(header[0..4].try_into().unwrap()) as u64;
    let kind: [u8; 4] = header[4..8].try_into().unwrap();
    let size = match size32 {
        0 => left,
        1 if header.len() >= 16 => u64::from_be_bytes(header[8..16].try_into().unwrap()),
        s => s,
    };
    if size < 8 || size > left {
        return Err(Fmp4Error::Malformed(format!("box {} has bad size {size}", String::from_utf8_lossy(&kind))));
    }
    Ok((kind, size))
}

pub fn layout(data: &[u8], track_id: u32) -> Result<Layout, Fmp4Error> {
    let top = boxes(data, 0..data.len())?;
    assemble(&top, |moov| track_defaults(data, moov, track_id), |moof, defaults| track_fragment(data, moof, track_id, defaults))
}

/// What a `moof` says of the track: where its first sample lies (offset from the
/// moof, size) and its timing.
struct TrackRun {
    first_sample: (u64, u64),
    decode_time: u64,
    earliest_presentation: i64,
    duration: u64,
}

/// Pairs each `moof` with its `mdat`; `defaults` reads the `moov`, `run` a `moof`.
fn assemble(
    top: &[BoxRef],
    defaults: impl FnOnce(&BoxRef) -> Result<TrackDefaults, Fmp4Error>,
    mut run: impl FnMut(&BoxRef, TrackDefaults) -> Result<TrackRun, Fmp4Error>,
) -> Result<Layout, Fmp4Error> {
    let moov = top.iter().position(|b| &b.kind == b"moov").ok_or_else(|| Fmp4Error::Malformed("no moov".into()))?;
    let init = (0, top[moov].range.1);
    let track = defaults(&top[moov])?;
    let mut fragments = Vec::new();
    let mut i = moov + 1;
    while i < top.len() {
        let b = top[i];
        match &b.kind {
            b"moof" => {
                let mdat = top
                    .get(i + 1)
                    .filter(|m| &m.kind == b"mdat")
                    .ok_or_else(|| Fmp4Error::Malformed(format!("moof at {} has no mdat after it", b.range.0)))?;
                let r = run(&b, track)?;
                let (offset, size) = r.first_sample;
                let start = b.range.0 + offset;
                if start < mdat.range.0 || start + size > mdat.range.1 {
                    return Err(Fmp4Error::Malformed(format!("sample of moof at {} lies outside its mdat", b.range.0)));
                }
                fragments.push(Fragment {
                    moof: b.range,
                    mdat: mdat.range,
                    first_sample: (start, start + size),
                    decode_time: r.decode_time,
                    earliest_presentation: r.earliest_presentation,
                    duration: r.duration,
                });
                i += 2;
            }
            // Index and trailer boxes (sidx, mfra) are not part of any segment.
            _ => i += 1,
        }
    }
    Ok(Layout { init, timescale: track.timescale, fragments })
}

/// The children of a box with a plain (not full) header.
fn children(data: &[u8], parent: &BoxRef) -> Result<Vec<BoxRef>, Fmp4Error> {
    boxes(data, parent.bytes().start + 8..parent.bytes().end)
}

/// The track's timescale (`trak/mdia/mdhd`) and default sample duration
/// (`mvex/trex`), from the `moov`; zeros where they are absent.
fn track_defaults(data: &[u8], moov: &BoxRef, track_id: u32) -> Result<TrackDefaults, Fmp4Error> {
    let mut out = TrackDefaults::default();
    for b in children(data, moov)? {
        match &b.kind {
            b"trak" => {
                let kids = children(data, &b)?;
                let Some(tkhd) = kids.iter().find(|k| &k.kind == b"tkhd") else { continue };
                let t = tkhd.range.0 as usize + 8;
                // tkhd v1 has 64-bit times before the track id.
                let id_at = if data.get(t) == Some(&1) { t + 20 } else { t + 12 };
                if be32(data, id_at)? != track_id {
                    continue;
                }
                let Some(mdia) = kids.iter().find(|k| &k.kind == b"mdia") else { continue };
                if let Some(mdhd) = children(data, mdia)?.iter().find(|k| &k.kind == b"mdhd") {
                    let m = mdhd.range.0 as usize + 8;
                    out.timescale = be32(data, if data.get(m) == Some(&1) { m + 20 } else { m + 12 })?;
                }
            }
            b"mvex" => {
                for trex in children(data, &b)?.iter().filter(|k| &k.kind == b"trex") {
                    let t = trex.range.0 as usize + 8;
                    if be32(data, t + 4)? == track_id {
                        out.sample_duration = be32(data, t + 12)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn be32(d: &[u8], at: usize) -> Result<u32, Fmp4Error> {
    d.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap())).ok_or_else(|| Fmp4Error::Malformed("short box".into()))
}

/// The track's run in this fragment: the offset (relative to the moof start, as
/// with `default-base-is-moof`) and size of its first sample, and its timing.
fn track_fragment(data: &[u8], moof: &BoxRef, track_id: u32, defaults: TrackDefaults) -> Result<TrackRun, Fmp4Error> {
    for traf in children(data, moof)?.iter().filter(|b| &b.kind == b"traf") {
        let children = children(data, traf)?;
        let tfhd = children.iter().find(|b| &b.kind == b"tfhd").ok_or_else(|| Fmp4Error::Malformed("traf without tfhd".into()))?;
        let t = tfhd.range.0 as usize + 8;
        let flags = be32(data, t)? & 0x00ff_ffff;
        if be32(data, t + 4)? != track_id {
            continue;
        }
        // tfhd optional fields, in order: base-data-offset (8), sample-description-index,
        // default-sample-duration, default-sample-size (4 each).
        let mut at = t + 8;
        if flags & 0x1 != 0 {
            at += 8;
        }
        if flags & 0x2 != 0 {
            at += 4;
        }
        let default_duration = if flags & 0x8 != 0 {
            at += 4;
            be32(data, at - 4)?
        } else {
            defaults.sample_duration
        };
        let default_size = if flags & 0x10 != 0 { Some(be32(data, at)?) } else { None };
        let decode_time = match children.iter().find(|b| &b.kind == b"tfdt") {
            Some(tfdt) => {
                let d = tfdt.range.0 as usize + 8;
                if data.get(d) == Some(&1) {
                    (u64::from(be32(data, d + 4)?) << 32) | u64::from(be32(data, d + 8)?)
                } else {
                    u64::from(be32(data, d + 4)?)
                }
            }
            None => 0,
        };
        let trun = children.iter().find(|b| &b.kind == b"trun").ok_or_else(|| Fmp4Error::Malformed("traf without trun".into()))?;
        let t = trun.range.0 as usize + 8;
        let (version, flags) = (data.get(t).copied().unwrap_or(0), be32(data, t)? & 0x00ff_ffff);
        let count = be32(data, t + 4)?;
        if count == 0 {
            return Err(Fmp4Error::Malformed("empty trun".into()));
        }
        let mut at = t + 8;
        let data_offset = if flags & 0x1 != 0 {
            let o = be32(data, at)? as i32;
            at += 4;
            o
        } else {
            return Err(Fmp4Error::Malformed("trun without data offset".into()));
        };
        if flags & 0x4 != 0 {
            at += 4;
        }
        if data_offset < 0 {
            return Err(Fmp4Error::Malformed("negative data offset".into()));
        }
        // Each sample: duration (0x100), size (0x200), flags (0x400), composition offset (0x800).
        let (mut first_size, mut elapsed, mut earliest) = (None, 0u64, i64::MAX);
        for _ in 0..count {
            let duration = if flags & 0x100 != 0 {
                at += 4;
                be32(data, at - 4)?
            } else {
                default_duration
            };
            let size = if flags & 0x200 != 0 {
                at += 4;
                Some(be32(data, at - 4)?)
            } else {
                default_size
            };
            if flags & 0x400 != 0 {
                at += 4;
            }
            let offset = if flags & 0x800 != 0 {
                at += 4;
                let raw = be32(data, at - 4)?;
                // Version 1 offsets are signed.
                if version == 1 { i64::from(raw as i32) } else { i64::from(raw) }
            } else {
                0
            };
            first_size.get_or_insert(size.ok_or_else(|| Fmp4Error::Malformed("no sample size".into()))?);
            earliest = earliest.min((decode_time + elapsed) as i64 + offset);
            elapsed += u64::from(duration);
        }
        let size = first_size.unwrap_or(0);
        return Ok(TrackRun {
            first_sample: (data_offset as u64, u64::from(size)),
            decode_time,
            earliest_presentation: earliest,
            duration: elapsed,
        });
    }
    Err(Fmp4Error::Malformed(format!("moof at {} has no track {track_id}", moof.range.0)))
}

/// One HLS media segment: which fragments it holds and when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub file: String,
    pub fragments: Range<usize>,
    pub start: f64,
    pub duration: f64,
    pub bytes: u64,
    /// In the track's timescale: the earliest presentation time of its first
    /// fragment, and the sum of its fragments' durations.
    pub time: i64,
    pub ticks: u64,
}

/// Groups fragments (starting at `times`) into segments of whole fragments: a
/// segment starts with the first fragment at or after each multiple of `target`.
/// Fragments start on the first frame at or after their marks, so at 29.97 fps a
/// segment may last a frame less than `target` (30.030 s to 36.003 s): marks, not
/// measured lengths, decide, and every rendition cuts at the same instants.
pub fn group(times: &[f64], end: f64, target: f64) -> Vec<(Range<usize>, f64, f64)> {
    // A frame starts at most a frame after its mark; 1 ms absorbs float rounding.
    let slot = |t: f64| ((t + 1e-3) / target).floor() as i64;
    let mut out = Vec::new();
    let mut first = 0;
    for i in 1..=times.len() {
        if i == times.len() || slot(times[i]) > slot(times[first]) {
            let next = if i < times.len() { times[i] } else { end };
            out.push((first..i, times[first], next - times[first]));
            first = i;
        }
    }
    out
}

/// The HLS media playlist for fMP4 segments.
pub fn media_playlist(init: &str, segments: &[Segment]) -> String {
    let target = segments.iter().map(|s| s.duration.round() as u64).max().unwrap_or(1).max(1);
    let mut m = String::new();
    let _ = write!(
        m,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"{init}\"\n"
    );
    for s in segments {
        let _ = write!(m, "#EXTINF:{:.6},\n{}\n", s.duration, s.file);
    }
    m.push_str("#EXT-X-ENDLIST\n");
    m
}

/// One entry of an I-frame playlist: a keyframe's span and bytes in a segment file.
#[derive(Debug, Clone, PartialEq)]
pub struct IFrame {
    pub file: String,
    pub duration: f64,
    pub offset: u64,
    pub length: u64,
}

/// RFC 8216 4.3.3.6 I-frame playlist: each byte range covers the fragment's `moof`,
/// the `mdat` header and the keyframe sample, so it can be fetched and decoded alone.
pub fn iframe_playlist(init: &str, iframes: &[IFrame]) -> String {
    let target = iframes.iter().map(|f| f.duration.ceil() as u64).max().unwrap_or(1).max(1);
    let mut m = String::new();
    let _ = write!(
        m,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-I-FRAMES-ONLY\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"{init}\"\n"
    );
    for f in iframes {
        let _ = write!(m, "#EXTINF:{:.6},\n#EXT-X-BYTERANGE:{}@{}\n{}\n", f.duration, f.length, f.offset, f.file);
    }
    m.push_str("#EXT-X-ENDLIST\n");
    m
}

#[cfg(test)]
mod tests;
