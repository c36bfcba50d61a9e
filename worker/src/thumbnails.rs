//! `drake thumbnails`: a poster, N thumbnails spread over the video, and a
//! storyboard sprite sheet with a WebVTT index. libav decodes and converts to RGB;
//! the image crate rotates, resizes and encodes.
//!
//! Frames are found by time in one pass: the walker seeks when the next target is
//! far ahead and decodes forward otherwise (reference frames only), so a 2-minute
//! clip is decoded once and a 2-hour film costs one GOP per target.

use crate::av;
use crate::error::{Context as _, EngineError, Result};
use crate::files::{self, Staging};
use ff::software::scaling;
use ff::{Packet, Rational, Rescale, decoder, filter, format, frame};
use ffmpeg_next as ff;
use image::metadata::Orientation;
use image::{ImageDecoder as _, RgbImage, imageops};
use proto::probe::VideoStream;
use proto::report::{Image, ProgressLine, Storyboard, ThumbnailsReport};
use std::fmt::Write as _;
use std::path::Path;

pub const REPORT: &str = "thumbnails.json";
pub const MAX_COUNT: usize = 100;
/// How `drake transcode --thumbnails` starts the stderr line saying why the
/// thumbnails were not made (the renditions were).
pub const NOT_MADE: &str = "thumbnails not made: ";
const TILE_BOX: u32 = 160;
const THUMB_BOX: (u32, u32) = (640, 640);
const POSTER_BOX: (u32, u32) = (1280, 1280);
const SHEET_COLUMNS: u32 = 10;
const SHEET_ROWS: u32 = 10;
/// Candidate frames examined per thumbnail slot.
const CANDIDATES: usize = 8;

/// Storyboard tile interval by length, as the big platforms do.
pub fn tile_interval(duration: f64) -> f64 {
    match duration {
        d if d <= 120.0 => 2.0,
        d if d <= 600.0 => 5.0,
        d if d <= 1800.0 => 10.0,
        d if d <= 3600.0 => 20.0,
        _ => 30.0,
    }
}

/// Takes the thumbnails and storyboard, printing a line of `progress` at least
/// every half second while it decodes.
pub fn run(input: &str, out: &Path, count: usize, progress: &mut dyn FnMut(ProgressLine)) -> Result<ThumbnailsReport> {
    let (ictx, keyframes) = av::open_input_indexed(input)?;
    let probe = crate::probe::describe(&ictx, input, Some(&keyframes))?;
    let Some(v) = probe.main_video().cloned() else {
        return match probe.cover_art() {
            Some(index) => cover(&ictx, index, probe.duration)?.finish(out),
            None => Err(EngineError::bad("the source has no video or cover art to take thumbnails from")),
        };
    };
    let mut collector = Collector::new(&v, av::params(&ictx.stream(v.index).expect("probed stream")), probe.duration, count)?;
    // Every storyboard tile, and so every thumbnail's candidates, is near a
    // keyframe: decoding those alone serves each target with a picture from its
    // tile's span, at a fraction of the decoding (a phone's 1 s GOPs, 30 fps: 1 in 30).
    let keyframes_only = v.keyframe_gap_s.is_some_and(|gap| gap > 0.0 && gap <= tile_interval(probe.duration) / 2.0);
    let mut walker = Walker::new(ictx, &v, keyframes_only)?;
    let mut pace = crate::transcode::Every::half_second();
    while let Some(t) = collector.wants() {
        if pace.due() {
            let fraction = (t / probe.duration.max(0.001)).clamp(0.0, 0.99);
            progress(ProgressLine::Progress { fraction, fps: 0.0, frame: 0, out_time: t });
        }
        match walker.frame_towards(t)? {
            Some((time, f)) => collector.offer(time, f)?,
            None => break,
        }
    }
    // A seek the store failed ends the walk early, as the end of the video would.
    if let Some(failed) = av::read_failure(&walker.ictx) {
        return Err(failed);
    }
    collector.finish(out)
}

