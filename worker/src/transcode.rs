//! `drake transcode`: one or more renditions in this process. The source is decoded
//! once; each decoded frame feeds every rendition's filters and encoder, and each
//! encoded packet is muxed twice: into a fast-start MP4 and into a fragmented MP4
//! (one fragment per GOP) that [`crate::fmp4`] cuts into HLS. Beside video, the HLS
//! is video-only: the job's audio task ([`run_audio`]) encodes every audio track
//! once, as HLS of its own, and its packets are muxed into each MP4.
//!
//! Keyframes are forced by presentation time (every `gop_seconds`), never by frame
//! count or scene cut, so every rendition of a job has IDRs at the same instants.
//! Nothing is published until the outputs were probed back and matched the source.
//!
//! The same decode can also make the job's thumbnails and storyboard (`thumbnails`
//! in the request): the farm bundles them with a job's last renditions, so the
//! source is not decoded again just for pictures.

use crate::av;
use crate::error::{Context as _, EngineError, Result};
use crate::files::{self, Staging};
use crate::fmp4;
use crate::packets;
use crate::quality::Meter;
use crate::subtitles::Extractor;
use crate::thumbnails::Collector;
use crate::timeline::{Seen, Timelines};
use crate::verify;
use ff::util::picture;
use ff::{Dictionary, Packet, Rational, Rescale, codec, decoder, encoder, filter, format, frame};
use ffmpeg_next as ff;
use proto::chunk::ChunkReport;
use proto::plan::{PlannedAudio, PlannedRendition, PlannedSubtitle, PlannedTrack, PlannedVideo, SkippedSubtitle};
use proto::profile::{Profile, VideoCodec};
use proto::report::{
    AudioReport, AudioTrackReport, AudioTracksReport, KeyframeIndex, ProgressLine, QualitySums, RenditionReport, SubtitleTrackReport,
    ThumbnailsReport, VideoReport,
};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Limits on what a stranger's upload may ask of one transcode process.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest source accepted, in seconds.
    pub max_duration: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_duration: 6.0 * 3600.0 }
    }
}

impl Limits {
    /// A source longer than `max_duration` is bad input.
    fn check(&self, probe: &proto::probe::Probe) -> Result<()> {
        if probe.duration > self.max_duration {
            return Err(EngineError::bad(format!(
                "the source lasts {:.0} s; at most {:.0} s are accepted",
                probe.duration, self.max_duration
            )));
        }
        Ok(())
    }
}

pub struct Request<'a> {
    pub input: &'a str,
    pub profile: &'a Profile,
    /// Each rendition to make, and the directory its outputs go to.
    pub outputs: Vec<(&'a str, &'a Path)>,
    pub limits: Limits,
    /// Also make this many thumbnails, a poster and the storyboard from the same
    /// decoded frames, into this directory.
    pub thumbnails: Option<(&'a Path, usize)>,
    /// Measure each rendition's PSNR and SSIM ([`crate::quality`]); off only to
    /// measure what measuring costs.
    pub quality: bool,
    /// The job's audio, encoded before by its audio task (`audio.pkts`): muxed
    /// into every rendition's MP4 instead of encoding the source's audio again.
    pub audio_packets: Option<&'a Path>,
}

/// What a transcode made. The thumbnails succeed or fail on their own: a picture
/// that cannot be made does not cost the renditions.
pub struct Made {
    pub renditions: Vec<RenditionReport>,
    pub thumbnails: Option<Result<ThumbnailsReport>>,
}

/// File names inside a rendition's output directory.
pub const PLAYLIST: &str = "playlist.m3u8";
pub const IFRAMES: &str = "iframes.m3u8";
pub const INIT: &str = "init.mp4";
pub const KEYFRAMES: &str = "keyframes.json";
pub const REPORT: &str = "rendition.json";
pub(crate) const FRAGMENTED: &str = "stream.fmp4";

/// Most renditions one process encodes from a single decode.
pub const MAX_OUTPUTS: usize = 8;

/// Opens the source and plans the renditions a request names.
pub(crate) fn prepare(req: &Request) -> Result<(format::context::Input, proto::probe::Probe, Vec<PlannedRendition>)> {
    let ictx = av::open_input(req.input)?;
    let probe = crate::probe::describe(&ictx, req.input, None)?;
    let names: Vec<&str> = req.outputs.iter().map(|(name, _)| *name).collect();
    let renditions = plan_renditions(&probe, req.profile, &names, req.limits)?;
    Ok((ictx, probe, renditions))
}

/// The renditions named, as the profile plans them for a source of this probe.
pub(crate) fn plan_renditions(
    probe: &proto::probe::Probe,
    profile: &Profile,
    names: &[&str],
    limits: Limits,
) -> Result<Vec<PlannedRendition>> {
    if names.is_empty() || names.len() > MAX_OUTPUTS {
        return Err(EngineError::bad(format!("give 1 to {MAX_OUTPUTS} renditions, each with its --out directory")));
    }
    limits.check(probe)?;
    let plan = proto::plan::plan(probe, profile).map_err(|e| EngineError::bad(e.to_string()))?;
    let mut renditions = Vec::with_capacity(names.len());
    for name in names {
        let Some(rendition) = plan.renditions.iter().find(|r| r.name == *name).cloned() else {
            let why = match plan.skipped.iter().find(|s| s.name == *name) {
                Some(s) => format!("rendition {} does not apply to this source: {}", s.name, s.reason),
                None => format!("profile {} plans no rendition named {name} for this source", profile.name),
            };
            return Err(EngineError::bad(why));
        };
        if renditions.iter().any(|r: &PlannedRendition| r.name == rendition.name) {
            return Err(EngineError::bad(format!("rendition {name} is asked for twice")));
        }
        renditions.push(rendition);
    }
    Ok(renditions)
}

/// Paces the lines of progress an engine prints: one is due at once, then one
/// every period while work goes on. The worker stops an engine that prints none
/// for its lease's `engine_stall_seconds`.
pub struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    pub fn half_second() -> Every {
        Every { period: Duration::from_millis(500), last: None }
    }

    pub fn due(&mut self) -> bool {
        if self.last.is_some_and(|at| at.elapsed() < self.period) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }
}

pub fn run(req: &Request, progress: &mut dyn FnMut(ProgressLine)) -> Result<Made> {
    let (mut ictx, probe, renditions) = prepare(req)?;
    let mut stagings = Vec::with_capacity(renditions.len());
    let mut muxes = Vec::with_capacity(renditions.len());
    for (r, (_, dir)) in renditions.iter().zip(&req.outputs) {
        let staging = Staging::new(dir)?;
        muxes.push(Muxers::open(Some(&staging.path(&progressive_name(r))), &staging.path(FRAGMENTED), &req.profile.video)?);
        stagings.push(staging);
    }

    let start = av::start_seconds(&ictx);
    // Renditions all plan video, or all none (audio-only sources); likewise audio.
    let mut video = match (renditions[0].video.is_some(), probe.main_video()) {
        (true, Some(v)) => Some(VideoPipe::new(&ictx, v.index, v.rotation, &renditions, start, None, req.quality, &mut muxes)?),
        _ => None,
    };
    let mut sheet = req.thumbnails.map(|(_, count)| match (&video, probe.main_video(), probe.cover_art()) {
        (Some(_), Some(v), _) => Collector::new(v, av::params(&ictx.stream(v.index).expect("probed stream")), probe.duration, count),
        (None, None, Some(cover)) => crate::thumbnails::cover(&ictx, cover, probe.duration),
        _ => Err(EngineError::bad("the source has no video or cover art to take thumbnails from")),
    });
    if let Some(v) = video.as_mut() {
        v.sheet = sheet.take();
    }
    let mut audio = match (renditions[0].audio.is_some(), probe.main_audio(), req.audio_packets) {
        (true, Some(_), Some(path)) if video.is_some() => {
            for mux in &mut muxes {
                mux.add_audio_packets(packets::Reader::open(path).ctx(|| format!("reading {}", path.display()))?)?;
            }
            None
        }
        (true, Some(a), _) => {
            let end_s = if video.is_some() { probe.duration } else { 0.0 };
            Some(AudioPipe::new(&ictx, a.index, &renditions, (start, end_s), &mut muxes)?)
        }
        _ => None,
    };
    for mux in &mut muxes {
        mux.start()?;
    }

    let total = probe.duration.max(0.001);
    let mut source = SourceReader::default();
    let began = Instant::now();
    let mut pace = Every::half_second();
    while let Some(pkt) = source.next(&mut ictx)? {
        if let Some(v) = video.as_mut().filter(|v| v.index == pkt.stream()) {
            v.feed(Some(&pkt), &mut muxes)?;
        } else if let Some(a) = audio.as_mut().filter(|a| a.index == pkt.stream()) {
            a.feed(Some(&pkt), &mut muxes)?;
        }
        if pace.due() {
            let frame = video.as_ref().map_or(0, |v| v.frames);
            let out_time = muxes.iter().map(|m| m.out_time).fold(f64::INFINITY, f64::min);
            progress(ProgressLine::Progress {
                fraction: (out_time / total).clamp(0.0, 0.99),
                fps: frame as f64 / began.elapsed().as_secs_f64().max(1e-3),
                frame,
                out_time,
            });
        }
    }
    if let Some(v) = video.as_mut() {
        v.hold_until(source.audio_end, probe.duration);
        v.feed(None, &mut muxes)?;
    }
    if let Some(a) = audio.as_mut() {
        a.feed(None, &mut muxes)?;
    }
    // Finishing and checking each rendition's files reads no source: a line before
    // each step tells the worker the engine still works (a long film's MP4 is
    // rewritten whole to put its index first, then read back).
    let mut finishing = || progress(ProgressLine::Progress { fraction: 0.99, fps: 0.0, frame: 0, out_time: probe.duration });
    for mux in &mut muxes {
        finishing();
        mux.finish()?;
    }

    // The source must hold what its header promised: a short decode is a truncated file.
    let decoded = match (&video, &audio) {
        (Some(v), _) => {
            if v.frames == 0 {
                return Err(EngineError::bad(format!("no decodable {} video frames in the source", av::codec_name(v.codec_id))));
            }
            v.flow.decoded_end
        }
        (None, Some(a)) => {
            if a.samples == 0 {
                return Err(EngineError::bad("no decodable audio in the source"));
            }
            a.flow.decoded_end
        }
        (None, None) => return Err(EngineError::bad("nothing to transcode")),
    };
    if probe.duration > 0.0 && decoded < probe.duration - (0.02 * probe.duration).max(1.0) {
        return Err(EngineError::bad(format!(
            "the source ends at {decoded:.2} s but its header declares {:.2} s (truncated or damaged file)",
            probe.duration
        )));
    }

    let mut reports = Vec::with_capacity(renditions.len());
    for (k, r) in renditions.iter().enumerate() {
        finishing();
        let v = video.as_mut().map(|v| v.outs[k].facts(r)).transpose()?;
        let a = if audio.is_some() || muxes[k].fed_audio_end().is_some() { r.audio.as_ref() } else { None };
        reports.push(package(&stagings[k], r, &progressive_name(r), v.as_ref(), a, &muxes[k], decoded)?);
    }
    for staging in stagings {
        staging.commit(REPORT)?;
    }
    let thumbnails = match (req.thumbnails, video.as_mut().and_then(|v| v.sheet.take()).or(sheet)) {
        (Some((out, _)), Some(made)) => Some(made.and_then(|collector| collector.finish(out))),
        _ => None,
    };
    progress(ProgressLine::Done { fraction: 1.0 });
    Ok(Made { renditions: reports, thumbnails })
}

/// Reads a source's packets: a few corrupt ones are skipped, too many (or a file
/// that cannot be read to its end) are bad input, and a storage URL that fails is
/// this machine's problem, worth a retry. (A URL's reader waits out a store's
/// blips, so the bytes the demuxer sees are the source's: see `crate::remote`.)
#[derive(Default)]
struct SourceReader {
    corrupt: u64,
    /// Where the furthest audio packet read so far ends, in seconds of the
    /// source's timeline (container start included).
    audio_end: f64,
    /// Each audio and video stream's decode times since the last seek.
    timelines: Timelines,
}

