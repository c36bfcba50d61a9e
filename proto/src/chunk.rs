//! What a chunk task reports about the packets it made, and the checks a chunk
//! must pass before any join may use it. Both sides use them: the worker writes
//! the report from the packets it read back, the coordinator checks it against
//! the job's chunk plan (it never links libav).

use crate::plan::{PlannedChunk, first_frame_at};
use serde::{Deserialize, Serialize};

/// `chunk.json`, next to the chunk's packets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkReport {
    pub version: u32,
    pub index: u32,
    pub rendition: String,
    /// Frames (video packets) in the chunk.
    pub frames: u64,
    /// The first packet in decode order: its pts (a frame number on the job's grid)
    /// and whether it is a keyframe.
    pub first_pts: Option<i64>,
    pub first_key: bool,
    /// The pts of every keyframe, in decode order.
    pub keyframes: Vec<i64>,
    /// Whether decode timestamps strictly increase.
    pub dts_increasing: bool,
    /// sha256 of the codec's extradata (H.264: SPS and PPS), hex.
    pub extradata_sha256: String,
    pub bytes: u64,
    /// The encoder's errors and the sampled SSIM of this chunk's frames (not in the
    /// packets: the join adds them up as they were reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::report::QualitySums>,
}

/// The frame numbers where a job's forced IDRs fall inside `frames`: the first
/// frame at or after every multiple of `gop_seconds`, at `num/den` fps.
pub fn grid_keyframes(frames: std::ops::Range<u64>, (num, den): (u64, u64), gop_seconds: f64) -> Vec<u64> {
    let gop_ms = (gop_seconds * 1000.0).round() as u128;
    let at = |m: u128| first_frame_at(m * gop_ms, (num, den));
    // The first mark whose frame is at or after the range's start.
    let mut m = (u128::from(frames.start) * 1000 * u128::from(den) / (gop_ms * u128::from(num))).saturating_sub(1);
    while at(m) < frames.start {
        m += 1;
    }
    (m..).map(at).take_while(|f| *f < frames.end).collect()
}

/// Checks one chunk against its plan: its frame count (the last chunk runs to the
/// source's end, so within 2 frames, as an unchunked encode is checked), an IDR
/// first at the planned frame, every IDR on the job's grid and none missing, and
/// decode timestamps that strictly increase.
pub fn check(report: &ChunkReport, planned: &PlannedChunk, last: bool, rate: (u64, u64), gop_seconds: f64) -> Result<(), String> {
    let n = report.index;
    if report.index != planned.index {
        return Err(format!("chunk {n}: reported for chunk {}", planned.index));
    }
    let frames_ok = if last { report.frames.abs_diff(planned.frames) <= 2 } else { report.frames == planned.frames };
    if !frames_ok {
        return Err(format!("chunk {n}: {} frames, {} planned", report.frames, planned.frames));
    }
    if report.first_pts != Some(planned.start_frame as i64) || !report.first_key {
        return Err(format!(
            "chunk {n}: its first packet is {} at frame {:?}, not an IDR at frame {}",
            if report.first_key { "a keyframe" } else { "not a keyframe" },
            report.first_pts,
            planned.start_frame
        ));
    }
    let expected = grid_keyframes(planned.start_frame..planned.start_frame + report.frames, rate, gop_seconds);
    let got: Vec<u64> = report.keyframes.iter().map(|&k| k.max(0) as u64).collect();
    if got != expected {
        return Err(format!("chunk {n}: keyframes at frames {got:?}, the 2 s grid puts them at {expected:?}"));
    }
    if !report.dts_increasing {
        return Err(format!("chunk {n}: decode timestamps do not strictly increase"));
    }
    Ok(())
}

/// Checks that a rendition's chunks were encoded with one set of codec parameters
/// (the join writes one SPS/PPS for all of them).
pub fn same_parameters(reports: &[&ChunkReport]) -> Result<(), String> {
    match reports.iter().find(|r| r.extradata_sha256 != reports[0].extradata_sha256) {
        Some(r) => Err(format!("chunk {}: its codec parameters differ from chunk {}'s", r.index, reports[0].index)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(index: u32, start: i64, frames: u64, keyframes: Vec<i64>) -> ChunkReport {
        ChunkReport {
            version: 1,
            index,
            rendition: "240p".into(),
            frames,
            first_pts: Some(start),
            first_key: true,
            keyframes,
            dts_increasing: true,
            extradata_sha256: "ab".into(),
            bytes: 1,
            quality: None,
        }
    }

    #[test]
    fn keyframes_sit_on_the_2_s_grid() {
        assert_eq!(grid_keyframes(0..200, (30, 1), 2.0), [0, 60, 120, 180]);
        // 29.97: the first frame at or after each mark.
        assert_eq!(grid_keyframes(1799..1920, (30000, 1001), 2.0), [1799, 1859, 1919]);
        assert_eq!(grid_keyframes(1800..1859, (30000, 1001), 2.0), Vec::<u64>::new());
    }

    #[test]
    fn a_chunk_must_be_as_planned() {
        let planned = PlannedChunk { index: 1, start_frame: 1799, frames: 121 };
        let rate = (30000, 1001);
        let good = report(1, 1799, 121, vec![1799, 1859, 1919]);
        assert_eq!(check(&good, &planned, false, rate, 2.0), Ok(()));
        let short = ChunkReport { frames: 120, ..good.clone() };
        assert_eq!(check(&short, &planned, false, rate, 2.0), Err("chunk 1: 120 frames, 121 planned".into()));
        // The last chunk runs to the source's end: within 2 frames.
        let last = ChunkReport { frames: 120, keyframes: vec![1799, 1859], ..good.clone() };
        assert_eq!(check(&last, &planned, true, rate, 2.0), Ok(()));
        let late = ChunkReport { first_pts: Some(1800), ..good.clone() };
        assert!(check(&late, &planned, false, rate, 2.0).unwrap_err().contains("not an IDR at frame 1799"));
        let extra = ChunkReport { keyframes: vec![1799, 1830, 1859, 1919], ..good.clone() };
        assert!(check(&extra, &planned, false, rate, 2.0).unwrap_err().contains("keyframes at frames [1799, 1830, 1859, 1919]"));
        let jumbled = ChunkReport { dts_increasing: false, ..good.clone() };
        assert!(check(&jumbled, &planned, false, rate, 2.0).unwrap_err().contains("decode timestamps"));
        let other = ChunkReport { index: 2, extradata_sha256: "cd".into(), ..good.clone() };
        assert_eq!(same_parameters(&[&good, &good]), Ok(()));
        assert!(same_parameters(&[&good, &other]).unwrap_err().contains("chunk 2"));
    }
}
