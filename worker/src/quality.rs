//! Measured quality of a video encode, against the frames the encoder was given
//! (the source after this rendition's filters: scaled to its size, at its rate).
//!
//! - **Sampled GOPs.** One GOP in [`SAMPLE_GOPS`]: the frames of that GOP are kept
//!   as they go to the encoder, and the GOP's packets are decoded back in this
//!   process as they come out (GOPs are closed, so each decodes on its own). Every
//!   decoded frame adds its squared error per plane (PSNR); every
//!   [`SSIM_EVERY`]th adds its SSIM (ffmpeg's `ssim` filter's algorithm).
//! - **Every frame's PSNR, where the encoder reports it.** With
//!   `AV_CODEC_FLAG_PSNR`, libvpx returns each frame's squared errors as packet
//!   side data, and those replace the sampled ones. (FFmpeg 5.1's libx264 wrapper
//!   does not pass x264's errors on, so H.264 PSNR comes from the sampled GOPs.)

use crate::error::{EngineError, Result};
use ff::{Packet, codec, decoder, encoder, frame};
use ffmpeg_next as ff;
use proto::report::QualitySums;
use std::collections::VecDeque;

/// One GOP in this many is decoded back and compared.
pub const SAMPLE_GOPS: u64 = 10;
/// In a sampled GOP, every this many frames also gets its SSIM.
pub const SSIM_EVERY: i64 = 4;

/// What the report says where VMAF is not measured.
pub fn vmaf_note() -> &'static str {
    if ff::filter::find("libvmaf").is_some() {
        "not measured: Drake does not run libvmaf yet"
    } else {
        "not measured: this libav has no libvmaf"
    }
}

/// Squared errors per plane and the frames they cover.
#[derive(Default)]
struct Errors {
    frames: u64,
    sse: [u64; 3],
}

/// One rendition's quality meter: sees every frame going into the encoder and
/// every packet coming out.
pub struct Meter {
    plane_pixels: [u64; 3],
    /// Keyframes forced so far, and whether the GOP being fed is sampled.
    gops: u64,
    sampling: bool,
    /// Kept encoder inputs of sampled GOPs, in presentation order.
    kept: VecDeque<frame::Video>,
    /// The pts of the keyframe of the GOP being decoded back, if it is sampled.
    decoding: Option<i64>,
    decoder: decoder::Video,
    sampled: Errors,
    reported: Errors,
    ssim_frames: u64,
    ssim: [f64; 3],
}

impl Meter {
    /// A meter for `encoder` (opened, with global headers when the muxer wants them).
    pub fn new(encoder: &encoder::Video) -> Result<Meter> {
        let ctx = codec::context::Context::from_parameters(codec::Parameters::from(encoder))
            .map_err(|e| EngineError::internal("reading the encoder's parameters", e))?;
        let decoder = ctx.decoder().video().map_err(|e| EngineError::internal("opening a decoder to measure quality", e))?;
        let (w, h) = (u64::from(encoder.width()), u64::from(encoder.height()));
        let chroma = w.div_ceil(2) * h.div_ceil(2);
        Ok(Meter {
            plane_pixels: [w * h, chroma, chroma],
            gops: 0,
            sampling: false,
            kept: VecDeque::new(),
            decoding: None,
            decoder,
            sampled: Errors::default(),
            reported: Errors::default(),
            ssim_frames: 0,
            ssim: [0.0; 3],
        })
    }

    /// A frame about to be sent to the encoder (its pts set, in the encoder's time
    /// base), and whether it is a forced keyframe.
    pub fn input(&mut self, keyframe: bool, f: &frame::Video) {
        if keyframe {
            self.sampling = self.gops.is_multiple_of(SAMPLE_GOPS);
            self.gops += 1;
        }
        if self.sampling {
            self.kept.push_back(f.clone());
        }
    }

    /// An encoded packet, before it goes to the muxer.
    pub fn packet(&mut self, pkt: &Packet) -> Result<()> {
        for side in pkt.side_data() {
            if side.kind() == ff::codec::packet::side_data::Type::QualityStats {
                self.add_reported(side.data());
            }
        }
        if pkt.is_key() {
            self.finish_gop()?;
            // Kept frames of a GOP that was never encoded (a chunk's span ended it) go.
            self.drop_kept_before(pkt.pts());
            self.decoding = pkt.pts().filter(|_| self.kept.front().is_some_and(|f| f.pts() == pkt.pts()));
        }
        if self.decoding.is_some() {
            self.decoder.send_packet(pkt).map_err(|e| EngineError::internal("decoding to measure quality", e))?;
            self.receive()?;
        }
        Ok(())
    }

    /// After the encoder's last packet: the sums.
    pub fn finish(mut self) -> Result<QualitySums> {
        self.finish_gop()?;
        // Every frame's errors where the encoder reported them, else the sampled ones.
        // (FFmpeg 5.1's libx264 sends the fields, all zeros: that reports nothing.)
        let errors = if self.reported.sse.iter().any(|e| *e > 0) { &self.reported } else { &self.sampled };
        Ok(QualitySums {
            psnr_frames: errors.frames,
            sse: errors.sse,
            plane_pixels: self.plane_pixels,
            ssim_frames: self.ssim_frames,
            ssim: self.ssim,
        })
    }

    /// `AVPacketSideData` of type `QUALITY_STATS`: le32 quality, u8 picture type,
    /// u8 error count, 2 reserved bytes, then le64 squared errors per plane.
    fn add_reported(&mut self, data: &[u8]) {
        let count = data.get(5).copied().unwrap_or(0) as usize;
        if count < 3 || data.len() < 8 + 8 * 3 {
            return;
        }
        let sse: [u64; 3] = std::array::from_fn(|c| u64::from_le_bytes(data[8 + 8 * c..16 + 8 * c].try_into().expect("8 bytes")));
        for (total, e) in self.reported.sse.iter_mut().zip(sse) {
            *total += e;
        }
        self.reported.frames += 1;
    }