impl SourceReader {
    /// Notes where a packet of the source is. Files joined end to end (see
    /// [`crate::timeline`]) start their timestamps over at each join. The frames
    /// after it would land on times already encoded and be dropped, and the
    /// container's duration, measured from the first and last timestamps, counts
    /// only one part, so nothing would notice the loss: the source is refused
    /// instead, saying how to make it one timeline. (The farm remuxes the joins
    /// its probe finds before anything reads the source here.)
    fn saw(&mut self, ictx: &format::context::Input, pkt: &Packet) -> Result<()> {
        let Some(stream) = ictx.stream(pkt.stream()) else { return Ok(()) };
        let (kind, time_base) = (av::params(&stream).codec_type, f64::from(stream.time_base()));
        if let Some(ts) = pkt.pts().or(pkt.dts())
            && kind == ff::ffi::AVMediaType::AVMEDIA_TYPE_AUDIO
        {
            self.audio_end = self.audio_end.max((ts + pkt.duration().max(0)) as f64 * time_base);
        }
        let watched = matches!(kind, ff::ffi::AVMediaType::AVMEDIA_TYPE_AUDIO | ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO);
        // Decode times only: presentation times go back by design where frames are reordered.
        let Some(t) = pkt.dts().map(|ts| ts as f64 * time_base).filter(|_| watched) else { return Ok(()) };
        match self.timelines.see(pkt.stream(), t) {
            Seen::Joined { from, to } => {
                let start = av::start_seconds(ictx);
                Err(EngineError::bad(format!(
                    "the source's timestamps go back from {:.2} s to {:.2} s: it is recordings joined end to end, and the part after \
                     the join would be lost; make it one timeline first, for example with `drake remux SOURCE --out joined.mkv`",
                    from - start,
                    to - start
                )))
            }
            Seen::Along | Seen::Behind => Ok(()),
        }
    }

    /// The first packet after a seek (which goes back by design), or `None`.
    fn next_after_seek(&mut self, ictx: &mut format::context::Input) -> Result<Option<Packet>> {
        self.timelines.clear();
        self.next(ictx)
    }

    /// The next packet, or `None` at the end of the source.
    fn next(&mut self, ictx: &mut format::context::Input) -> Result<Option<Packet>> {
        loop {
            let mut pkt = Packet::empty();
            let error = match pkt.read(ictx) {
                Ok(()) => {
                    self.saw(ictx, &pkt)?;
                    return Ok(Some(pkt));
                }
                Err(e) => e,
            };
            // Over HTTP, a store that stayed away may reach the demuxer as an end,
            // as invalid data or as an error: none of them is the source's.
            if let Some(failed) = av::read_failure(ictx) {
                return Err(failed);
            }
            match error {
                ff::Error::Eof => return Ok(None),
                ff::Error::InvalidData => {
                    self.corrupt += 1;
                    if self.corrupt > 1000 {
                        return Err(EngineError::bad("more than 1000 corrupt packets; the file is damaged"));
                    }
                }
                e => return Err(EngineError::bad(format!("the source cannot be read to its end: {e}"))),
            }
        }
    }
}

/// File names of a chunk's outputs.
pub const CHUNK_PACKETS: &str = "chunk.pkts";
pub const CHUNK_REPORT: &str = "chunk.json";

/// One time chunk of a long source, video only: frames `span` of the job's frame
/// grid, for every requested rendition from one decode, each into its directory
/// as a packet file ([`CHUNK_PACKETS`]) and its report ([`CHUNK_REPORT`]), which is
/// written from the packets read back. Decoding starts at the source keyframe
/// before the chunk; the frames before it are dropped, and encoding stops after
/// the chunk's frames. IDRs are forced on the job's 2 s grid, as in a whole encode.
pub fn run_chunk(req: &Request, index: u32, span: Span, progress: &mut dyn FnMut(ProgressLine)) -> Result<Vec<ChunkReport>> {
    let (mut ictx, probe, renditions) = prepare(req)?;
    let Some((v, Some(pv))) = probe.main_video().map(|v| (v, renditions[0].video.as_ref())) else {
        return Err(EngineError::bad("a chunk needs a source with video"));
    };
    let (num, den) = frame_rate(pv);
    let start = av::start_seconds(&ictx);
    let first_time = span.first as f64 * f64::from(den) / f64::from(num);
    let mut source = SourceReader::default();
    // Decoding starts from a source keyframe before the chunk.
    let key = if span.first > 0 {
        let before = first_time - f64::from(den) / f64::from(num);
        av::seek_keyframe_before(&mut ictx, v.index, start, before, |i| source.next_after_seek(i))?
    } else {
        None
    };
    let mut stagings = Vec::with_capacity(renditions.len());
    let mut muxes = Vec::with_capacity(renditions.len());
    for (_, dir) in &req.outputs {
        let staging = Staging::new(dir)?;
        muxes.push(Muxers::packets(&staging.path(CHUNK_PACKETS), &req.profile.video));
        stagings.push(staging);
    }
    let mut video = VideoPipe::new(&ictx, v.index, v.rotation, &renditions, start, Some(span), req.quality, &mut muxes)?;
    let total = span.count.map_or(probe.duration - first_time, |n| n as f64 * f64::from(den) / f64::from(num)).max(0.001);
    if let Some(key) = &key {
        video.feed(Some(key), &mut muxes)?;
    }
    let began = Instant::now();
    let mut pace = Every::half_second();
    while !video.has_span() {
        let Some(pkt) = source.next(&mut ictx)? else { break };
        if pkt.stream() == video.index {
            video.feed(Some(&pkt), &mut muxes)?;
        }
        if pace.due() {
            let out_time = muxes.iter().map(|m| m.out_time).fold(f64::INFINITY, f64::min) - first_time;
            progress(ProgressLine::Progress {
                fraction: (out_time / total).clamp(0.0, 0.99),
                fps: video.frames as f64 / began.elapsed().as_secs_f64().max(1e-3),
                frame: video.frames,
                out_time,
            });
        }
    }
    video.hold_until(source.audio_end, probe.duration);
    video.feed(None, &mut muxes)?;
    let mut reports = Vec::with_capacity(renditions.len());
    for (((mux, staging), r), out) in muxes.iter_mut().zip(&stagings).zip(&renditions).zip(&mut video.outs) {
        mux.finish()?;
        let mut report = chunk_report(&staging.path(CHUNK_PACKETS), index, &r.name)?;
        report.quality = out.meter.take().map(Meter::finish).transpose()?;
        if let Some(n) = span.count
            && report.frames != n
        {
            return Err(EngineError::bad(format!("chunk {index} of {}: the source ends {} frames into it", r.name, report.frames)));
        }
        files::write_json(&staging.path(CHUNK_REPORT), &report)?;
        reports.push(report);
    }
    for staging in stagings {
        staging.commit(CHUNK_REPORT)?;
    }
    progress(ProgressLine::Done { fraction: 1.0 });
    Ok(reports)
}

/// File names of a job's audio, encoded once for every rendition.
pub const AUDIO_PACKETS: &str = "audio.pkts";
pub const AUDIO_REPORT: &str = "audio.json";

/// A job's audio, whole and once, into `outputs[0]`'s directory: every track the
/// plan keeps (the default first) decoded in one pass over the source, each
/// encoded as the first requested rendition plans audio (every rendition of a
/// job plans the same) and cut into HLS of its own (`a0.m3u8`, ...); the first
/// track's packets ([`AUDIO_PACKETS`]) for the rungs' MP4s; and the report
/// ([`AUDIO_REPORT`]). Never cut in chunks: each AAC encoder start primes anew,
/// which clicks at every join.
pub fn run_audio(req: &Request, progress: &mut dyn FnMut(ProgressLine)) -> Result<AudioTracksReport> {
    let (mut ictx, probe, renditions) = prepare(req)?;
    let plan = proto::plan::plan(&probe, req.profile).map_err(|e| EngineError::bad(e.to_string()))?;
    if plan.audio_tracks.is_empty() {
        return Err(EngineError::bad(if probe.main_audio().is_none() {
            "the source has no audio"
        } else {
            "the source has no video: its audio is its one rendition"
        }));
    }
    let staging = Staging::new(req.outputs[0].1)?;
    let packets_of = |t: &PlannedTrack| if t.default { AUDIO_PACKETS.to_string() } else { format!("{}.pkts", t.name) };
    let start = av::start_seconds(&ictx);
    let mut encodes = Vec::with_capacity(plan.audio_tracks.len());
    for t in &plan.audio_tracks {
        let mut mux = Muxers::packets(&staging.path(&packets_of(t)), &req.profile.video);
        let pipe = AudioPipe::new(&ictx, t.stream, &renditions[..1], (start, probe.duration), std::slice::from_mut(&mut mux))?;
        encodes.push(TrackEncode { pipe, mux });
    }
    let mut subtitles = subtitle_extractors(&ictx, &plan)?;
    let encodes = encode_tracks(&mut ictx, encodes, &mut subtitles, probe.duration, progress)?;
    let mut tracks = Vec::with_capacity(plan.audio_tracks.len());
    let mut written = Vec::new();
    for (t, TrackEncode { pipe, .. }) in plan.audio_tracks.iter().zip(&encodes) {
        if pipe.samples == 0 {
            return Err(EngineError::bad(format!("no decodable audio in the source's stream {}", t.stream)));
        }
        let source = (probe.duration, pipe.longest_frame_s);
        let (track, files) = package_track(&staging, req.profile, t, &staging.path(&packets_of(t)), source)?;
        if !t.default {
            std::fs::remove_file(staging.path(&packets_of(t))).ctx(|| "removing a track's packets".into())?;
        }
        tracks.push(track);
        written.extend(files);
    }
    // What the rungs' MP4s and the joins check the audio against: its span.
    let mut reader = packets::Reader::open(&staging.path(AUDIO_PACKETS)).ctx(|| "reading the audio packets".into())?;
    let (mut packets, mut first, mut end) = (0u64, None, 0i64);
    while let Some(p) = reader.next_record().ctx(|| "reading the audio packets".into())? {
        first.get_or_insert(p.pts);
        end = end.max(p.pts + p.duration);
        packets += 1;
    }
    let tb = reader.header.time_base;
    let secs = |t: i64| t as f64 * f64::from(tb.0) / f64::from(tb.1.max(1));
    written.push(AUDIO_PACKETS.to_string());
    let (subtitle_reports, skipped_subtitles) = finish_subtitles(&staging, &plan, subtitles, probe.duration, &mut written)?;
    let report = AudioTracksReport {
        version: proto::WIRE_VERSION,
        packets,
        start: secs(first.unwrap_or(0)),
        end: secs(end),
        sample_rate: reader.header.sample_rate,
        tracks,
        subtitles: subtitle_reports,
        skipped_subtitles,
        checksums: staging.checksums(&written)?,
    };
    files::write_json(&staging.path(AUDIO_REPORT), &report)?;
    staging.commit(AUDIO_REPORT)?;
    progress(ProgressLine::Done { fraction: 1.0 });
    Ok(report)
}

/// One audio track of the job being encoded: its decoder, filters and encoder,
/// and the packet file they write.
struct TrackEncode {
    pipe: AudioPipe,
    mux: Muxers,
}

/// What the reading thread hands a track's encoding thread.
enum ToTrack {
    Packet(Packet),
    /// The source was read through: flush the encoders and finish the files.
    End,
}

/// Packets queued for one encoding thread before the read waits for it.
const TRACK_QUEUE: usize = 64;

