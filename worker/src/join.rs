//! `drake join`: a chunked rendition's outputs, made from its chunks' packets and
//! the job's audio without re-encoding, exactly the set a whole encode makes
//! (fast-start MP4, fMP4 HLS, I-frame playlist, keyframe index, `rendition.json`).
//!
//! Before a packet is written, every chunk passes [`proto::chunk::check`] against
//! the job's chunk plan (recomputed here from the probe and the profile) and all of
//! them share one set of codec parameters: a bad chunk never reaches the outputs.
//! Chunks are taken in plan order, as given; timestamps are the encoder's frame
//! numbers, never a container's durations. The same packaging and checks as a
//! whole encode follow, and then the checks only a join needs: keyframes
//! continuous on the 2 s grid across seams, and audio and video that end with
//! the source.

use crate::error::{Context as _, EngineError, Result};
use crate::files::Staging;
use crate::packets::{Reader, Record, StreamHeader};
use crate::transcode::{self, CHUNK_PACKETS, CHUNK_REPORT, Limits};
use ff::Rational;
use ffmpeg_next as ff;
use proto::chunk::ChunkReport;
use proto::probe::Probe;
use proto::profile::{Profile, VideoCodec};
use proto::report::{ProgressLine, QualitySums, RenditionReport};
use std::path::Path;

pub struct JoinRequest<'a> {
    /// The source's probe (`drake probe`), from which the plan is recomputed: a
    /// join never reads the source.
    pub probe: &'a Probe,
    pub profile: &'a Profile,
    pub rendition: &'a str,
    /// Each chunk's directory (`chunk.pkts`, `chunk.json`), in chunk order.
    pub chunks: Vec<&'a Path>,
    /// The job's audio (`audio.pkts`), if the rendition has audio.
    pub audio: Option<&'a Path>,
    pub out: &'a Path,
    pub limits: Limits,
}