/// An audio-only source's embedded cover picture (an MP3's or M4A's front cover,
/// stream `index`) as its poster, its one thumbnail and a storyboard of one tile
/// spanning the whole source: what a player shows for it, as for a video. The
/// collector has its picture; `finish` writes them.
pub fn cover(ictx: &format::context::Input, index: usize, duration: f64) -> Result<Collector> {
    let ist = ictx.stream(index).ok_or_else(|| EngineError::bad(format!("the source has no stream {index}")))?;
    let picture = av::attached_picture(&ist).ok_or_else(|| EngineError::bad("the cover picture does not decode"))?;
    // A photo from a phone is stored as the sensor saw it, with an EXIF tag saying
    // how to turn it upright (libav's decoder ignores it, as viewers do not).
    let orientation = av::attached_picture_data(&ist).map_or(Orientation::NoTransforms, exif_orientation);
    let (w, h) = (picture.width(), picture.height());
    let size = if swaps_sides(orientation) { (h, w) } else { (w, h) };
    let mut collector = Collector::of_oriented_pictures(size, orientation, av::params(&ist), duration, 1, duration.max(0.04))?;
    collector.offer(0.0, &picture)?;
    Ok(collector)
}

/// Makes the thumbnails and storyboard from decoded frames pushed to it in
/// presentation order, by whichever decoder has them: the standalone walker above,
/// or a transcode that decodes the source anyway (`drake transcode --thumbnails`).
/// Each target time takes the first frame at or after it; targets past the last
/// frame take the last frame.
pub struct Collector {
    /// Target times, sorted, and what each frame is for.
    targets: Vec<(f64, Use)>,
    next: usize,
    duration: f64,
    interval: f64,
    tile_size: (u32, u32),
    rgb: Rgb,
    slots: Slots,
    tile_images: Vec<Option<RgbImage>>,
    /// A reference to the newest frame, for targets past the end.
    last: Option<(f64, frame::Video)>,
}

impl Collector {
    /// For the video stream `v` with parameters `p`: `duration` is the source's;
    /// `count` thumbnails are spread over it. Its pictures become RGB as its
    /// renditions' players show them (`av::to_bt709`, `av::Colours`).
    pub fn new(v: &VideoStream, p: &ff::ffi::AVCodecParameters, duration: f64, count: usize) -> Result<Collector> {
        let orientation = match v.rotation {
            90 => Orientation::Rotate90,
            180 => Orientation::Rotate180,
            270 => Orientation::Rotate270,
            _ => Orientation::NoTransforms,
        };
        Collector::of_oriented_pictures((v.display_width, v.display_height), orientation, p, duration, count, tile_interval(duration))
    }