/// Reads the source through once, encoding its audio tracks on
/// [`av::track_threads`] threads and extracting its text subtitles on this one.
/// Tracks are independent (their own decoder, filters, encoder and file), so a
/// film's languages encode side by side on a worker with the cores for them, and
/// each track's bytes are the same however many threads there are. With one
/// thread the tracks are encoded here, as the source is read: handing each packet
/// to another thread cost 4% more CPU. Returns the tracks in the order given,
/// finished.
fn encode_tracks(
    ictx: &mut format::context::Input,
    encodes: Vec<TrackEncode>,
    subtitles: &mut [Result<Extractor, String>],
    duration: f64,
    progress: &mut dyn FnMut(ProgressLine),
) -> Result<Vec<TrackEncode>> {
    let count = encodes.len();
    let threads = av::track_threads(count);
    let out_times: Vec<AtomicU64> = (0..count).map(|_| AtomicU64::new(0f64.to_bits())).collect();
    // Tracks are dealt to the threads in turn; `route` finds a stream's thread.
    let mut groups: Vec<Vec<(usize, TrackEncode)>> = (0..threads).map(|_| Vec::new()).collect();
    let mut route = BTreeMap::new();
    for (k, encode) in encodes.into_iter().enumerate() {
        route.insert(encode.pipe.index, k % threads);
        groups[k % threads].push((k, encode));
    }
    let mut reader = TracksReader { subtitles, out_times: &out_times, total: duration.max(0.001), progress };
    let mut finished = if threads == 1 {
        let mut group = groups.pop().expect("one group");
        reader.read(ictx, &mut |pkt| feed_track(&mut group, &pkt, &out_times).map(|()| true))?;
        finish_tracks(&mut group)?;
        group
    } else {
        std::thread::scope(|scope| {
            let mut queues = Vec::with_capacity(threads);
            let mut encoders = Vec::with_capacity(threads);
            for group in groups {
                let (queue, packets) = std::sync::mpsc::sync_channel(TRACK_QUEUE);
                let out_times = &out_times;
                encoders.push(scope.spawn(move || encode_group(group, &packets, out_times)));
                queues.push(queue);
            }
            // Ok(false): an encoding thread stopped, and says why when joined.
            let read =
                reader.read(ictx, &mut |pkt| Ok(route.get(&pkt.stream()).is_none_or(|&g| queues[g].send(ToTrack::Packet(pkt)).is_ok())));
            if matches!(read, Ok(true)) {
                for queue in &queues {
                    // A thread that stopped says why when joined.
                    let _ = queue.send(ToTrack::End);
                }
            }
            // Without an End, a thread stops where it is.
            drop(queues);
            let mut finished = Vec::with_capacity(count);
            let mut failed = None;
            for encoder in encoders {
                match encoder.join() {
                    Ok(Ok(group)) => finished.extend(group),
                    Ok(Err(e)) => {
                        failed.get_or_insert(e);
                    }
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            match (read?, failed) {
                (_, Some(e)) => Err(e),
                (false, None) => Err(EngineError::internal("encoding the audio", "a track's thread stopped without an error")),
                (true, None) => Ok(finished),
            }
        })?
    };
    finished.sort_by_key(|(k, _)| *k);
    Ok(finished.into_iter().map(|(_, encode)| encode).collect())
}

/// The reading side of [`encode_tracks`]: the source's packets in file order,
/// each to its track, or its subtitle extractor, with progress on the way.
struct TracksReader<'a> {
    subtitles: &'a mut [Result<Extractor, String>],
    /// Where each track's encoding has reached, in seconds (an `f64`'s bits).
    out_times: &'a [AtomicU64],
    total: f64,
    progress: &'a mut dyn FnMut(ProgressLine),
}

impl TracksReader<'_> {
    /// Reads the source through, extracting subtitles here and giving every other
    /// packet to `track`, which says false when the track's thread has stopped:
    /// the read then stops too, and gives false.
    fn read(&mut self, ictx: &mut format::context::Input, track: &mut dyn FnMut(Packet) -> Result<bool>) -> Result<bool> {
        let mut source = SourceReader::default();
        let mut pace = Every::half_second();
        while let Some(pkt) = source.next(ictx)? {
            if let Some(x) = self.subtitles.iter_mut().flatten().find(|x| x.index == pkt.stream()) {
                x.feed(&pkt);
            } else if !track(pkt)? {
                return Ok(false);
            }
            if pace.due() {
                let out_time = self.out_times.iter().map(|t| f64::from_bits(t.load(Ordering::Relaxed))).fold(f64::INFINITY, f64::min);
                // Packaging the tracks' HLS is the last tenth.
                (self.progress)(ProgressLine::Progress {
                    fraction: (0.9 * out_time / self.total).clamp(0.0, 0.9),
                    fps: 0.0,
                    frame: 0,
                    out_time,
                });
            }
        }
        Ok(true)
    }
}

/// One encoding thread of [`encode_tracks`]: feeds each packet to its track, and
/// at the end flushes and finishes every track it has.
fn encode_group(
    mut group: Vec<(usize, TrackEncode)>,
    packets: &std::sync::mpsc::Receiver<ToTrack>,
    out_times: &[AtomicU64],
) -> Result<Vec<(usize, TrackEncode)>> {
    loop {
        match packets.recv() {
            Ok(ToTrack::Packet(pkt)) => feed_track(&mut group, &pkt, out_times)?,
            Ok(ToTrack::End) => break,
            // The read failed: its error is the task's.
            Err(_) => return Ok(group),
        }
    }
    finish_tracks(&mut group)?;
    Ok(group)
}

/// Feeds a packet to the track of `group` it belongs to (none: it is dropped).
fn feed_track(group: &mut [(usize, TrackEncode)], pkt: &Packet, out_times: &[AtomicU64]) -> Result<()> {
    if let Some((k, t)) = group.iter_mut().find(|(_, t)| t.pipe.index == pkt.stream()) {
        t.pipe.feed(Some(pkt), std::slice::from_mut(&mut t.mux))?;
        out_times[*k].store(t.mux.out_time.to_bits(), Ordering::Relaxed);
    }
    Ok(())
}

/// Flushes each track's decoder, filters and encoder, and finishes its file.
fn finish_tracks(group: &mut [(usize, TrackEncode)]) -> Result<()> {
    for (_, t) in group {
        t.pipe.feed(None, std::slice::from_mut(&mut t.mux))?;
        t.mux.finish()?;
    }
    Ok(())
}

/// One subtitle track as a single-file WebVTT (`s0.vtt`) and its HLS playlist
/// (`s0.m3u8`, one segment spanning the source). Its cues are timed from the
/// container's start, as the video is; `X-TIMESTAMP-MAP` says that cue time 0 is
/// the video's decode time 0 (its first fragment's `tfdt`), where HLS players
/// anchor fMP4 timelines.
fn write_subtitles(
    staging: &Staging,
    t: &PlannedSubtitle,
    cues: Vec<proto::captions::Cue>,
    duration: f64,
) -> Result<(SubtitleTrackReport, Vec<String>)> {
    let (vtt, playlist) = (format!("{}.vtt", t.name), format!("{}.m3u8", t.name));
    std::fs::write(staging.path(&vtt), proto::captions::to_hls_webvtt(&cues)).ctx(|| format!("writing {vtt}"))?;
    let m3u8 = proto::captions::single_file_playlist(&vtt, duration);
    std::fs::write(staging.path(&playlist), m3u8).ctx(|| format!("writing {playlist}"))?;
    let report = SubtitleTrackReport {
        name: t.name.clone(),
        stream: t.stream,
        codec: t.codec.clone(),
        language: t.language.clone(),
        label: t.label.clone(),
        default: t.default,
        forced: t.forced,
        hearing_impaired: t.hearing_impaired,
        cues: cues.len(),
        files: BTreeMap::from([("vtt".to_string(), vtt.clone()), ("hls_playlist".to_string(), playlist.clone())]),
    };
    Ok((report, vec![vtt, playlist]))
}

/// The text subtitles of a source without audio, as the job's audio task extracts
/// them beside its audio ([`run_audio`]): each stream's WebVTT and playlist, and
/// [`AUDIO_REPORT`] listing them (with no audio tracks and no packets), into `out`.
pub fn run_subtitles(input: &str, profile: &Profile, out: &Path, limits: Limits) -> Result<AudioTracksReport> {
    let mut ictx = av::open_input(input)?;
    let probe = crate::probe::describe(&ictx, input, None)?;
    limits.check(&probe)?;
    let plan = proto::plan::plan(&probe, profile).map_err(|e| EngineError::bad(e.to_string()))?;
    if plan.subtitle_tracks.is_empty() {
        return Err(EngineError::bad("the source has no text subtitles to extract"));
    }
    let staging = Staging::new(out)?;
    let mut subtitles = subtitle_extractors(&ictx, &plan)?;
    let mut source = SourceReader::default();
    while let Some(pkt) = source.next(&mut ictx)? {
        if let Some(x) = subtitles.iter_mut().flatten().find(|x| x.index == pkt.stream()) {
            x.feed(&pkt);
        }
    }
    let mut written = Vec::new();
    let (subtitles, skipped_subtitles) = finish_subtitles(&staging, &plan, subtitles, probe.duration, &mut written)?;
    let report = AudioTracksReport {
        version: proto::WIRE_VERSION,
        packets: 0,
        start: 0.0,
        end: 0.0,
        sample_rate: 0,
        tracks: Vec::new(),
        subtitles,
        skipped_subtitles,
        checksums: staging.checksums(&written)?,
    };
    files::write_json(&staging.path(AUDIO_REPORT), &report)?;
    staging.commit(AUDIO_REPORT)?;
    Ok(report)
}

/// An extractor for each subtitle track the plan keeps, or why that track is
/// skipped (its decoder does not open).
fn subtitle_extractors(ictx: &format::context::Input, plan: &proto::plan::Plan) -> Result<Vec<Result<Extractor, String>>> {
    plan.subtitle_tracks
        .iter()
        .map(|t| match Extractor::new(ictx, t.stream) {
            Ok(x) => Ok(Ok(x)),
            Err(EngineError::BadInput(why)) => Ok(Err(why)),
            Err(e) => Err(e),
        })
        .collect()
}

/// Writes each extracted subtitle track as WebVTT and its playlist into
/// `staging`, adding their names to `written`. A track that could not be read
/// (over the cue limit, its decoder refused) is skipped with why, and costs
/// nothing else: the job keeps its pictures, its sound and its other tracks.
fn finish_subtitles(
    staging: &Staging,
    plan: &proto::plan::Plan,
    extracted: Vec<Result<Extractor, String>>,
    duration: f64,
    written: &mut Vec<String>,
) -> Result<(Vec<SubtitleTrackReport>, Vec<SkippedSubtitle>)> {
    let (mut reports, mut skipped) = (Vec::with_capacity(extracted.len()), Vec::new());
    for (t, x) in plan.subtitle_tracks.iter().zip(extracted) {
        match x.and_then(Extractor::finish) {
            Ok(cues) => {
                let (report, files) = write_subtitles(staging, t, cues, duration)?;
                reports.push(report);
                written.extend(files);
            }
            Err(reason) => skipped.push(SkippedSubtitle { stream: t.stream, codec: t.codec.clone(), language: t.language.clone(), reason }),
        }
    }
    Ok((reports, skipped))
}

/// One audio track's HLS, remuxed from its packets (`pkts`) without re-encoding:
/// checked to span the source (`source_duration`; its track's longest decoded
/// frame lasts `source_frame` seconds), cut into segments of `gop_seconds` fragments.
fn package_track(
    staging: &Staging,
    profile: &Profile,
    t: &PlannedTrack,
    pkts: &Path,
    (source_duration, source_frame): (f64, f64),
) -> Result<(AudioTrackReport, Vec<String>)> {
    let mut reader = packets::Reader::open(pkts).ctx(|| format!("reading {}", pkts.display()))?;
    let mut mux = Muxers::open(None, &staging.path(FRAGMENTED), &profile.video)?;
    mux.add_stream(&reader.header, Track::Audio)?;
    mux.start()?;
    let mut end = 0i64;
    while let Some(r) = reader.next_record().ctx(|| format!("reading {}", pkts.display()))? {
        end = end.max(r.pts + r.duration);
        mux.write(Track::Audio, &mut record_packet(&r))?;
    }
    mux.finish()?;
    let tb = reader.header.time_base;
    let duration = end as f64 * f64::from(tb.0) / f64::from(tb.1.max(1));
    // The end within one frame of the source's track (whose last one libav decodes
    // whole where the container says nothing of its padding: 128 ms at 8 kHz),
    // one AAC frame of the encoder's, and a little for the container's rounding.
    let slack = source_frame.max(0.03) + 1024.0 / f64::from(t.audio.sample_rate) + 0.02;
    if (duration - source_duration).abs() > slack {
        return Err(EngineError::internal(
            "verifying the output",
            format!("audio track {} ends at {duration:.3} s, the source at {source_duration:.3} s", t.name),
        ));
    }
    let hls = cut_hls(staging, &mux, &t.name, source_duration, false)?;
    let (average_bitrate, peak_bitrate) = bitrates(&hls.segments, source_duration);
    let names = HlsNames(&t.name);
    let report = AudioTrackReport {
        name: t.name.clone(),
        stream: t.stream,
        language: t.language.clone(),
        label: t.label.clone(),
        default: t.default,
        duration: (duration * 1e6).round() / 1e6,
        average_bitrate,
        peak_bitrate,
        codecs: AAC_CODECS.to_string(),
        audio: AudioReport {
            encoder: "aac".into(),
            bitrate: t.audio.bitrate,
            channels: t.audio.channels,
            sample_rate: t.audio.sample_rate,
        },
        segment_count: hls.segments.len(),
        timeline: hls.timeline,
        files: BTreeMap::from([("hls_playlist".to_string(), names.playlist()), ("hls_init".to_string(), names.init())]),
    };
    Ok((report, hls.files))
}