    /// Ends the GOP being decoded: its last frames, then the decoder is reset.
    fn finish_gop(&mut self) -> Result<()> {
        if self.decoding.is_some() {
            let _ = self.decoder.send_eof();
            self.receive()?;
            self.decoder.flush();
            self.decoding = None;
        }
        Ok(())
    }

    /// Forgets kept frames before `pts`: their packets never came back.
    fn drop_kept_before(&mut self, pts: Option<i64>) {
        while self.kept.front().is_some_and(|f| f.pts() < pts) {
            self.kept.pop_front();
        }
    }

    /// Compares each frame decoded back with the frame the encoder was given.
    fn receive(&mut self) -> Result<()> {
        let Some(gop_start) = self.decoding else { return Ok(()) };
        let mut decoded = frame::Video::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            self.drop_kept_before(decoded.pts());
            let Some(reference) = self.kept.front().filter(|f| f.pts() == decoded.pts()) else { continue };
            for c in 0..3 {
                self.sampled.sse[c] += plane_sse(&decoded, reference, c);
            }
            self.sampled.frames += 1;
            if decoded.pts().is_some_and(|p| (p - gop_start) % SSIM_EVERY == 0) {
                for c in 0..3 {
                    self.ssim[c] += plane_ssim(&decoded, reference, c);
                }
                self.ssim_frames += 1;
            }
            self.kept.pop_front();
        }
        Ok(())
    }
}

/// Squared error of plane `c` of two 8-bit frames of the same size.
fn plane_sse(a: &frame::Video, b: &frame::Video, c: usize) -> u64 {
    let (w, h) = (a.plane_width(c) as usize, a.plane_height(c) as usize);
    let (da, db, sa, sb) = (a.data(c), b.data(c), a.stride(c), b.stride(c));
    (0..h)
        .map(|y| {
            let (ra, rb) = (&da[y * sa..y * sa + w], &db[y * sb..y * sb + w]);
            // A row's sum fits in u32 (16384 px of 255^2), which vectorizes.
            u64::from(ra.iter().zip(rb).map(|(&p, &q)| u32::from(p.abs_diff(q)).pow(2)).sum::<u32>())
        })
        .sum()
}

/// SSIM of plane `c` of two 8-bit frames of the same size.
fn plane_ssim(a: &frame::Video, b: &frame::Video, c: usize) -> f64 {
    let (w, h) = (a.plane_width(c) as usize, a.plane_height(c) as usize);
    ssim_plane(a.data(c), a.stride(c), b.data(c), b.stride(c), w, h)
}

/// ffmpeg's `ssim` filter on one 8-bit plane (after x264): sums over 4x4 blocks,
/// SSIM of every 8x8 window of 2x2 blocks, averaged.
pub fn ssim_plane(a: &[u8], a_stride: usize, b: &[u8], b_stride: usize, width: usize, height: usize) -> f64 {
    let (w, h) = (width / 4, height / 4);
    if w < 2 || h < 2 {
        return 1.0;
    }
    let block = |x: usize, y: usize| {
        let mut s = [0u32; 4];
        for dy in 0..4 {
            let (ra, rb) = (&a[(4 * y + dy) * a_stride + 4 * x..], &b[(4 * y + dy) * b_stride + 4 * x..]);
            for dx in 0..4 {
                let (p, q) = (u32::from(ra[dx]), u32::from(rb[dx]));
                s[0] += p;
                s[1] += q;
                s[2] += p * p + q * q;
                s[3] += p * q;
            }
        }
        s
    };
    let row = |y: usize| (0..w).map(|x| block(x, y)).collect::<Vec<_>>();
    let mut above = row(0);
    let mut total = 0.0;
    for y in 1..h {
        let below = row(y);
        for x in 0..w - 1 {
            let s = |k: usize| f64::from(above[x][k] + above[x + 1][k] + below[x][k] + below[x + 1][k]);
            total += ssim_end(s(0), s(1), s(2), s(3));
        }
        above = below;
    }
    total / ((w - 1) * (h - 1)) as f64
}

/// One 8x8 window's SSIM from its sums (`ssim_end1`, with its rounded constants).
fn ssim_end(s1: f64, s2: f64, ss: f64, s12: f64) -> f64 {
    // (0.01 * 255)^2 * 64 and (0.03 * 255)^2 * 64 * 63, rounded as ffmpeg rounds them.
    const C1: f64 = 416.0;
    const C2: f64 = 235_963.0;
    let vars = ss * 64.0 - s1 * s1 - s2 * s2;
    let covar = s12 * 64.0 - s1 * s2;
    (2.0 * s1 * s2 + C1) * (2.0 * covar + C2) / ((s1 * s1 + s2 * s2 + C1) * (vars + C2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_is_one_for_equal_planes_and_falls_with_noise() {
        let (w, h) = (64, 48);
        let a: Vec<u8> = (0..w * h).map(|i| ((i * 7) % 251) as u8).collect();
        assert!((ssim_plane(&a, w, &a, w, w, h) - 1.0).abs() < 1e-12);
        let b: Vec<u8> = a.iter().enumerate().map(|(i, p)| p.saturating_add(((i * 13) % 9) as u8)).collect();
        let s = ssim_plane(&a, w, &b, w, w, h);
        assert!(s < 0.999 && s > 0.5, "{s}");
    }
}