    /// Pictures of `display` size (once upright) turned upright by `orientation`,
    /// in storyboard tiles of `interval` seconds.
    fn of_oriented_pictures(
        (width, height): (u32, u32),
        orientation: Orientation,
        p: &ff::ffi::AVCodecParameters,
        duration: f64,
        count: usize,
        interval: f64,
    ) -> Result<Collector> {
        if count == 0 || count > MAX_COUNT {
            return Err(EngineError::bad(format!("a thumbnail count of {count} is outside 1..={MAX_COUNT}")));
        }
        if width < 2 || height < 2 || width > 16384 || height > 16384 {
            return Err(EngineError::bad(format!("the source picture is {width}x{height}")));
        }
        let to_sdr = av::to_bt709(p);
        let mapped = to_sdr.is_some();
        let duration = duration.max(0.04);
        // Thumbnail slots: candidates spread over each of `count` equal slices.
        let slot = duration / count as f64;
        let mut targets: Vec<(f64, Use)> = Vec::new();
        for k in 0..count {
            for j in 0..CANDIDATES {
                targets.push((k as f64 * slot + (j as f64 + 0.5) * slot / CANDIDATES as f64, Use::Candidate(k)));
            }
        }
        let tiles = (duration / interval).ceil().max(1.0) as usize;
        for i in 0..tiles {
            targets.push((i as f64 * interval, Use::Tile(i)));
        }
        targets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Collector {
            targets,
            next: 0,
            duration,
            interval,
            tile_size: fit(width, height, TILE_BOX, TILE_BOX),
            rgb: Rgb { orientation, max_side: POSTER_BOX.0, to_sdr, matrix: av::Colours::of(p, mapped).matrix, converter: None },
            slots: Slots::new(count),
            tile_images: vec![None; tiles],
            last: None,
        })
    }

    /// The next target time still waiting for a frame, if any.
    pub fn wants(&self) -> Option<f64> {
        self.targets.get(self.next).map(|t| t.0)
    }

    /// Offers a decoded frame, `time` seconds from the source's start. The newest
    /// frame costs one reference, kept until the next: targets past the last frame
    /// take it, even when it served an earlier target (a single still frame under a
    /// song).
    pub fn offer(&mut self, time: f64, f: &frame::Video) -> Result<()> {
        let Some(target) = self.wants() else { return Ok(()) };
        let kept = self.last.get_or_insert_with(|| (time, frame::Video::empty()));
        kept.0 = time;
        av::frame_ref(&mut kept.1, f).ctx(|| "keeping a decoded frame".into())?;
        if target > time + 1e-3 {
            return Ok(());
        }
        let img = self.rgb.convert(f)?;
        while self.wants().is_some_and(|t| t <= time + 1e-3) {
            self.take(time, &img);
        }
        Ok(())
    }

    fn take(&mut self, time: f64, img: &RgbImage) {
        let (tw, th) = self.tile_size;
        match self.targets[self.next].1 {
            Use::Candidate(k) => self.slots.offer(k, time, img.clone()),
            Use::Tile(i) => self.tile_images[i] = Some(imageops::resize(img, tw, th, imageops::FilterType::Triangle)),
        }
        self.next += 1;
    }

    /// Gives targets past the last frame that frame, then writes the poster,
    /// thumbnails, storyboard sheets, WebVTT and `thumbnails.json` into `out`.
    pub fn finish(mut self, out: &Path) -> Result<ThumbnailsReport> {
        if let Some((time, f)) = self.last.take()
            && self.wants().is_some()
        {
            let img = self.rgb.convert(&f)?;
            while self.wants().is_some() {
                self.take(time, &img);
            }
        }
        let picks = self.slots.finish();
        if picks.is_empty() {
            return Err(EngineError::bad("no decodable video frames in the source"));
        }
        let staging = Staging::new(out)?;
        let mut written = Vec::new();
        let mut thumbs = Vec::new();
        for (k, pick) in picks.iter().enumerate() {
            let name = format!("thumb_{k:02}.jpg");
            save_jpeg(&pick.thumb, &staging.path(&name), 85)?;
            written.push(name.clone());
            thumbs.push(Image { path: name, time: round3(pick.time), width: pick.thumb.width(), height: pick.thumb.height() });
        }
        let (poster_time, poster_img) = self.slots.poster.take().ok_or_else(|| EngineError::bad("no usable frame for a poster"))?;
        save_jpeg(&poster_img, &staging.path("poster.jpg"), 90)?;
        written.push("poster.jpg".into());
        let poster = Image { path: "poster.jpg".into(), time: round3(poster_time), width: poster_img.width(), height: poster_img.height() };

        // Storyboard: sheets of up to 10x10 tiles, and one VTT cue per tile.
        let (tw, th) = self.tile_size;
        let (duration, interval, tiles) = (self.duration, self.interval, self.tile_images.len());
        let per_sheet = (SHEET_COLUMNS * SHEET_ROWS) as usize;
        let mut last_tile: Option<RgbImage> = None;
        let mut sheets = Vec::new();
        let mut vtt = String::from("WEBVTT\n\n");
        for (s, chunk) in self.tile_images.chunks(per_sheet).enumerate() {
            let rows = (chunk.len() as u32).div_ceil(SHEET_COLUMNS);
            let cols = SHEET_COLUMNS.min(chunk.len() as u32);
            let mut sheet = RgbImage::new(cols * tw, rows * th);
            let name = format!("storyboard_{s:02}.jpg");
            for (i, tile) in chunk.iter().enumerate() {
                // Past the last decodable frame (a short final GOP), repeat the last tile.
                let tile = tile.clone().or_else(|| last_tile.clone()).unwrap_or_else(|| RgbImage::new(tw, th));
                let (x, y) = ((i as u32 % SHEET_COLUMNS) * tw, (i as u32 / SHEET_COLUMNS) * th);
                imageops::replace(&mut sheet, &tile, x as i64, y as i64);
                let n = s * per_sheet + i;
                let start = n as f64 * interval;
                let end = ((n + 1) as f64 * interval).min(duration);
                let _ = write!(vtt, "{} --> {}\n{name}#xywh={x},{y},{tw},{th}\n\n", vtt_time(start), vtt_time(end));
                last_tile = Some(tile);
            }
            save_jpeg(&sheet, &staging.path(&name), 80)?;
            written.push(name.clone());
            sheets.push(name);
        }
        std::fs::write(staging.path("storyboard.vtt"), vtt).ctx(|| "writing storyboard.vtt".into())?;
        written.push("storyboard.vtt".into());

        let report = ThumbnailsReport {
            version: proto::WIRE_VERSION,
            poster,
            thumbnails: thumbs,
            storyboard: Storyboard {
                vtt: "storyboard.vtt".into(),
                sheets,
                interval,
                tile_width: tw,
                tile_height: th,
                columns: SHEET_COLUMNS,
                rows: SHEET_ROWS,
                tiles,
            },
            checksums: staging.checksums(&written)?,
        };
        files::write_json(&staging.path(REPORT), &report)?;
        staging.commit(REPORT)?;
        Ok(report)
    }
}