/// Joins the chunks, printing a line of `progress` at least every half second
/// while it reads or writes packets, and before each step that finishes the files.
pub fn run(req: &JoinRequest, progress: &mut dyn FnMut(ProgressLine)) -> Result<RenditionReport> {
    let probe = req.probe;
    let renditions = transcode::plan_renditions(probe, req.profile, &[req.rendition], req.limits)?;
    let r = &renditions[0];
    let pv = r.video.as_ref().ok_or_else(|| EngineError::bad(format!("rendition {} has no video to join", r.name)))?;
    let plan = proto::plan::plan(probe, req.profile).map_err(|e| EngineError::bad(e.to_string()))?;
    let cut = proto::plan::chunks(&plan, probe, &req.profile.chunking)
        .ok_or_else(|| EngineError::bad(format!("profile {} does not cut this source in chunks", req.profile.name)))?;
    let (num, den) = transcode::frame_rate(pv);
    let rate = (num as u64, den as u64);
    if req.chunks.len() != cut.chunks.len() {
        return Err(EngineError::bad(format!("{} chunk directories for {} chunks", req.chunks.len(), cut.chunks.len())));
    }
    if r.audio.is_some() != req.audio.is_some() {
        return Err(EngineError::bad(format!("rendition {} {} audio", r.name, if r.audio.is_some() { "needs" } else { "has no" })));
    }

    // Every chunk is checked before any packet is written (reading each one's
    // packets: a line of progress as it goes).
    let mut pace = transcode::Every::half_second();
    let mut reports = Vec::with_capacity(req.chunks.len());
    for (dir, planned) in req.chunks.iter().zip(&cut.chunks) {
        if pace.due() {
            progress(ProgressLine::Progress { fraction: 0.0, fps: 0.0, frame: 0, out_time: 0.0 });
        }
        let path = dir.join(CHUNK_REPORT);
        let text = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let report: ChunkReport = serde_json::from_slice(&text).map_err(|e| EngineError::internal("reading a chunk report", e))?;
        // The report must say what the packets say (quality is not in the packets).
        let from_packets = transcode::chunk_report(&dir.join(CHUNK_PACKETS), planned.index, &r.name)?;
        if (ChunkReport { quality: None, ..report.clone() }) != from_packets {
            return Err(EngineError::internal(
                "checking chunks",
                format!("chunk {}: its report does not match its packets", planned.index),
            ));
        }
        let last = planned.index as usize == cut.chunks.len() - 1;
        proto::chunk::check(&report, planned, last, rate, pv.gop_seconds).map_err(|e| EngineError::internal("checking chunks", e))?;
        reports.push(report);
    }
    proto::chunk::same_parameters(&reports.iter().collect::<Vec<_>>()).map_err(|e| EngineError::internal("checking chunks", e))?;

    let staging = Staging::new(req.out)?;
    let progressive = transcode::progressive_name(r);
    let mut mux = transcode::Muxers::open(Some(&staging.path(&progressive)), &staging.path(transcode::FRAGMENTED), &req.profile.video)?;
    let mut video = Chunks::open(&req.chunks)?;
    mux.add_stream(&video.header, transcode::Track::Video)?;
    if let Some(dir) = req.audio {
        // The MP4 gets the job's audio in step with the video (HLS stays video-only).
        mux.add_audio_packets(Reader::open(&dir.join(transcode::AUDIO_PACKETS)).ctx(|| format!("reading {}", dir.display()))?)?;
    }
    mux.start()?;

    // Video decode timestamps must keep rising across seams.
    let vh = video.header.clone();
    let (mut frames, mut last_dts) = (0u64, None::<i64>);
    while let Some(v) = video.next()? {
        if pace.due() {
            let out_time = frames as f64 * f64::from(den) / f64::from(num);
            let fraction = (frames as f64 / cut.total_frames.max(1) as f64).clamp(0.0, 0.99);
            progress(ProgressLine::Progress { fraction, fps: 0.0, frame: frames, out_time });
        }
        if last_dts.is_some_and(|d| v.dts <= d) {
            return Err(EngineError::internal("joining", format!("decode timestamps go back at frame {} (a seam)", v.pts)));
        }
        last_dts = Some(v.dts);
        frames += 1;
        mux.write(transcode::Track::Video, &mut transcode::record_packet(&v))?;
    }
    let mut finishing = || progress(ProgressLine::Progress { fraction: 0.99, fps: 0.0, frame: frames, out_time: probe.duration });
    finishing();
    mux.finish()?;
    finishing();
    let audio_end = mux.fed_audio_end();

    let fps = Rational(num, den);
    let extradata = hex::decode(&vh.extradata).map_err(|e| EngineError::internal("reading a packet file", e))?;
    let keyint = (pv.gop_seconds * f64::from(fps)).ceil() as u32 + 1;
    let facts = transcode::VideoFacts {
        fps,
        frames,
        codecs: match pv.codec {
            VideoCodec::H264 => crate::codecs::avc1(&extradata).unwrap_or_else(|| "avc1.640028".into()),
            VideoCodec::Vp9 => crate::codecs::vp09(r.width, r.height, f64::from(fps)),
        },
        encoder_name: pv.codec.encoder().to_string(),
        options: transcode::encoder_options(pv, keyint),
        gop_frames: (pv.gop_seconds * f64::from(fps)).round() as u32,
        quality: chunk_quality(&reports),
    };
    let report = transcode::package(&staging, r, &progressive, Some(&facts), r.audio.as_ref(), &mux, probe.duration)?;

    // What only a join can get wrong: the seams.
    let grid: Vec<f64> =
        proto::chunk::grid_keyframes(0..frames, rate, pv.gop_seconds).iter().map(|&f| f as f64 * f64::from(den) / f64::from(num)).collect();
    if report.keyframe_times.len() != grid.len() || report.keyframe_times.iter().zip(&grid).any(|(a, b)| (a - b).abs() > 1e-3) {
        return Err(EngineError::internal(
            "checking the join",
            format!("keyframes at {:?}, the 2 s grid has {grid:?}", report.keyframe_times),
        ));
    }
    let slack = (1.5 / f64::from(fps)).max(0.1);
    let video_end = frames as f64 / f64::from(fps);
    if (video_end - probe.duration).abs() > slack {
        return Err(EngineError::internal(
            "checking the join",
            format!("video ends at {video_end:.3} s, the source at {:.3} s", probe.duration),
        ));
    }
    // The audio may run past the source by its last frame's padding where the
    // container says nothing of it (Matroska, MPEG-TS): up to 2048 samples at the
    // source's rate, 256 ms at an old phone's 8 kHz (the audio task checked it
    // against the frames it decoded).
    let padding = probe.main_audio().map_or(0.0, |a| 2048.0 / f64::from(a.sample_rate.max(8000)));
    if let Some(audio_end) = audio_end.filter(|end| (end - probe.duration).abs() > slack.max(padding)) {
        return Err(EngineError::internal(
            "checking the join",
            format!("audio ends at {audio_end:.3} s, the source at {:.3} s", probe.duration),
        ));
    }
    staging.commit(transcode::REPORT)?;
    Ok(report)
}

/// The chunks' video packets, one chunk after another, in the order given.
struct Chunks<'a> {
    dirs: &'a [&'a Path],
    at: usize,
    reader: Reader,
    header: StreamHeader,
}

impl<'a> Chunks<'a> {
    fn open(dirs: &'a [&'a Path]) -> Result<Chunks<'a>> {
        let reader = Reader::open(&dirs[0].join(CHUNK_PACKETS)).ctx(|| format!("reading {}", dirs[0].display()))?;
        let header = reader.header.clone();
        Ok(Chunks { dirs, at: 0, reader, header })
    }

    fn next(&mut self) -> Result<Option<Record>> {
        loop {
            let dir = self.dirs[self.at];
            if let Some(r) = self.reader.next_record().ctx(|| format!("reading {}", dir.display()))? {
                return Ok(Some(r));
            }
            if self.at + 1 == self.dirs.len() {
                return Ok(None);
            }
            self.at += 1;
            let dir = self.dirs[self.at];
            self.reader = Reader::open(&dir.join(CHUNK_PACKETS)).ctx(|| format!("reading {}", dir.display()))?;
            if self.reader.header != self.header {
                return Err(EngineError::internal("joining", format!("{}: its stream differs from the first chunk's", dir.display())));
            }
        }
    }
}

/// The rendition's quality sums: every chunk's added up, if every chunk measured.
fn chunk_quality(reports: &[ChunkReport]) -> Option<QualitySums> {
    let mut sums = QualitySums::default();
    for r in reports {
        sums.add(r.quality.as_ref()?);
    }
    Some(sums)
}