/// A chunk's report, from its packets as they were written.
pub fn chunk_report(path: &Path, index: u32, rendition: &str) -> Result<ChunkReport> {
    use sha2::Digest;
    let mut reader = packets::Reader::open(path).ctx(|| format!("reading {}", path.display()))?;
    let extradata = hex::decode(&reader.header.extradata).map_err(|e| EngineError::internal("reading a packet file", e))?;
    let mut report = ChunkReport {
        version: proto::WIRE_VERSION,
        index,
        rendition: rendition.to_string(),
        frames: 0,
        first_pts: None,
        first_key: false,
        keyframes: Vec::new(),
        dts_increasing: true,
        extradata_sha256: hex::encode(sha2::Sha256::digest(&extradata)),
        bytes: 0,
        quality: None,
    };
    let mut last_dts = None;
    while let Some(p) = reader.next_record().ctx(|| format!("reading {}", path.display()))? {
        if report.frames == 0 {
            (report.first_pts, report.first_key) = (Some(p.pts), p.key);
        }
        if p.key {
            report.keyframes.push(p.pts);
        }
        if last_dts.is_some_and(|d| p.dts <= d) {
            report.dts_increasing = false;
        }
        last_dts = Some(p.dts);
        report.frames += 1;
        report.bytes += p.data.len() as u64;
    }
    Ok(report)
}

/// A planned video's frame rate, `num/den`.
pub(crate) fn frame_rate(pv: &PlannedVideo) -> (i32, i32) {
    pv.frame_rate.split_once('/').and_then(|(n, d)| Some((n.parse::<i32>().ok()?, d.parse::<i32>().ok()?))).expect("planner writes num/den")
}

pub(crate) fn progressive_name(r: &PlannedRendition) -> String {
    format!("{}.mp4", r.name)
}

/// Cuts HLS from the fragmented file, indexes the MP4, verifies both and writes the report.
/// What packaging needs to know of a rendition's video: the frames muxed, and
/// how they were encoded (for the report).
pub(crate) struct VideoFacts {
    pub fps: Rational,
    pub frames: u64,
    pub codecs: String,
    pub encoder_name: String,
    pub options: BTreeMap<String, String>,
    pub gop_frames: u32,
    /// What the quality is made from, if it was measured.
    pub quality: Option<QualitySums>,
}

impl VideoOut {
    /// The facts of a finished encode (its quality meter is used up here).
    fn facts(&mut self, r: &PlannedRendition) -> Result<VideoFacts> {
        Ok(VideoFacts {
            fps: self.fps,
            frames: self.frames,
            codecs: self.codecs_string(r.width, r.height, f64::from(self.fps)),
            encoder_name: self.encoder_name.clone(),
            options: self.options.clone(),
            gop_frames: self.gop_frames,
            quality: self.meter.take().map(Meter::finish).transpose()?,
        })
    }
}

pub(crate) fn package(
    staging: &Staging,
    r: &PlannedRendition,
    progressive: &str,
    video: Option<&VideoFacts>,
    audio: Option<&PlannedAudio>,
    mux: &Muxers,
    source_duration: f64,
) -> Result<RenditionReport> {
    let fps = video.map_or(0.0, |v| f64::from(v.fps));
    let scan = verify::scan(&staging.path(progressive))?;
    let expected_end = video.map_or(source_duration, |v| v.frames as f64 / fps);
    let tolerance = if fps > 0.0 { 2.0 / fps } else { 0.05 } + 0.03;
    let mut problems = Vec::new();
    if let Some(v) = video {
        if scan.video_frames != v.frames {
            problems.push(format!("MP4 holds {} video frames, {} were encoded", scan.video_frames, v.frames));
        }
        let expected_frames = (source_duration * fps).round();
        if (scan.video_frames as f64 - expected_frames).abs() > 2.0 {
            problems.push(format!("{} frames for a {source_duration:.3} s source at {fps:.3} fps", scan.video_frames));
        }
    }
    if (scan.duration - source_duration).abs() > tolerance {
        problems.push(format!("MP4 lasts {:.3} s, the source {source_duration:.3} s", scan.duration));
    }
    if scan.has_audio != audio.is_some() || scan.has_video != video.is_some() {
        problems.push("MP4 tracks do not match the plan".into());
    }
    if !problems.is_empty() {
        return Err(EngineError::internal("verifying the output", problems.join("; ")));
    }

    let Hls { segments, timeline, iframes, files } = cut_hls(staging, mux, "", expected_end, video.is_some())?;
    let mut written = vec![progressive.to_string()];
    written.extend(files);

    let mut roles = BTreeMap::from([
        ("progressive".to_string(), progressive.to_string()),
        ("hls_playlist".into(), PLAYLIST.into()),
        ("hls_init".into(), INIT.into()),
    ]);
    if video.is_some() {
        std::fs::write(staging.path(IFRAMES), fmp4::iframe_playlist(INIT, &iframes)).ctx(|| "writing the I-frame playlist".into())?;
        let index = KeyframeIndex { file: progressive.to_string(), keyframes: scan.keyframes.clone() };
        files::write_json(&staging.path(KEYFRAMES), &index)?;
        written.extend([IFRAMES.to_string(), KEYFRAMES.to_string()]);
        roles.insert("iframe_playlist".into(), IFRAMES.into());
        roles.insert("keyframe_index".into(), KEYFRAMES.into());
        let kf_times: Vec<f64> = scan.keyframes.iter().map(|k| k.time).collect();
        let planned: Vec<f64> = mux.fragment_times.iter().map(|t| (t * 1e6).round() / 1e6).collect();
        if kf_times.len() != planned.len() || kf_times.iter().zip(&planned).any(|(a, b)| (a - b).abs() > 1e-3) {
            return Err(EngineError::internal("verifying keyframes", format!("MP4 keyframes at {kf_times:?}, forced at {planned:?}")));
        }
    }

    let (average_bitrate, peak_bitrate) = bitrates(&segments, expected_end);
    // The HLS playlist's codecs: with video, its video alone (audio is the job's group).
    let codecs = match video {
        Some(v) => v.codecs.clone(),
        None => AAC_CODECS.to_string(),
    };
    let checksums = staging.checksums(&written)?;
    let report = RenditionReport {
        version: proto::WIRE_VERSION,
        name: r.name.clone(),
        width: r.width,
        height: r.height,
        duration: (scan.duration * 1e6).round() / 1e6,
        frame_count: scan.video_frames,
        frame_rate: (fps * 1000.0).round() / 1000.0,
        average_bitrate,
        peak_bitrate,
        codecs,
        video: video.map(|v| VideoReport { encoder: v.encoder_name.clone(), encoder_options: v.options.clone(), gop_frames: v.gop_frames }),
        audio: audio.map(|a| AudioReport { encoder: "aac".into(), bitrate: a.bitrate, channels: a.channels, sample_rate: a.sample_rate }),
        keyframe_times: scan.keyframes.iter().map(|k| k.time).collect(),
        segment_count: segments.len(),
        timeline,
        quality: video.and_then(|v| v.quality.as_ref()).map(|q| q.report(crate::quality::vmaf_note())),
        files: roles,
        checksums,
    };
    files::write_json(&staging.path(REPORT), &report)?;
    Ok(report)
}

/// RFC 6381 codecs of AAC-LC.
pub const AAC_CODECS: &str = "mp4a.40.2";

/// A rendition's or track's HLS, cut from its fragmented file.
struct Hls {
    segments: Vec<fmp4::Segment>,
    /// The segments' times for DASH, when the file gave its timescale.
    timeline: Option<proto::report::Timeline>,
    iframes: Vec<fmp4::IFrame>,
    /// The files written: the init segment, the media segments, the playlist.
    files: Vec<String>,
}

/// The file names of an HLS stream whose files start with `prefix`: a rendition's
/// own directory has none (`init.mp4`, `seg_00000.m4s`, `playlist.m3u8`); an audio
/// track's files share the job's audio directory (`a0.init.mp4`, `a0.00000.m4s`, `a0.m3u8`).
struct HlsNames<'a>(&'a str);

impl HlsNames<'_> {
    fn init(&self) -> String {
        if self.0.is_empty() { INIT.to_string() } else { format!("{}.{INIT}", self.0) }
    }

    fn playlist(&self) -> String {
        if self.0.is_empty() { PLAYLIST.to_string() } else { format!("{}.m3u8", self.0) }
    }

    fn segment(&self, i: usize) -> String {
        if self.0.is_empty() { format!("seg_{i:05}.m4s") } else { format!("{}.{i:05}.m4s", self.0) }
    }
}

/// Cuts HLS from the fragmented file (then removed): one fragment per GOP (or per
/// gop_seconds of audio), whole fragments per segment; with video, the I-frame
/// entries too.
fn cut_hls(staging: &Staging, mux: &Muxers, prefix: &str, expected_end: f64, video: bool) -> Result<Hls> {
    let names = HlsNames(prefix);
    let (init, playlist) = (names.init(), names.playlist());
    let frag_path = staging.path(FRAGMENTED);
    let layout = fmp4::layout_file(&frag_path, 1).ctx(|| "reading the fragmented MP4".into())?;
    if layout.fragments.len() != mux.fragment_times.len() {
        return Err(EngineError::internal(
            "cutting HLS",
            format!("{} fragments for {} GOPs", layout.fragments.len(), mux.fragment_times.len()),
        ));
    }
    let seg_target = mux.segment_seconds;
    let mut src = std::fs::File::open(&frag_path).ctx(|| "opening the fragmented MP4".into())?;
    copy_range(&mut src, layout.init, &staging.path(&init))?;
    let mut segments = Vec::new();
    let mut iframes = Vec::new();
    let mut files = vec![init.clone()];
    for (i, (frags, seg_start, duration)) in fmp4::group(&mux.fragment_times, expected_end, seg_target).into_iter().enumerate() {
        let file = names.segment(i);
        let first = &layout.fragments[frags.start];
        let last = &layout.fragments[frags.end - 1];
        let bytes = copy_range(&mut src, (first.moof.0, last.mdat.1), &staging.path(&file))?;
        if video {
            for j in frags.clone() {
                let f = &layout.fragments[j];
                let next = mux.fragment_times.get(j + 1).copied().unwrap_or(expected_end);
                iframes.push(fmp4::IFrame {
                    file: file.clone(),
                    duration: next - mux.fragment_times[j],
                    offset: f.moof.0 - first.moof.0,
                    length: f.first_sample.1 - f.moof.0,
                });
            }
        }
        files.push(file.clone());
        let (time, ticks) = (first.earliest_presentation, layout.fragments[frags.clone()].iter().map(|f| f.duration).sum());
        segments.push(fmp4::Segment { file, fragments: frags, start: seg_start, duration, bytes, time, ticks });
    }
    drop(src);
    std::fs::remove_file(&frag_path).ctx(|| "removing the fragmented MP4".into())?;
    if let Some(s) = segments.iter().find(|s| s.duration > seg_target + 0.5 && s.fragments.len() > 1) {
        return Err(EngineError::internal("cutting HLS", format!("segment {} lasts {:.3} s", s.file, s.duration)));
    }
    std::fs::write(staging.path(&playlist), fmp4::media_playlist(&init, &segments)).ctx(|| "writing the playlist".into())?;
    files.push(playlist);
    let timeline = (layout.timescale > 0)
        .then(|| proto::report::Timeline { timescale: layout.timescale, segments: segments.iter().map(|s| (s.time, s.ticks)).collect() });
    Ok(Hls { segments, timeline, iframes, files })
}

/// Average and peak (HLS `BANDWIDTH`: the largest segment's) bits per second.
fn bitrates(segments: &[fmp4::Segment], duration: f64) -> (u64, u64) {
    let total_bytes: u64 = segments.iter().map(|s| s.bytes).sum();
    let average = (total_bytes as f64 * 8.0 / duration.max(1e-3)) as u64;
    let peak = segments.iter().map(|s| (s.bytes as f64 * 8.0 / s.duration.max(0.1)) as u64).max().unwrap_or(0).max(average);
    (average, peak)
}