#[derive(Clone, Copy)]
enum Use {
    Candidate(usize),
    Tile(usize),
}

/// Largest even size with the aspect of `w`x`h` that fits in `bw`x`bh`.
pub fn fit(w: u32, h: u32, bw: u32, bh: u32) -> (u32, u32) {
    let scale = (bw as f64 / w as f64).min(bh as f64 / h as f64);
    let even = |x: f64| ((x / 2.0).round() as u32 * 2).max(2);
    (even(w as f64 * scale), even(h as f64 * scale))
}

/// `img` fitted into `bx`, never larger than it is: a thumbnail or poster of a
/// small video is the video's own size, as its renditions are.
fn shrunk(img: &RgbImage, bx: (u32, u32)) -> RgbImage {
    if img.width() <= bx.0 && img.height() <= bx.1 {
        return img.clone();
    }
    let (w, h) = fit(img.width(), img.height(), bx.0, bx.1);
    imageops::resize(img, w, h, imageops::FilterType::Lanczos3)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn vtt_time(t: f64) -> String {
    let ms = (t * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

fn save_jpeg(img: &RgbImage, path: &Path, quality: u8) -> Result<()> {
    let file = std::fs::File::create(path).ctx(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, quality);
    img.write_with_encoder(enc).ctx(|| format!("encoding {}", path.display()))
}

/// Luma statistics of a frame, for telling real pictures from black, white and fades.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub stddev: f64,
    pub entropy: f64,
    pub histogram: [f32; 32],
}

impl Stats {
    pub fn of(img: &RgbImage) -> Stats {
        let mut hist = [0u64; 32];
        let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0u64);
        let step = ((img.width() * img.height()) as usize / 20_000).max(1);
        for p in img.pixels().step_by(step) {
            let y = 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
            hist[(y as usize / 8).min(31)] += 1;
            sum += y;
            sum2 += y * y;
            n += 1;
        }
        let n = n.max(1) as f64;
        let mean = sum / n;
        let stddev = (sum2 / n - mean * mean).max(0.0).sqrt();
        let mut histogram = [0f32; 32];
        let mut entropy = 0.0;
        for (h, c) in histogram.iter_mut().zip(hist) {
            let p = c as f64 / n;
            *h = p as f32;
            if p > 0.0 {
                entropy -= p * p.log2();
            }
        }
        Stats { mean, stddev, entropy, histogram }
    }

    /// Black, white, fades and flat frames: dark or bright with little detail.
    pub fn is_blank(&self) -> bool {
        self.mean < 24.0 || self.mean > 235.0 || self.stddev < 12.0
    }

    fn interest(&self) -> f64 {
        if self.is_blank() { self.entropy * 0.01 } else { self.entropy * self.stddev }
    }
}

/// One thumbnail per slot. Like libav's `thumbnail` filter: among a slot's frames
/// that are not blank, the one whose histogram is closest to their average. A slot
/// with only blank frames (a black intro) borrows the nearest good pick of another
/// slot, so no thumbnail is black unless the whole video is. The poster is the most
/// interesting pick.
struct Slots {
    /// The slot being filled, and its candidates at poster size.
    open: Option<(usize, Vec<Candidate>)>,
    /// Per slot: the pick, and whether it is a good (not blank) frame.
    picks: Vec<Option<(Pick, bool)>>,
    /// The best poster so far: interest, time, image.
    best: Option<(f64, f64, RgbImage)>,
    poster: Option<(f64, RgbImage)>,
}

/// A frame examined for a slot: time, statistics, picture.
type Candidate = (f64, Stats, RgbImage);

#[derive(Clone)]
struct Pick {
    time: f64,
    thumb: RgbImage,
}

impl Slots {
    fn new(count: usize) -> Slots {
        Slots { open: None, picks: vec![None; count], best: None, poster: None }
    }

    fn offer(&mut self, slot: usize, time: f64, img: RgbImage) {
        if self.open.as_ref().is_some_and(|(k, _)| *k != slot) {
            self.close();
        }
        let stats = Stats::of(&img);
        self.open.get_or_insert_with(|| (slot, Vec::new())).1.push((time, stats, img));
    }

    fn close(&mut self) {
        let Some((slot, cands)) = self.open.take() else { return };
        let good: Vec<&Candidate> = cands.iter().filter(|c| !c.1.is_blank()).collect();
        let chosen = if good.is_empty() {
            cands.iter().max_by(|a, b| a.1.interest().total_cmp(&b.1.interest()))
        } else {
            let mut avg = [0f32; 32];
            for c in &good {
                for (a, h) in avg.iter_mut().zip(c.1.histogram) {
                    *a += h / good.len() as f32;
                }
            }
            let dist = |s: &Stats| s.histogram.iter().zip(avg).map(|(h, a)| (h - a) * (h - a)).sum::<f32>();
            good.into_iter().min_by(|a, b| dist(&a.1).total_cmp(&dist(&b.1)))
        };
        let Some((time, stats, img)) = chosen else { return };
        let thumb = shrunk(img, THUMB_BOX);
        let score = stats.interest();
        if self.best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            self.best = Some((score, *time, img.clone()));
        }
        self.picks[slot] = Some((Pick { time: *time, thumb }, !stats.is_blank()));
    }

    /// The picks in slot order (blank slots borrowing), and the poster.
    fn finish(&mut self) -> Vec<Pick> {
        self.close();
        if let Some((_, time, img)) = self.best.take() {
            self.poster = Some((time, shrunk(&img, POSTER_BOX)));
        }
        let good: Vec<Pick> = self.picks.iter().flatten().filter(|p| p.1).map(|p| p.0.clone()).collect();
        self.picks
            .iter()
            .flatten()
            .map(|(pick, is_good)| {
                if *is_good {
                    return pick.clone();
                }
                good.iter().min_by(|a, b| (a.time - pick.time).abs().total_cmp(&(b.time - pick.time).abs())).unwrap_or(pick).clone()
            })
            .collect()
    }
}

