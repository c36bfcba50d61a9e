//! `drake remux`: copies a source's audio, video and subtitle packets, undecoded,
//! into Matroska on one timeline. The parts of recordings joined end to end (see
//! [`crate::timeline`]) follow one another there instead of starting over, as the
//! ffmpeg CLI lays them out, and the file gets the cues and duration a chunk's
//! seek and the probe need.

use crate::av;
use crate::error::{Context as _, EngineError, Result};
use crate::timeline::{Seen, Timelines};
use ff::ffi::AVMediaType;
use ff::{Packet, Rational};
use ffmpeg_next as ff;
use serde::Serialize;
use std::path::Path;

/// What a remux did.
#[derive(Debug, Serialize)]
pub struct Remuxed {
    /// How many parts the source's timeline was in (1: it had no join).
    pub parts: u32,
    /// Packets left out: damaged timestamps far behind their stream, or the few
    /// that would still land before their stream's end after a join.
    pub dropped: u64,
}

/// One copied stream: where it goes, and which part of the source it is in.
struct Track {
    out: usize,
    in_tb: Rational,
    out_tb: Rational,
    part: usize,
    /// Packets well behind the stream's timeline, held until it is clear whether
    /// they start a join or are damaged.
    held: Vec<Packet>,
    /// Packets without a decode time, held until the next packet that has one:
    /// libav leaves it out on the first packets of a Matroska stream with
    /// B-frames (their decode order is all it knows).
    undated: Vec<Packet>,
    /// The last decode time written, in the output's seconds.
    written: f64,
}

/// Copies `input` into a Matroska file at `out`.
pub fn run(input: &str, out: &Path) -> Result<Remuxed> {
    let mut ictx = av::open_input(input)?;
    let mut octx = ff::format::output_as(&out, "matroska").ctx(|| format!("creating {}", out.display()))?;
    let mut tracks: Vec<Option<Track>> = Vec::new();
    for s in ictx.streams() {
        let p = av::params(&s);
        let kind =
            matches!(p.codec_type, AVMediaType::AVMEDIA_TYPE_VIDEO | AVMediaType::AVMEDIA_TYPE_AUDIO | AVMediaType::AVMEDIA_TYPE_SUBTITLE);
        // SAFETY: the output's format is static; libav only reads it.
        let fits = unsafe { ff::ffi::avformat_query_codec(octx.format().as_ptr(), p.codec_id, ff::ffi::FF_COMPLIANCE_NORMAL) == 1 };
        if !kind || !fits || s.disposition().contains(ff::format::stream::Disposition::ATTACHED_PIC) {
            tracks.push(None);
            continue;
        }
        let mut ost = octx.add_stream(Option::<ff::Codec>::None).ctx(|| "adding an output stream".into())?;
        let mut params = s.parameters();
        // SAFETY: a plain field of parameters this function owns; Matroska picks its own tags.
        unsafe { (*params.as_mut_ptr()).codec_tag = 0 };
        ost.set_parameters(params);
        ost.set_metadata(s.metadata().to_owned());
        // The stream's side data goes along (a Dolby Vision record, HDR mastering
        // metadata): the job's probe and every task read the remuxed file.
        for sd in s.side_data() {
            let data = sd.data();
            // SAFETY: the new side data is `data.len()` bytes, owned by the live stream.
            unsafe {
                let copy = ff::ffi::av_stream_new_side_data(ost.as_mut_ptr(), sd.kind().into(), data.len());
                if !copy.is_null() {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), copy, data.len());
                }
            }
        }
        // SAFETY: plain fields of two live streams.
        unsafe { (*ost.as_mut_ptr()).disposition = (*s.as_ptr()).disposition };
        tracks.push(Some(Track {
            out: ost.index(),
            in_tb: s.time_base(),
            out_tb: s.time_base(),
            part: 0,
            held: Vec::new(),
            undated: Vec::new(),
            written: f64::MIN,
        }));
    }
    if tracks.iter().all(Option::is_none) {
        return Err(EngineError::bad("the source has no audio, video or subtitle stream to copy"));
    }
    octx.write_header().ctx(|| "writing the Matroska header".into())?;
    for t in tracks.iter_mut().flatten() {
        t.out_tb = octx.stream(t.out).expect("added above").time_base();
    }

    // Seconds added to each part's timestamps (the first starts at 0, as a
    // Matroska file's duration counts from 0), and where the output's streams end.
    let mut offsets = vec![-av::start_seconds(&ictx)];
    let mut end = f64::MIN;
    let mut timelines = Timelines::default();
    let mut dropped = 0u64;
    for (s, pkt) in ictx.packets() {
        let Some(track) = tracks.get_mut(s.index()).and_then(Option::as_mut) else { continue };
        let Some(dts) = pkt.dts().or(pkt.pts()) else {
            dropped += 1;
            continue;
        };
        let t = dts as f64 * f64::from(track.in_tb);
        match timelines.see(s.index(), t) {
            // Packets held behind it, fewer than PACKETS_BACK in a row: damaged timestamps.
            Seen::Along => dropped += std::mem::take(&mut track.held).len() as u64,
            Seen::Behind if track.part + 1 < offsets.len() => {
                // Another stream found the join these packets are after.
                timelines.restart(s.index(), t);
                track.part += 1;
            }
            Seen::Behind => {
                track.held.push(pkt);
                continue;
            }
            Seen::Joined { .. } => {
                // The new part starts where the output ends so far.
                let first = track.held.first().and_then(|p| p.dts().or(p.pts())).unwrap_or(dts);
                offsets.push(end - first as f64 * f64::from(track.in_tb));
                track.part = offsets.len() - 1;
            }
        }
        for p in std::mem::take(&mut track.held).into_iter().chain([pkt]) {
            write(&mut octx, track, p, offsets[track.part], &mut end, &mut dropped)?;
        }
    }
    // Over HTTP, a store that stayed away ends the packets as the file's end would.
    if let Some(failed) = av::read_failure(&ictx) {
        return Err(failed);
    }
    dropped += tracks.iter().flatten().map(|t| (t.held.len() + t.undated.len()) as u64).sum::<u64>();
    octx.write_trailer().ctx(|| "writing the Matroska index".into())?;
    Ok(Remuxed { parts: offsets.len() as u32, dropped })
}

