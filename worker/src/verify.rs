//! Reads an output back with libav: frame count, duration, tracks and the byte
//! position of every keyframe sample. The transcode refuses to publish outputs
//! this scan does not confirm.

use crate::error::{Context as _, Result};
use ffmpeg_next as ff;
use proto::report::KeyframeEntry;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub duration: f64,
    pub has_video: bool,
    pub has_audio: bool,
    pub video_frames: u64,
    pub keyframes: Vec<KeyframeEntry>,
}

pub fn scan(path: &Path) -> Result<Scan> {
    let mut ictx = ff::format::input(&path).ctx(|| format!("reopening {}", path.display()))?;
    let video = ictx.streams().best(ff::media::Type::Video).map(|s| (s.index(), s.time_base()));
    let has_audio = ictx.streams().best(ff::media::Type::Audio).is_some();
    let mut video_frames = 0;
    let mut keyframes = Vec::new();
    loop {
        let mut pkt = ff::Packet::empty();
        match pkt.read(&mut ictx) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(e) => {
                return Err(crate::EngineError::internal(format!("reading back {}", path.display()), e));
            }
        }
        let Some((vi, tb)) = video else { continue };
        if pkt.stream() != vi {
            continue;
        }
        video_frames += 1;
        if pkt.is_key() {
            let time = pkt.pts().unwrap_or(0) as f64 * f64::from(tb);
            keyframes.push(KeyframeEntry {
                time: (time * 1e6).round() / 1e6,
                offset: pkt.position().max(0) as u64,
                size: pkt.size() as u64,
            });
        }
    }
    keyframes.sort_by(|a, b| a.time.total_cmp(&b.time));
    Ok(Scan { duration: ictx.duration().max(0) as f64 / 1e6, has_video: video.is_some(), has_audio, video_frames, keyframes })
}