type ConverterKey = (u32, u32, format::Pixel, u32, u32);

/// Converts decoded frames to upright RGB pictures at most `max_side` pixels on
/// their long side (swscale does that first step cheaply; the image crate does the
/// final resize to each output's size). A high dynamic range source's pictures go
/// through filters instead, which map them to SDR as its renditions are.
struct Rgb {
    /// How a picture is turned upright.
    orientation: Orientation,
    max_side: u32,
    to_sdr: Option<String>,
    /// The YUV matrix of pictures not mapped by `to_sdr`.
    matrix: ff::ffi::AVColorSpace,
    /// The converter and what it converts: (source w, h, format, output w, h).
    converter: Option<(Converter, ConverterKey)>,
}

enum Converter {
    Scaler(scaling::Context),
    Filters(filter::Graph),
}

impl Converter {
    fn new(f: &frame::Video, (ow, oh): (u32, u32), to_sdr: Option<&str>, matrix: ff::ffi::AVColorSpace) -> Result<Converter> {
        let Some(to_sdr) = to_sdr else {
            let mut s = scaling::Context::get(f.format(), f.width(), f.height(), format::Pixel::RGB24, ow, oh, scaling::Flags::BICUBIC)
                .ctx(|| "creating the RGB converter".into())?;
            // libswscale takes every YUV picture as BT.601 unless told: an HD
            // source's BT.709 reds would come out orange.
            let full = f.color_range() == ff::color::Range::JPEG
                || matches!(
                    f.format(),
                    format::Pixel::YUVJ420P | format::Pixel::YUVJ422P | format::Pixel::YUVJ444P | format::Pixel::YUVJ440P
                );
            // SAFETY: the context is live; sws_getCoefficients returns a static table.
            unsafe {
                let yuv = ff::ffi::sws_getCoefficients(matrix as i32);
                ff::ffi::sws_setColorspaceDetails(s.as_mut_ptr(), yuv, i32::from(full), yuv, 1, 0, 1 << 16, 1 << 16);
            }
            return Ok(Converter::Scaler(s));
        };
        let mut g = filter::Graph::new();
        let pix: ff::ffi::AVPixelFormat = f.format().into();
        let args = format!("video_size={}x{}:pix_fmt={}:time_base=1/1:pixel_aspect=1/1", f.width(), f.height(), pix as i32);
        g.add(&filter::find("buffer").expect("buffer filter"), "in", &args).ctx(|| "creating the RGB converter's source".into())?;
        g.add(&filter::find("buffersink").expect("buffersink filter"), "out", "").ctx(|| "creating the RGB converter's sink".into())?;
        let chain = format!("scale={ow}:{oh}:flags=bicubic,{to_sdr},format=rgb24");
        g.output("in", 0).and_then(|p| p.input("out", 0)).and_then(|p| p.parse(&chain)).ctx(|| format!("building filters {chain}"))?;
        g.validate().ctx(|| "configuring the RGB converter".into())?;
        Ok(Converter::Filters(g))
    }