/// Copies `range` of `src` into a new file, returning the byte count.
fn copy_range(src: &mut std::fs::File, range: (u64, u64), dst: &Path) -> Result<u64> {
    src.seek(SeekFrom::Start(range.0)).ctx(|| "seeking the fragmented MP4".into())?;
    let mut out = std::fs::File::create(dst).ctx(|| format!("creating {}", dst.display()))?;
    let n = std::io::copy(&mut src.take(range.1 - range.0), &mut out).ctx(|| format!("writing {}", dst.display()))?;
    out.flush().ctx(|| format!("writing {}", dst.display()))?;
    Ok(n)
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Track {
    Video,
    Audio,
}

/// Where a rendition's encoded packets go: the muxers of a whole encode (a
/// fast-start MP4 and the fragmented MP4 HLS is cut from; an audio track has no
/// MP4), or (a chunk, or a job's audio) a packet file for the join.
enum Sink {
    Files { mp4: Option<format::context::Output>, frag: format::context::Output },
    Packets { path: std::path::PathBuf, writer: Option<packets::Writer> },
}

/// Where one track's packets go: its stream in the MP4 and in the fragmented
/// file (`None`: not in it), and the time base packets come in.
#[derive(Clone, Copy)]
struct Route {
    mp4: Option<usize>,
    frag: Option<usize>,
    tb: Rational,
}

/// Audio encoded before (the job's audio task), muxed into the MP4 in step with
/// the video: before each video packet, every audio packet due by its decode time.
struct AudioFeed {
    reader: packets::Reader,
    next: Option<packets::Record>,
    /// The end of the last audio packet written, in seconds.
    end: f64,
}

/// The sink every encoded packet of one rendition goes to, and the fragment bookkeeping.
/// With video, the fragmented file (HLS) is video-only: audio goes to the MP4
/// alone (a player takes it from the job's audio group).
pub(crate) struct Muxers {
    sink: Sink,
    video: Option<Route>,
    audio: Option<Route>,
    audio_feed: Option<AudioFeed>,
    gop_seconds: f64,
    segment_seconds: f64,
    /// Start time of every fragment (= every keyframe for video).
    fragment_times: Vec<f64>,
    next_audio_fragment: f64,
    out_time: f64,
}

impl Muxers {
    /// A fast-start MP4 at `mp4` (none for an audio track) and the fragmented file at `frag`.
    pub(crate) fn open(mp4: Option<&Path>, frag: &Path, settings: &proto::profile::VideoSettings) -> Result<Muxers> {
        let sink = Sink::Files {
            mp4: mp4.map(|p| format::output_as(&p, "mp4").ctx(|| format!("creating {}", p.display()))).transpose()?,
            frag: format::output_as(&frag, "mp4").ctx(|| format!("creating {}", frag.display()))?,
        };
        Ok(Muxers::with(sink, settings))
    }

    /// Packets into a packet file at `path`, for one track.
    fn packets(path: &Path, settings: &proto::profile::VideoSettings) -> Muxers {
        Muxers::with(Sink::Packets { path: path.to_path_buf(), writer: None }, settings)
    }

    fn with(sink: Sink, settings: &proto::profile::VideoSettings) -> Muxers {
        Muxers {
            sink,
            video: None,
            audio: None,
            audio_feed: None,
            gop_seconds: settings.gop_seconds,
            segment_seconds: settings.segment_seconds,
            fragment_times: Vec::new(),
            next_audio_fragment: 0.0,
            out_time: 0.0,
        }
    }

    /// Whether codec headers go out of band (MP4's avcC; the join writes MP4 too).
    fn needs_global_header(&self) -> bool {
        match &self.sink {
            Sink::Files { mp4, frag } => mp4.as_ref().unwrap_or(frag).format().flags().contains(format::Flags::GLOBAL_HEADER),
            Sink::Packets { .. } => true,
        }
    }

    /// The outputs a track is muxed into: the MP4 always; the fragmented file
    /// unless it is audio beside video (tracks are added video first).
    fn outputs(&mut self, track: Track) -> Vec<(bool, &mut format::context::Output)> {
        let audio_beside_video = track == Track::Audio && self.video.is_some();
        match &mut self.sink {
            Sink::Files { mp4, frag } => {
                let mut outs: Vec<(bool, &mut format::context::Output)> = mp4.iter_mut().map(|m| (true, m)).collect();
                if !audio_beside_video {
                    outs.push((false, frag));
                }
                outs
            }
            Sink::Packets { .. } => Vec::new(),
        }
    }

    fn set_route(&mut self, track: Track, route: Route) {
        match track {
            Track::Video => self.video = Some(route),
            Track::Audio => self.audio = Some(route),
        }
    }

    fn add<E: ff::codec::traits::Encoder + Copy, C: AsRef<ff::codec::Context>>(
        &mut self,
        codec: E,
        enc: &C,
        tb: Rational,
        track: Track,
    ) -> Result<()> {
        let mut route = Route { mp4: None, frag: None, tb };
        if let Sink::Packets { path, writer } = &mut self.sink {
            if writer.is_some() {
                return Err(EngineError::internal("writing packets", "a packet file holds one track"));
            }
            let header = stream_header(enc.as_ref(), tb);
            *writer = Some(packets::Writer::create(path, &header).ctx(|| format!("creating {}", path.display()))?);
        }
        for (is_mp4, octx) in self.outputs(track) {
            let mut ost = octx.add_stream(codec).ctx(|| "adding an output stream".into())?;
            ost.set_parameters(enc);
            ost.set_time_base(tb);
            *(if is_mp4 { &mut route.mp4 } else { &mut route.frag }) = Some(ost.index());
        }
        self.set_route(track, route);
        Ok(())
    }

    /// Muxes audio encoded before (a packet file) into the MP4, in step with the
    /// video written after this; call once the video track is added.
    pub(crate) fn add_audio_packets(&mut self, mut reader: packets::Reader) -> Result<()> {
        self.add_stream(&reader.header.clone(), Track::Audio)?;
        let next = reader.next_record().ctx(|| "reading the audio packets".into())?;
        self.audio_feed = Some(AudioFeed { reader, next, end: 0.0 });
        Ok(())
    }

    /// Where the audio fed from packets ends (seconds), if it was.
    pub(crate) fn fed_audio_end(&self) -> Option<f64> {
        self.audio_feed.as_ref().map(|f| f.end)
    }

    /// Writes the fed audio packets due by `until` seconds (decode time); all with `None`.
    fn feed_audio(&mut self, until: Option<f64>) -> Result<()> {
        let Some(tb) = self.audio.map(|r| r.tb) else { return Ok(()) };
        loop {
            let Some(feed) = self.audio_feed.as_mut() else { return Ok(()) };
            let due = feed.next.as_ref().is_some_and(|a| until.is_none_or(|t| a.dts as f64 * f64::from(tb) <= t));
            if !due {
                return Ok(());
            }
            let a = feed.next.take().expect("a due packet");
            feed.end = feed.end.max((a.pts + a.duration) as f64 * f64::from(tb));
            feed.next = feed.reader.next_record().ctx(|| "reading the audio packets".into())?;
            self.write(Track::Audio, &mut record_packet(&a))?;
        }
    }

    /// Declares a track from a packet file's header (the join: no encoder here).
    pub(crate) fn add_stream(&mut self, h: &packets::StreamHeader, track: Track) -> Result<()> {
        let extradata = hex::decode(&h.extradata).map_err(|e| EngineError::internal("reading a packet file", e))?;
        let name = std::ffi::CString::new(h.codec.as_str()).map_err(|e| EngineError::internal("reading a packet file", e))?;
        let mut params = codec::Parameters::new();
        // SAFETY: a fresh parameters struct we own; extradata is allocated with
        // libav's allocator (padded, as libav requires) and freed with the struct.
        unsafe {
            let desc = ff::ffi::avcodec_descriptor_get_by_name(name.as_ptr());
            if desc.is_null() {
                return Err(EngineError::internal("joining", format!("unknown codec {}", h.codec)));
            }
            let p = &mut *params.as_mut_ptr();
            p.codec_id = (*desc).id;
            p.codec_type = (*desc).type_;
            p.bit_rate = h.bit_rate;
            match track {
                Track::Video => {
                    p.width = h.width as i32;
                    p.height = h.height as i32;
                    p.format = ff::ffi::AVPixelFormat::AV_PIX_FMT_YUV420P as i32;
                    p.sample_aspect_ratio = ff::ffi::AVRational { num: 1, den: 1 };
                    p.video_delay = h.video_delay;
                }
                Track::Audio => {
                    p.sample_rate = h.sample_rate as i32;
                    ff::ffi::av_channel_layout_default(&mut p.ch_layout, h.channels as i32);
                    p.format = ff::ffi::AVSampleFormat::AV_SAMPLE_FMT_FLTP as i32;
                    p.frame_size = h.frame_size;
                    p.initial_padding = h.initial_padding;
                }
            }
            let pad = ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
            let buf = ff::ffi::av_mallocz(extradata.len() + pad) as *mut u8;
            if buf.is_null() {
                return Err(EngineError::internal("joining", "out of memory"));
            }
            std::ptr::copy_nonoverlapping(extradata.as_ptr(), buf, extradata.len());
            p.extradata = buf;
            p.extradata_size = extradata.len() as i32;
        }
        let tb = Rational(h.time_base.0, h.time_base.1);
        if matches!(self.sink, Sink::Packets { .. }) {
            return Err(EngineError::internal("joining", "a join writes MP4"));
        }
        let mut route = Route { mp4: None, frag: None, tb };
        for (is_mp4, octx) in self.outputs(track) {
            let mut ost = octx.add_stream(Option::<ff::Codec>::None).ctx(|| "adding an output stream".into())?;
            ost.set_parameters(params.clone());
            ost.set_time_base(tb);
            *(if is_mp4 { &mut route.mp4 } else { &mut route.frag }) = Some(ost.index());
        }
        self.set_route(track, route);
        Ok(())
    }

    pub(crate) fn start(&mut self) -> Result<()> {
        let Sink::Files { mp4, frag } = &mut self.sink else {
            return Ok(());
        };
        if let Some(mp4) = mp4 {
            let mut o = Dictionary::new();
            o.set("movflags", "+faststart");
            mp4.write_header_with(o).ctx(|| "writing the MP4 header".into())?;
        }
        let mut o = Dictionary::new();
        // One fragment per GOP, cut by us (frag_custom) right before each keyframe, with
        // sample offsets relative to each moof so fragments can be split into files.
        // delay_moov writes the moov at the first cut, once samples exist, so its edit
        // list accounts for B-frame delay and HLS timestamps start at 0 like the MP4's.
        o.set("movflags", "+frag_custom+delay_moov+default_base_moof+skip_trailer");
        frag.write_header_with(o).ctx(|| "writing the fMP4 header".into())?;
        Ok(())
    }

    pub(crate) fn write(&mut self, track: Track, pkt: &mut Packet) -> Result<()> {
        let route = match track {
            Track::Video => self.video,
            Track::Audio => self.audio,
        }
        .expect("a packet for a track that was added");
        let tb = route.tb;
        if track == Track::Video && self.audio_feed.is_some() {
            self.feed_audio(Some(pkt.dts().or(pkt.pts()).unwrap_or(0) as f64 * f64::from(tb)))?;
        }
        let secs = pkt.pts().map_or(0.0, |p| p as f64 * f64::from(tb));
        self.out_time = self.out_time.max(secs);
        let (mp4, frag) = match &mut self.sink {
            Sink::Files { mp4, frag } => (mp4, frag),
            Sink::Packets { writer, path } => {
                let w = writer.as_mut().expect("a packet for a track that was added");
                let (pts, dts) = (pkt.pts().unwrap_or(0), pkt.dts().or(pkt.pts()).unwrap_or(0));
                return w
                    .write(pts, dts, pkt.duration(), pkt.is_key(), pkt.data().unwrap_or_default())
                    .ctx(|| format!("writing {}", path.display()));
            }
        };
        let fragment_starts = match track {
            Track::Video => pkt.is_key(),
            Track::Audio => route.frag.is_some() && secs + 1e-6 >= self.next_audio_fragment,
        };
        if fragment_starts {
            // Packets written before the first fragment start (audio that the
            // encoder delivered ahead of the first video frame) join fragment 0.
            if !self.fragment_times.is_empty() {
                // With delay_moov the first cut only writes the moov; cut again.
                let first_cut = self.fragment_times.len() == 1;
                av::flush_fragment(frag)?;
                if first_cut {
                    av::flush_fragment(frag)?;
                }
            }
            self.fragment_times.push((secs * 1e6).round() / 1e6);
            if track == Track::Audio {
                while self.next_audio_fragment <= secs + 1e-6 {
                    self.next_audio_fragment += self.gop_seconds;
                }
            }
        }
        if let Some(fi) = route.frag {
            let mut copy = pkt.clone();
            copy.set_stream(fi);
            copy.rescale_ts(tb, frag.stream(fi).expect("stream").time_base());
            copy.write_interleaved(frag).ctx(|| "writing the fMP4".into())?;
        }
        if let (Some(mi), Some(mp4)) = (route.mp4, mp4.as_mut()) {
            pkt.set_stream(mi);
            pkt.rescale_ts(tb, mp4.stream(mi).expect("stream").time_base());
            pkt.write_interleaved(mp4).ctx(|| "writing the MP4".into())?;
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> Result<()> {
        self.feed_audio(None)?;
        match &mut self.sink {
            Sink::Files { mp4, frag } => {
                if let Some(mp4) = mp4 {
                    mp4.write_trailer().ctx(|| "finishing the MP4".into())?;
                }
                frag.write_trailer().ctx(|| "finishing the fMP4".into())?;
            }
            Sink::Packets { path, writer } => {
                if let Some(w) = writer.take() {
                    w.finish().ctx(|| format!("writing {}", path.display()))?;
                }
            }
        }
        Ok(())
    }
}

/// A packet file's record as a libav packet.
pub(crate) fn record_packet(r: &packets::Record) -> Packet {
    let mut p = Packet::copy(&r.data);
    p.set_pts(Some(r.pts));
    p.set_dts(Some(r.dts));
    p.set_duration(r.duration);
    if r.key {
        p.set_flags(ff::packet::Flags::KEY);
    }
    p
}

/// The codec's out-of-band headers (H.264's SPS and PPS, AAC's AudioSpecificConfig).
fn extradata(ctx: &ff::codec::Context) -> &[u8] {
    // SAFETY: extradata is owned by the codec context for its lifetime.
    unsafe {
        let c = &*ctx.as_ptr();
        if c.extradata.is_null() { &[][..] } else { std::slice::from_raw_parts(c.extradata, c.extradata_size as usize) }
    }
}

/// What a packet file says about its stream, from the open encoder.
fn stream_header(ctx: &ff::codec::Context, tb: Rational) -> packets::StreamHeader {
    // SAFETY: plain fields of the open encoder context.
    let c = unsafe { &*ctx.as_ptr() };
    packets::StreamHeader {
        codec: av::codec_name(ctx.id().into()),
        time_base: (tb.numerator(), tb.denominator()),
        width: c.width.max(0) as u32,
        height: c.height.max(0) as u32,
        sample_rate: c.sample_rate.max(0) as u32,
        channels: c.ch_layout.nb_channels.max(0) as u32,
        extradata: hex::encode(extradata(ctx)),
        bit_rate: c.bit_rate,
        frame_size: c.frame_size,
        initial_padding: c.initial_padding,
        video_delay: c.has_b_frames,
    }
}

/// Drains an encoder into the muxers, showing each packet to the quality meter.
fn drain_encoder(enc: &mut encoder::Encoder, track: Track, mux: &mut Muxers, mut meter: Option<&mut Meter>) -> Result<()> {
    // Encoder time bases are 1/fps (video) and 1/sample_rate (AAC frames of 1024).
    let frame_duration = match track {
        Track::Video => 1,
        Track::Audio => 1024,
    };
    let mut pkt = Packet::empty();
    loop {
        match enc.receive_packet(&mut pkt) {
            Ok(()) => {}
            Err(ff::Error::Eof) => return Ok(()),
            Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => return Ok(()),
            Err(e) => return Err(EngineError::internal("encoding", e)),
        }
        if pkt.duration() == 0 {
            pkt.set_duration(frame_duration);
        }
        if let Some(m) = meter.as_deref_mut() {
            m.packet(&pkt)?;
        }
        mux.write(track, &mut pkt)?;
    }
}

/// Decoder-side state shared by the video and audio pipes.
struct Flow {
    in_tb: Rational,
    /// Container start time (seconds); outputs are shifted to start at 0.
    start: f64,
    /// End of the last decoded frame, seconds from the source's start.
    decoded_end: f64,
    /// The same, in the input time base, for closing the filter graph; `None`
    /// until a frame with a timestamp is decoded.
    end_ts: Option<i64>,
}

impl Flow {
    fn new(in_tb: Rational, start: f64) -> Flow {
        Flow { in_tb, start, decoded_end: 0.0, end_ts: None }
    }
}

/// One elementary stream's path: a decoder, then per rendition a filter graph,
/// an encoder and that rendition's muxers. The feed loop is shared; each kind
/// supplies its frame type, graph and encoding step.
trait Pipe {
    type Frame: std::ops::DerefMut<Target = ff::Frame>;
    const TRACK: Track;

    fn parts(&mut self) -> (&mut decoder::Opened, &mut Flow);
    /// Rendition `k`'s filter graph, built from the first decoded frame (and again
    /// from a frame it does not `fit`).
    fn graph(&mut self, k: usize) -> &mut Option<filter::Graph>;
    fn encoder(&mut self, k: usize) -> &mut encoder::Encoder;
    /// Drains rendition `k`'s encoder into its muxers.
    fn drain(&mut self, k: usize, mux: &mut Muxers) -> Result<()> {
        drain_encoder(self.encoder(k), Self::TRACK, mux, None)
    }
    /// Duration of a decoded frame in the input time base.
    fn frame_duration(&self, f: &Self::Frame) -> i64;
    fn build_graph(&mut self, k: usize, f: &Self::Frame) -> Result<filter::Graph>;
    /// Whether rendition `k`'s graph takes frames shaped like `f`; when not, it is
    /// built again for `f`.
    fn fits(&self, _k: usize, _f: &Self::Frame) -> bool {
        true
    }
    /// Takes rendition `k`'s filtered frames out of its graph and encodes them.
    fn pull(&mut self, k: usize, mux: &mut Muxers) -> Result<()>;
    fn decoded(&mut self, _f: &Self::Frame) {}
    /// Takes a decoded, timed frame: true sends `f` on (which may now be another
    /// frame the pipe held back); false holds it for now (see `AudioPipe::until`).
    fn clip(&mut self, _f: &mut Self::Frame) -> bool {
        true
    }
    /// Where the filters are closed at the end, in the input time base, given
    /// where the last decoded frame ends.
    fn close_at(&self, end_ts: i64) -> i64 {
        end_ts
    }
    fn empty_frame() -> Self::Frame;
    /// The next frame of what is encoded after the stream's last frame, or in
    /// place of a stream that decoded nothing, up to where it must end, in the
    /// input time base; `None` past that end (and for a stream that is not padded).
    fn tail(&mut self) -> Option<Self::Frame> {
        None
    }

    fn label() -> &'static str {
        match Self::TRACK {
            Track::Video => "video",
            Track::Audio => "audio",
        }
    }

    /// Sends a timed frame through every rendition's filters and encoder.
    fn filter(&mut self, f: &Self::Frame, muxes: &mut [Muxers]) -> Result<()> {
        let ts = f.pts().expect("frames are timed before filtering");
        self.decoded(f);
        let end_ts = ts + self.frame_duration(f);
        let flow = self.parts().1;
        flow.end_ts = Some(flow.end_ts.map_or(end_ts, |e| e.max(end_ts)));
        flow.decoded_end = flow.decoded_end.max(end_ts as f64 * f64::from(flow.in_tb) - flow.start);
        for (k, mux) in muxes.iter_mut().enumerate() {
            if self.graph(k).is_some() && !self.fits(k, f) {
                *self.graph(k) = None;
            }
            if self.graph(k).is_none() {
                let g = self.build_graph(k, f)?;
                *self.graph(k) = Some(g);
            }
            let g = self.graph(k).as_mut().expect("built above");
            av::add_frame(g, f).ctx(|| format!("filtering {}", Self::label()))?;
            self.pull(k, mux)?;
        }
        Ok(())
    }

    /// Feeds one packet (or, with `None`, the end of stream) through the decoder,
    /// then every rendition's filters and encoder.
    fn feed(&mut self, pkt: Option<&Packet>, muxes: &mut [Muxers]) -> Result<()> {
        let label = Self::label();
        let decoding_failed = |e| EngineError::bad(format!("{label} decoding failed: {e}"));
        match pkt {
            Some(p) => match self.parts().0.send_packet(p) {
                Ok(()) | Err(ff::Error::InvalidData) => {}
                Err(e) => return Err(decoding_failed(e)),
            },
            None => {
                let _ = self.parts().0.send_eof();
            }
        }
        let mut f = Self::empty_frame();
        loop {
            match self.parts().0.receive_frame(&mut f) {
                Ok(()) => {}
                Err(ff::Error::Eof) => break,
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => break,
                Err(ff::Error::InvalidData) => continue,
                Err(e) => return Err(decoding_failed(e)),
            }
            // A frame libav cannot time (no timestamp in its packet nor a guess,
            // as the last frame of an MPEG program stream can be) follows the one
            // before; one before any timed frame is dropped. Filters never see an
            // untimed frame: `fps` with a start time (a chunk's) would put it hours
            // away and fill the gap with copies.
            let Some(ts) = f.timestamp().or(self.parts().1.end_ts) else { continue };
            f.set_pts(Some(ts));
            if self.clip(&mut f) {
                self.filter(&f, muxes)?;
            }
        }
        if pkt.is_none() {
            while let Some(f) = self.tail() {
                self.filter(&f, muxes)?;
            }
        }
        if pkt.is_none() {
            let last_end = self.parts().1.end_ts.unwrap_or(0);
            let end_ts = self.close_at(last_end);
            let flow = self.parts().1;
            flow.decoded_end = flow.decoded_end.max(end_ts as f64 * f64::from(flow.in_tb) - flow.start);
            for (k, mux) in muxes.iter_mut().enumerate() {
                if let Some(g) = self.graph(k).as_mut() {
                    // Closing at the last frame's end (not its start) lets `fps` keep that frame.
                    g.get("in").expect("source").source().close(end_ts).ctx(|| format!("flushing {label} filters"))?;
                    self.pull(k, mux)?;
                }
                self.encoder(k).send_eof().ctx(|| format!("flushing the {label} encoder"))?;
                self.drain(k, mux)?;
            }
        }
        Ok(())
    }
}

/// The frames a chunk encodes: from frame `first` of the job's grid, `count` of
/// them (`None`: to the source's end).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub first: u64,
    pub count: Option<u64>,
}

impl VideoPipe {
    /// The audio read ends at `audio_end` seconds of the source's timeline, which
    /// ends `duration` seconds after its start. A video that stops before the
    /// audio holds its last picture to there, at most to the source's end: the
    /// few frames by which a recording's or an edit's audio outlasts its video,
    /// as much as a still picture over a podcast's audio or a screen recording
    /// that stopped changing. So the video ends where the source does, as every
    /// rendition and each chunk plan it (a player stops where the first of video
    /// and audio runs out); the audio is padded likewise (`AudioPipe::tail`). A
    /// truncated file, whose audio stops too, is still one.
    fn hold_until(&mut self, audio_end: f64, duration: f64) {
        let end = audio_end.min(self.flow.start + duration);
        let end = (end / f64::from(self.flow.in_tb)).round() as i64;
        self.hold = Some(end).filter(|&e| e > 0);
    }

    /// True once every rendition has all of its chunk's frames.
    fn has_span(&self) -> bool {
        self.outs.iter().all(|o| o.span.count.is_some_and(|n| o.frames >= n))
    }
}

struct VideoPipe {
    index: usize,
    codec_id: ff::ffi::AVCodecID,
    decoder: decoder::Video,
    flow: Flow,
    /// Frames handed to the encoders (the same count for every rendition).
    frames: u64,
    outs: Vec<VideoOut>,
    /// Thumbnails made from the same frames; an error here stops only them.
    sheet: Option<Result<Collector>>,
    /// Where the source's audio ends, in the input time base (`hold_until`).
    hold: Option<i64>,
}

/// One rendition's video: filters, encoder and keyframe schedule.
struct VideoOut {
    graph: Option<filter::Graph>,
    /// Filters between the buffer source and sink, e.g. `fps=30,scale=640:360,...`.
    chain: String,
    encoder: encoder::Video,
    enc_tb: Rational,
    fps: Rational,
    encoder_name: String,
    options: BTreeMap<String, String>,
    gop_seconds: f64,
    gop_frames: u32,
    next_keyframe: f64,
    frames: u64,
    /// The frames to encode (all of them, unless this is a chunk).
    span: Span,
    codec: VideoCodec,
    meter: Option<Meter>,
}

impl VideoPipe {
    fn new(
        ictx: &format::context::Input,
        index: usize,
        rotation: u32,
        renditions: &[PlannedRendition],
        start: f64,
        span: Option<Span>,
        quality: bool,
        muxes: &mut [Muxers],
    ) -> Result<VideoPipe> {
        let ist = ictx.stream(index).expect("planned stream exists");
        let codec_id = av::params(&ist).codec_id;
        let decoder = av::video_decoder(&ist)?;
        let to_sdr = av::to_bt709(av::params(&ist));
        let colours = av::Colours::of(av::params(&ist), to_sdr.is_some());
        let mut outs = Vec::with_capacity(renditions.len());
        for (r, mux) in renditions.iter().zip(muxes) {
            let pv = r.video.as_ref().ok_or_else(|| EngineError::bad(format!("rendition {} has no video", r.name)))?;
            let look = Look { rotation, to_sdr: to_sdr.as_deref(), colours };
            outs.push(VideoOut::new(pv, r, look, start, span, quality, mux)?);
        }
        Ok(VideoPipe { index, codec_id, decoder, flow: Flow::new(ist.time_base(), start), frames: 0, outs, sheet: None, hold: None })
    }
}

/// How the source's pictures are turned to be shown as a player should: its
/// rotation, the filters that bring it to BT.709 if it is not (`av::to_bt709`),
/// and the colours its renditions say they have.
#[derive(Clone, Copy)]
struct Look<'a> {
    rotation: u32,
    to_sdr: Option<&'a str>,
    colours: av::Colours,
}