/// Writes a packet `offset` seconds later than its source timestamps, unless it
/// would land before what its stream already wrote (the muxer needs decode times
/// that go forward). A packet without a decode time waits for the next one with
/// one, and those it waited for get the ticks just before it, in their order, as
/// the ffmpeg CLI gives them decode times before the first it knows.
fn write(
    octx: &mut ff::format::context::Output,
    track: &mut Track,
    mut pkt: Packet,
    offset: f64,
    end: &mut f64,
    dropped: &mut u64,
) -> Result<()> {
    let shift = (offset / f64::from(track.in_tb)).round() as i64;
    pkt.set_dts(pkt.dts().map(|d| d + shift));
    pkt.set_pts(pkt.pts().map(|p| p + shift));
    let Some(dts) = pkt.dts() else {
        track.undated.push(pkt);
        return Ok(());
    };
    let undated = std::mem::take(&mut track.undated);
    let before = undated.len() as i64;
    for (i, mut early) in undated.into_iter().enumerate() {
        early.set_dts(Some(dts - before + i as i64));
        put(octx, track, early, end, dropped)?;
    }
    put(octx, track, pkt, end, dropped)
}

/// Writes a packet with a decode time, as [`write`] says.
fn put(octx: &mut ff::format::context::Output, track: &mut Track, mut pkt: Packet, end: &mut f64, dropped: &mut u64) -> Result<()> {
    let tb = f64::from(track.in_tb);
    let dts = pkt.dts().map_or(track.written, |d| d as f64 * tb);
    if dts <= track.written || pkt.pts().is_some_and(|p| p as f64 * tb < dts) {
        *dropped += 1;
        return Ok(());
    }
    track.written = dts;
    *end = end.max(pkt.pts().map_or(dts, |p| p as f64 * tb) + pkt.duration().max(0) as f64 * tb);
    pkt.rescale_ts(track.in_tb, track.out_tb);
    pkt.set_stream(track.out);
    pkt.set_position(-1);
    pkt.write_interleaved(octx).ctx(|| "writing the Matroska file".into())
}