    fn run(&mut self, f: &frame::Video, rgb: &mut frame::Video) -> Result<()> {
        match self {
            Converter::Scaler(s) => s.run(f, rgb).ctx(|| "converting to RGB".into()),
            Converter::Filters(g) => {
                av::add_frame(g, f).ctx(|| "converting to RGB".into())?;
                g.get("out").expect("sink").sink().frame(rgb).ctx(|| "converting to RGB".into())
            }
        }
    }
}

impl Rgb {
    fn convert(&mut self, f: &frame::Video) -> Result<RgbImage> {
        let sar = f.aspect_ratio();
        let dw = if sar.numerator() > 0 && sar.denominator() > 0 { (f.width() as f64 * f64::from(sar)).round() as u32 } else { f.width() };
        let (dw, dh) = (dw.clamp(2, 16384), f.height());
        let (ow, oh) = if dw.max(dh) > self.max_side { fit(dw, dh, self.max_side, self.max_side) } else { (dw, dh) };
        let key = (f.width(), f.height(), f.format(), ow, oh);
        if self.converter.as_ref().is_none_or(|(_, k)| *k != key) {
            self.converter = Some((Converter::new(f, (ow, oh), self.to_sdr.as_deref(), self.matrix)?, key));
        }
        let mut rgb = frame::Video::empty();
        self.converter.as_mut().expect("set above").0.run(f, &mut rgb)?;
        let (w, h, stride) = (rgb.width() as usize, rgb.height() as usize, rgb.stride(0));
        let mut buf = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            buf.extend_from_slice(&rgb.data(0)[y * stride..y * stride + w * 3]);
        }
        let img = RgbImage::from_raw(w as u32, h as u32, buf).expect("buffer sized for the image");
        if self.orientation == Orientation::NoTransforms {
            return Ok(img);
        }
        let mut img = image::DynamicImage::ImageRgb8(img);
        img.apply_orientation(self.orientation);
        Ok(img.into_rgb8())
    }
}