impl VideoOut {
    fn new(
        pv: &PlannedVideo,
        r: &PlannedRendition,
        look: Look,
        start: f64,
        span: Option<Span>,
        quality: bool,
        mux: &mut Muxers,
    ) -> Result<VideoOut> {
        let (num, den) = frame_rate(pv);
        let fps = Rational(num, den);
        let enc_tb = fps.invert();
        let gop_frames = (pv.gop_seconds * f64::from(fps)).round() as u32;
        // Forced keyframes land on the first frame at or after each mark, so a GOP is at
        // most ceil(gop * fps) frames; the encoder's own limit sits just above that.
        let keyint = (pv.gop_seconds * f64::from(fps)).ceil() as u32 + 1;
        let rotate = match look.rotation {
            90 => "transpose=clock,",
            180 => "hflip,vflip,",
            270 => "transpose=cclock,",
            _ => "",
        };
        // A chunk's grid starts at its first frame, whose time is exact in the
        // output time base; the frames before it are dropped here.
        let span = span.unwrap_or(Span { first: 0, count: None });
        let first_time = span.first as f64 * f64::from(den) / f64::from(num);
        // HDR is mapped to SDR after scaling, at the rendition's size, where it costs
        // least (its float maths is the dearest filter here by far).
        let to_sdr = look.to_sdr.map(|f| format!("{f},")).unwrap_or_default();
        let chain = format!(
            "setpts=PTS-{start:.6}/TB,fps=fps={num}/{den}:start_time={first_time:.9},{rotate}scale={w}:{h}:flags=bicubic,setsar=1,{to_sdr}format=yuv420p",
            w = r.width,
            h = r.height
        );

        let codec_name = pv.codec.encoder();
        let codec = encoder::find_by_name(codec_name)
            .ok_or_else(|| EngineError::internal("finding the encoder", format!("{codec_name} is not in this libav")))?;
        let mut ectx = codec::context::Context::new_with_codec(codec).encoder().video().ctx(|| "creating the video encoder".into())?;
        ectx.set_width(r.width);
        ectx.set_height(r.height);
        ectx.set_format(format::Pixel::YUV420P);
        ectx.set_time_base(enc_tb);
        ectx.set_frame_rate(Some(fps));
        ectx.set_aspect_ratio(Rational(1, 1));
        look.colours.tag(&mut ectx);
        let mut flags = codec::Flags::empty();
        if mux.needs_global_header() {
            flags |= codec::Flags::GLOBAL_HEADER;
        }
        if quality {
            // The encoder reports each frame's squared error per plane.
            flags |= codec::Flags::PSNR;
        }
        ectx.set_flags(flags);
        let options = encoder_options(pv, keyint);
        let mut dict = Dictionary::new();
        for (k, v) in &options {
            dict.set(k, v);
        }
        // The thread count is the machine's, not the rendition's: it stays out of
        // the recorded options, which chunks encoded on different machines share.
        if let Some(n) = av::encoder_threads(pv.codec) {
            dict.set("threads", &n.to_string());
        }
        let encoder = ectx.open_as_with(codec, dict).ctx(|| format!("opening {codec_name}"))?;
        mux.add(codec, &encoder, enc_tb, Track::Video)?;
        let meter = if quality { Some(Meter::new(&encoder)?) } else { None };
        Ok(VideoOut {
            graph: None,
            chain,
            encoder,
            enc_tb,
            fps,
            encoder_name: codec_name.to_string(),
            options,
            gop_seconds: pv.gop_seconds,
            gop_frames,
            next_keyframe: 0.0,
            frames: 0,
            span,
            codec: pv.codec,
            meter,
        })
    }

    /// RFC 6381 codecs string for this encoder's output.
    fn codecs_string(&self, width: u32, height: u32, fps: f64) -> String {
        match self.codec {
            VideoCodec::H264 => crate::codecs::avc1(extradata(&self.encoder)).unwrap_or_else(|| "avc1.640028".into()),
            VideoCodec::Vp9 => crate::codecs::vp09(width, height, fps),
        }
    }
}

impl Pipe for VideoPipe {
    type Frame = frame::Video;
    const TRACK: Track = Track::Video;

    fn parts(&mut self) -> (&mut decoder::Opened, &mut Flow) {
        (&mut self.decoder, &mut self.flow)
    }

    fn close_at(&self, end_ts: i64) -> i64 {
        match self.hold {
            Some(hold) if hold > end_ts => hold,
            _ => end_ts,
        }
    }

    fn graph(&mut self, k: usize) -> &mut Option<filter::Graph> {
        &mut self.outs[k].graph
    }

    fn encoder(&mut self, k: usize) -> &mut encoder::Encoder {
        &mut self.outs[k].encoder
    }

    fn drain(&mut self, k: usize, mux: &mut Muxers) -> Result<()> {
        let out = &mut self.outs[k];
        drain_encoder(&mut out.encoder, Track::Video, mux, out.meter.as_mut())
    }

    fn empty_frame() -> frame::Video {
        frame::Video::empty()
    }

    fn decoded(&mut self, f: &frame::Video) {
        if let (Some(Ok(sheet)), Some(ts)) = (&mut self.sheet, f.timestamp()) {
            let time = ts as f64 * f64::from(self.flow.in_tb) - self.flow.start;
            if let Err(e) = sheet.offer(time, f) {
                self.sheet = Some(Err(e));
            }
        }
    }

    fn frame_duration(&self, f: &frame::Video) -> i64 {
        // SAFETY: pkt_duration is a plain field of the decoded frame.
        let dur = unsafe { (*f.as_ptr()).pkt_duration };
        if dur > 0 { dur } else { 1i64.rescale(self.outs[0].fps.invert(), self.flow.in_tb).max(1) }
    }

    fn build_graph(&mut self, k: usize, f: &frame::Video) -> Result<filter::Graph> {
        let mut g = filter::Graph::new();
        av::size_filter_threads(&mut g);
        let sar = f.aspect_ratio();
        let sar = if sar.numerator() > 0 && sar.denominator() > 0 { sar } else { Rational(1, 1) };
        let pix: ff::ffi::AVPixelFormat = f.format().into();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            f.width(),
            f.height(),
            pix as i32,
            self.flow.in_tb.numerator(),
            self.flow.in_tb.denominator(),
            sar.numerator(),
            sar.denominator()
        );
        g.add(&filter::find("buffer").expect("buffer filter"), "in", &args).ctx(|| "creating the video source".into())?;
        g.add(&filter::find("buffersink").expect("buffersink filter"), "out", "").ctx(|| "creating the video sink".into())?;
        // Interlaced sources (broadcast TS) are deinterlaced; progressive frames pass through.
        let out = &self.outs[k];
        let chain = if f.is_interlaced() { format!("bwdif=deint=interlaced,{}", out.chain) } else { out.chain.clone() };
        g.output("in", 0).and_then(|p| p.input("out", 0)).and_then(|p| p.parse(&chain)).ctx(|| format!("building filters {chain}"))?;
        g.validate().ctx(|| "configuring video filters".into())?;
        Ok(g)
    }

    /// Takes filtered frames, forces keyframes by time and encodes.
    fn pull(&mut self, k: usize, mux: &mut Muxers) -> Result<()> {
        let out = &mut self.outs[k];
        let g = out.graph.as_mut().expect("graph");
        let mut sink = g.get("out").expect("sink");
        let sink_tb = sink.sink().time_base();
        let mut f = frame::Video::empty();
        while sink.sink().frame(&mut f).is_ok() {
            let pts = f.pts().unwrap_or(out.frames as i64).rescale(sink_tb, out.enc_tb);
            // Frame numbers on the job's grid: a chunk encodes only its own.
            if pts < out.span.first as i64 || out.span.count.is_some_and(|n| out.frames >= n) {
                continue;
            }
            f.set_pts(Some(pts));
            let t = pts as f64 * f64::from(out.enc_tb);
            // Decoded frames carry the source's picture types; only our marks may force IDRs.
            let keyframe = t + 1e-6 >= out.next_keyframe;
            if keyframe {
                f.set_kind(picture::Type::I);
                while out.next_keyframe <= t + 1e-6 {
                    out.next_keyframe += out.gop_seconds;
                }
            } else {
                f.set_kind(picture::Type::None);
            }
            if let Some(m) = out.meter.as_mut() {
                m.input(keyframe, &f);
            }
            out.encoder.send_frame(&f).ctx(|| "encoding video".into())?;
            out.frames += 1;
            drain_encoder(&mut out.encoder, Track::Video, mux, out.meter.as_mut())?;
        }
        if k == 0 {
            self.frames = self.outs[0].frames;
        }
        Ok(())
    }
}

/// The exact option dictionary given to the encoder (also recorded in rendition.json
/// and used by the benchmark to give the ffmpeg CLI the same settings).
pub fn encoder_options(pv: &PlannedVideo, keyint: u32) -> BTreeMap<String, String> {
    let mut o = BTreeMap::new();
    let kbps = |b: u32| format!("{}k", b / 1000);
    if let Some(crf) = pv.crf {
        o.insert("crf".into(), crf.to_string());
    }
    if let Some(b) = pv.bitrate {
        o.insert("b".into(), kbps(b));
    }
    o.insert("maxrate".into(), kbps(pv.maxrate));
    o.insert("bufsize".into(), kbps(pv.bufsize));
    match pv.codec {
        VideoCodec::H264 => {
            o.insert("preset".into(), pv.preset.clone().unwrap_or_else(|| "veryfast".into()));
            o.insert("profile".into(), "high".into());
            o.insert("forced-idr".into(), "1".into());
            o.insert("x264-params".into(), format!("keyint={keyint}:min-keyint={keyint}:scenecut=0:open-gop=0"));
        }
        VideoCodec::Vp9 => {
            o.insert("deadline".into(), "realtime".into());
            o.insert("cpu-used".into(), pv.cpu_used.unwrap_or(8).to_string());
            o.insert("row-mt".into(), "1".into());
            o.insert("g".into(), keyint.to_string());
            // Constrained quality needs a target bitrate; the cap serves as one.
            o.entry("b".into()).or_insert_with(|| kbps(pv.maxrate));
        }
    }
    o
}