/// Decodes the main video forward, seeking when the next target is far ahead.
struct Walker {
    ictx: format::context::Input,
    index: usize,
    tb: Rational,
    start: f64,
    decoder: decoder::Video,
    frame: frame::Video,
    /// Time of the most recent decoded frame (seconds from the start).
    at: Option<f64>,
    /// The target the walk is heading for; a seek is considered once per target.
    heading: Option<f64>,
    /// The keyframe a seek found, to decode first.
    pending: Option<Packet>,
    /// The longest stretch of the stream without a keyframe, as far as known:
    /// from the probe, or learnt from a seek that landed no further than the
    /// walk already was.
    keyframe_gap: f64,
    eof: bool,
}

/// Seek instead of decoding forward when the target is this far ahead (and a
/// keyframe gap further: see `Walker::frame_towards`).
const SEEK_AHEAD: f64 = 6.0;

impl Walker {
    /// A walk of `video`'s frames; `keyframes_only`: its keyframes alone are decoded.
    fn new(ictx: format::context::Input, video: &VideoStream, keyframes_only: bool) -> Result<Walker> {
        let index = video.index;
        let ist = ictx.stream(index).expect("probed stream");
        let tb = ist.time_base();
        let mut decoder = av::video_decoder(&ist)?;
        // Keyframes alone, or at least no frame nothing else refers to (most
        // B-frames): any frame near a target serves, and the latter halves the
        // decoding of typical uploads.
        decoder.skip_frame(if keyframes_only { ff::Discard::NonKey } else { ff::Discard::NonReference });
        let start = av::start_seconds(&ictx);
        let keyframe_gap = video.keyframe_gap_s.unwrap_or(0.0);
        let frame = frame::Video::empty();
        Ok(Walker { ictx, index, tb, start, decoder, frame, at: None, heading: None, pending: None, keyframe_gap, eof: false })
    }

    /// The next decoded frame on the way to `t` (seeking first when `t` is far
    /// ahead), or None at the end of the stream.
    fn frame_towards(&mut self, t: f64) -> Result<Option<(f64, &frame::Video)>> {
        if self.eof {
            return Ok(None);
        }
        let new_target = self.heading != Some(t);
        self.heading = Some(t);
        // The keyframe at or before `t` is at most a keyframe gap before it: a
        // target further ahead than that has one past where the walk is. Nearer, a
        // seek could land behind the walk and decode that stretch again; with one
        // keyframe (a screen recording), every target would decode the video
        // from its start.
        if new_target && self.at.is_none_or(|at| t - at > SEEK_AHEAD.max(self.keyframe_gap)) {
            // From the keyframe at or before the target, which a source without a
            // keyframe index (MPEG-TS) does not land on by itself. Where libav
            // cannot seek, the walk decodes on from where it is.
            self.decoder.flush();
            match av::seek_keyframe_before(&mut self.ictx, self.index, self.start, t, read_packet) {
                Ok(Some(key)) => {
                    let landed = key.pts().or(key.dts()).map(|ts| ts.rescale(self.tb, Rational(1, 1_000_000)) as f64 / 1e6 - self.start);
                    if let (Some(at), Some(landed)) = (self.at, landed)
                        && landed <= at
                    {
                        // No keyframe between the walk and the target: seek only further ahead from now on.
                        self.keyframe_gap = self.keyframe_gap.max(t - landed);
                    }
                    self.pending = Some(key);
                }
                Ok(None) => {
                    let _ = self.decoder.send_eof();
                }
                Err(_) => {}
            }
        }
        loop {
            match self.decoder.receive_frame(&mut self.frame) {
                Ok(()) => {
                    let Some(ts) = self.frame.timestamp() else { continue };
                    let at = ts.rescale(self.tb, Rational(1, 1_000_000)) as f64 / 1e6 - self.start;
                    self.at = Some(at);
                    return Ok(Some((at, &self.frame)));
                }
                Err(ff::Error::Eof) => {
                    self.eof = true;
                    return Ok(None);
                }
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {}
                Err(ff::Error::InvalidData) => continue,
                Err(e) => return Err(EngineError::bad(format!("video decoding failed: {e}"))),
            }
            let pkt = match self.pending.take() {
                Some(pkt) => Some(pkt),
                None => read_packet(&mut self.ictx)?,
            };
            match pkt {
                Some(pkt) if pkt.stream() == self.index => match self.decoder.send_packet(&pkt) {
                    Ok(()) | Err(ff::Error::InvalidData) => {}
                    Err(e) => return Err(EngineError::bad(format!("video decoding failed: {e}"))),
                },
                Some(_) => {}
                None => {
                    let _ = self.decoder.send_eof();
                }
            }
        }
    }
}

/// The source's next readable packet, `None` at its end.
fn read_packet(ictx: &mut format::context::Input) -> Result<Option<Packet>> {
    loop {
        let mut pkt = Packet::empty();
        let error = match pkt.read(ictx) {
            Ok(()) => return Ok(Some(pkt)),
            Err(e) => e,
        };
        // Over HTTP, a store that stayed away, whatever the demuxer made of it.
        if let Some(failed) = av::read_failure(ictx) {
            return Err(failed);
        }
        match error {
            ff::Error::Eof => return Ok(None),
            ff::Error::InvalidData => {}
            e => return Err(EngineError::bad(format!("the source cannot be read: {e}"))),
        }
    }
}

/// The EXIF orientation of an encoded picture (JPEG, PNG), or none.
fn exif_orientation(data: &[u8]) -> Orientation {
    let decoder = image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format().ok().and_then(|r| r.into_decoder().ok());
    decoder.and_then(|mut d| d.orientation().ok()).unwrap_or(Orientation::NoTransforms)
}

/// Whether turning a picture upright swaps its width and height.
fn swaps_sides(o: Orientation) -> bool {
    matches!(o, Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_grow_with_length() {
        for (d, i) in [(30.0, 2.0), (120.0, 2.0), (300.0, 5.0), (1200.0, 10.0), (3000.0, 20.0), (7200.0, 30.0)] {
            assert_eq!(tile_interval(d), i, "{d}");
        }
    }

    #[test]
    fn blank_frames_are_recognised() {
        let black = RgbImage::new(64, 36);
        assert!(Stats::of(&black).is_blank());
        let grey = RgbImage::from_pixel(64, 36, image::Rgb([128, 128, 128]));
        assert!(Stats::of(&grey).is_blank(), "flat");
        let noise =
            RgbImage::from_fn(64, 36, |x, y| image::Rgb([((x * 37 + y * 91) % 256) as u8, ((x * 13) % 256) as u8, ((y * 7) % 256) as u8]));
        assert!(!Stats::of(&noise).is_blank());
    }

    #[test]
    fn vtt_times() {
        assert_eq!(vtt_time(0.0), "00:00:00.000");
        assert_eq!(vtt_time(3725.5), "01:02:05.500");
        assert_eq!(fit(1920, 1080, 160, 160), (160, 90));
        assert_eq!(fit(1080, 1920, 160, 160), (90, 160));
        assert_eq!(shrunk(&RgbImage::new(320, 240), THUMB_BOX).dimensions(), (320, 240));
        assert_eq!(shrunk(&RgbImage::new(1280, 720), THUMB_BOX).dimensions(), (640, 360));
    }
}