struct AudioPipe {
    index: usize,
    decoder: decoder::Audio,
    flow: Flow,
    /// Samples sent through the filters, the padding's included.
    samples: u64,
    /// How long the longest decoded frame (not the padding's) lasts, in seconds.
    longest_frame_s: f64,
    outs: Vec<AudioOut>,
    /// Where the track must reach, in seconds from the source's start (its end,
    /// beside a video): silence pads it from its last sample, or stands in for a
    /// track that decodes to nothing (see `Pipe::tail`). 0: never padded.
    end_s: f64,
    /// The last frame's (rate, format, layout), which the padding takes.
    last_shape: Option<(u32, format::Sample, ff::ChannelLayout)>,
    /// The padding: where it starts (seconds from the source's start), its
    /// samples at the shape's rate, and how many of them were sent.
    pad: Option<(f64, u64, u64)>,
    /// Where the stream ends by its container, in the input time base: the last
    /// frame's samples past it are cut (see [`declared_end`]).
    until: Option<i64>,
    /// The newest decoded frame, held back until the next one shows it was not
    /// the last (only with `until`).
    held: Option<frame::Audio>,
}

/// Where an audio stream ends by its container's own account, when that account
/// is exact: an MP4 or QuickTime track's, from its edit list or media header.
/// Its last AAC frame is whole in the file but plays only up to there (the
/// encoder's padding after the last sample), and libav decodes it whole: at 8 kHz
/// (an old phone's 3GP), 128 ms more than the source. Other containers' durations
/// are estimates (a bitrate's, FLV's metadata) or already end at a whole frame.
fn declared_end(ictx: &format::context::Input, ist: &ff::format::stream::Stream) -> Option<i64> {
    if !ictx.format().name().starts_with("mov,") {
        return None;
    }
    let start = Some(ist.start_time()).filter(|&t| t != ff::ffi::AV_NOPTS_VALUE).unwrap_or(0);
    Some(ist.duration()).filter(|&d| d > 0 && d != ff::ffi::AV_NOPTS_VALUE).map(|d| start + d)
}

/// The rate of the silence standing in for an audio track that holds no sound.
const SILENCE_RATE: u32 = 48_000;

/// One rendition's audio: resampling filters and encoder.
struct AudioOut {
    graph: Option<filter::Graph>,
    /// The frames the graph was built for: (sample rate, format, layout).
    shape: Option<AudioShape>,
    encoder: encoder::Audio,
    enc_tb: Rational,
    /// Where the next sample sent to the encoder goes, in the encoder's time base.
    next_pts: i64,
    plan: PlannedAudio,
}

type AudioShape = (u32, format::Sample, u64);

fn audio_shape(f: &frame::Audio) -> AudioShape {
    (f.rate(), f.format(), audio_layout(f).bits())
}

fn audio_layout(f: &frame::Audio) -> ff::ChannelLayout {
    if f.channel_layout().is_empty() { ff::ChannelLayout::default(f.channels() as i32) } else { f.channel_layout() }
}

impl AudioPipe {
    /// `end_s`: where the track must reach (see [`AudioPipe::end_s`]).
    fn new(
        ictx: &format::context::Input,
        index: usize,
        renditions: &[PlannedRendition],
        (start, end_s): (f64, f64),
        muxes: &mut [Muxers],
    ) -> Result<AudioPipe> {
        let ist = ictx.stream(index).expect("planned stream exists");
        let codec_id = av::params(&ist).codec_id;
        let dctx = codec::context::Context::from_parameters(ist.parameters()).ctx(|| "reading decoder parameters".into())?;
        let mut decoder =
            dctx.decoder().audio().map_err(|e| EngineError::bad(format!("unsupported audio codec {}: {e}", av::codec_name(codec_id))))?;
        decoder.set_packet_time_base(ist.time_base());
        let mut outs = Vec::with_capacity(renditions.len());
        for (r, mux) in renditions.iter().zip(muxes) {
            let pa = r.audio.as_ref().ok_or_else(|| EngineError::bad(format!("rendition {} has no audio", r.name)))?;
            outs.push(AudioOut::new(pa, mux)?);
        }
        let flow = Flow::new(ist.time_base(), start);
        let until = declared_end(ictx, &ist);
        Ok(AudioPipe {
            index,
            decoder,
            flow,
            samples: 0,
            longest_frame_s: 0.0,
            outs,
            end_s,
            last_shape: None,
            pad: None,
            until,
            held: None,
        })
    }
}

impl AudioOut {
    fn new(pa: &PlannedAudio, mux: &mut Muxers) -> Result<AudioOut> {
        let aac = encoder::find(codec::Id::AAC).ok_or_else(|| EngineError::internal("finding the encoder", "aac is not in this libav"))?;
        let mut ectx = codec::context::Context::new_with_codec(aac).encoder().audio().ctx(|| "creating the audio encoder".into())?;
        let layout = if pa.channels == 1 { ff::ChannelLayout::MONO } else { ff::ChannelLayout::STEREO };
        ectx.set_rate(pa.sample_rate as i32);
        ectx.set_channel_layout(layout);
        ectx.set_channels(pa.channels as i32);
        ectx.set_format(format::Sample::F32(format::sample::Type::Planar));
        ectx.set_bit_rate(pa.bitrate as usize);
        let enc_tb = Rational(1, pa.sample_rate as i32);
        ectx.set_time_base(enc_tb);
        if mux.needs_global_header() {
            ectx.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let encoder = ectx.open_as(aac).ctx(|| "opening aac".into())?;
        mux.add(aac, &encoder, enc_tb, Track::Audio)?;
        Ok(AudioOut { graph: None, shape: None, encoder, enc_tb, next_pts: 0, plan: pa.clone() })
    }
}

impl Pipe for AudioPipe {
    type Frame = frame::Audio;
    const TRACK: Track = Track::Audio;

    fn parts(&mut self) -> (&mut decoder::Opened, &mut Flow) {
        (&mut self.decoder, &mut self.flow)
    }

    fn graph(&mut self, k: usize) -> &mut Option<filter::Graph> {
        &mut self.outs[k].graph
    }

    fn encoder(&mut self, k: usize) -> &mut encoder::Encoder {
        &mut self.outs[k].encoder
    }

    fn empty_frame() -> frame::Audio {
        frame::Audio::empty()
    }

    fn frame_duration(&self, f: &frame::Audio) -> i64 {
        (f.samples() as i64).rescale(Rational(1, f.rate().max(1) as i32), self.flow.in_tb)
    }

    /// With a declared end, each frame waits for the next: only the stream's last
    /// frame is cut there (`tail`), so a declaration that falls short of the
    /// samples (a recorder's fragmented file) never cuts more.
    fn clip(&mut self, f: &mut frame::Audio) -> bool {
        // Only decoded frames come here (not the padding's).
        self.longest_frame_s = self.longest_frame_s.max(f.samples() as f64 / f64::from(f.rate().max(1)));
        if self.until.is_none() {
            return true;
        }
        match self.held.as_mut() {
            Some(held) => {
                std::mem::swap(f, held);
                true
            }
            None => {
                self.held = Some(std::mem::replace(f, frame::Audio::empty()));
                false
            }
        }
    }

    fn decoded(&mut self, f: &frame::Audio) {
        self.samples += f.samples() as u64;
        self.last_shape = Some((f.rate(), f.format(), audio_layout(f)));
    }

    /// The held last frame, cut at the container's declared end (see `until`);
    /// then silence from the track's last sample to `end_s`, in frames of a second
    /// shaped as the last decoded one (so the filters go on as they are): an audio
    /// track that ends before the video (an edit's, a recording's whose microphone
    /// stopped) still spans it, as every rendition and the job's audio group
    /// expect. A track with no sound at all (a recorder that opened it and never
    /// wrote to it) gets silence as long as the source, so that it is still there.
    fn tail(&mut self) -> Option<frame::Audio> {
        if let Some(mut last) = self.held.take() {
            if let (Some(until), Some(ts)) = (self.until, last.pts()) {
                let keep = (until - ts).rescale(self.flow.in_tb, Rational(1, last.rate().max(1) as i32));
                if keep > 0 && (keep as usize) < last.samples() {
                    // SAFETY: fewer samples than the frame's buffers hold; the rest are ignored.
                    unsafe { (*last.as_mut_ptr()).nb_samples = keep as i32 };
                }
            }
            return Some(last);
        }
        let (rate, format, layout) =
            self.last_shape.unwrap_or((SILENCE_RATE, format::Sample::F32(format::sample::Type::Planar), ff::ChannelLayout::STEREO));
        let (from, total, sent) = *self.pad.get_or_insert_with(|| {
            let from = if self.flow.end_ts.is_some() { self.flow.decoded_end } else { 0.0 };
            (from, ((self.end_s - from).max(0.0) * f64::from(rate)).round() as u64, 0)
        });
        let samples = total.checked_sub(sent).filter(|&left| left > 0)?.min(u64::from(rate)) as usize;
        let mut f = frame::Audio::new(format, samples, layout);
        f.set_rate(rate);
        // SAFETY: `f` owns buffers for `samples` samples of its format and layout.
        unsafe {
            let raw = f.as_mut_ptr();
            ff::ffi::av_samples_set_silence(
                (*raw).extended_data,
                0,
                samples as i32,
                f.channels() as i32,
                ff::ffi::AVSampleFormat::from(format),
            );
        }
        let at = self.flow.start + from + sent as f64 / f64::from(rate);
        f.set_pts(Some((at / f64::from(self.flow.in_tb)).round() as i64));
        self.pad = Some((from, total, sent + samples as u64));
        Some(f)
    }

    /// A broadcast recording changes its audio at an ad break (5.1 to stereo, 48 to
    /// 44.1 kHz); libav's audio source refuses frames of another shape than its
    /// first.
    fn fits(&self, k: usize, f: &frame::Audio) -> bool {
        self.outs[k].shape == Some(audio_shape(f))
    }

    fn build_graph(&mut self, k: usize, f: &frame::Audio) -> Result<filter::Graph> {
        self.outs[k].shape = Some(audio_shape(f));
        let out = &self.outs[k];
        let mut g = filter::Graph::new();
        let layout = audio_layout(f);
        let args = format!(
            "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
            self.flow.in_tb.numerator(),
            self.flow.in_tb.denominator(),
            f.rate(),
            f.format().name(),
            layout.bits()
        );
        g.add(&filter::find("abuffer").expect("abuffer"), "in", &args).ctx(|| "creating the audio source".into())?;
        g.add(&filter::find("abuffersink").expect("abuffersink"), "out", "").ctx(|| "creating the audio sink".into())?;
        {
            let mut sink = g.get("out").expect("sink");
            sink.set_sample_format(out.encoder.format());
            sink.set_channel_layout(out.encoder.channel_layout());
            sink.set_sample_rate(out.plan.sample_rate);
        }
        // aresample's matrix downmixes any layout (5.1 side or back) with proper
        // centre and surround weights; async=1 pads or trims to keep A/V in sync.
        // A graph built again when the source's audio changes shape goes on from
        // the last sample encoded (the few the old one held are padded as silence).
        // aresample counts `first_pts` in samples at its input's rate.
        let first_pts = out.next_pts.rescale(out.enc_tb, Rational(1, f.rate().max(1) as i32));
        let chain = format!("asetpts=PTS-{:.6}/TB,aresample={}:async=1:first_pts={first_pts}", self.flow.start, out.plan.sample_rate);
        g.output("in", 0).and_then(|p| p.input("out", 0)).and_then(|p| p.parse(&chain)).ctx(|| format!("building filters {chain}"))?;
        g.validate().ctx(|| "configuring audio filters".into())?;
        g.get("out").expect("sink").sink().set_frame_size(out.encoder.frame_size());
        Ok(g)
    }

    fn pull(&mut self, k: usize, mux: &mut Muxers) -> Result<()> {
        let out = &mut self.outs[k];
        let g = out.graph.as_mut().expect("graph");
        let mut sink = g.get("out").expect("sink");
        let sink_tb = sink.sink().time_base();
        let mut f = frame::Audio::empty();
        while sink.sink().frame(&mut f).is_ok() {
            let pts = f.pts().map(|p| p.rescale(sink_tb, out.enc_tb));
            f.set_pts(pts);
            out.next_pts = pts.unwrap_or(out.next_pts) + f.samples() as i64;
            out.encoder.send_frame(&f).ctx(|| "encoding audio".into())?;
            drain_encoder(&mut out.encoder, Track::Audio, mux, None)?;
        }
        Ok(())
    }
}
