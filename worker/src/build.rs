//! The encoder build a worker reports when it registers. The chunks of one
//! rendition are joined under one set of codec headers (H.264's SPS and PPS), which
//! only the same encoder build writes for the same settings; so the coordinator
//! leases a rendition's chunks to workers of the build that made its first accepted
//! chunk (see `lease_claim!` in the coordinator).

use ffmpeg_next as ff;

/// What decides the codec headers this machine's encoders write for a rendition's
/// settings: Drake's version (which sets them), libavcodec's, and libx264's core
/// and revision, e.g. `drake 0.1.0, libavcodec 59.37.100, libx264 core 164 r3095 baf4d0d`.
pub fn encoder_build() -> String {
    let v = ff::codec::version();
    let x264 = x264_core().unwrap_or_else(|| "none".into());
    format!("drake {}, libavcodec {}.{}.{}, libx264 {x264}", env!("CARGO_PKG_VERSION"), v >> 16, (v >> 8) & 0xff, v & 0xff)
}

/// libx264's `core 164 r3095 baf4d0d`: the version it writes in its first frame's
/// SEI (a library of the same soname may be a later revision). Encodes one black
/// 64×64 frame; `None` without libx264.
fn x264_core() -> Option<String> {
    let codec = ff::encoder::find_by_name("libx264")?;
    let mut ctx = ff::codec::context::Context::new_with_codec(codec).encoder().video().ok()?;
    ctx.set_width(64);
    ctx.set_height(64);
    ctx.set_format(ff::format::Pixel::YUV420P);
    ctx.set_time_base(ff::Rational(1, 25));
    let mut options = ff::Dictionary::new();
    options.set("preset", "ultrafast");
    options.set("threads", "1");
    let mut encoder = ctx.open_as_with(codec, options).ok()?;
    let mut frame = ff::frame::Video::new(ff::format::Pixel::YUV420P, 64, 64);
    for plane in 0..3 {
        frame.data_mut(plane).fill(if plane == 0 { 16 } else { 128 });
    }
    frame.set_pts(Some(0));
    encoder.send_frame(&frame).ok()?;
    encoder.send_eof().ok()?;
    let mut packet = ff::Packet::empty();
    while encoder.receive_packet(&mut packet).is_ok() {
        if let Some(core) = packet.data().and_then(sei_core) {
            return Some(core);
        }
    }
    None
}

/// `core N rREV HASH` from x264's SEI text ("x264 - core 164 r3095 baf4d0d - H.264/MPEG-4 AVC codec ...").
fn sei_core(data: &[u8]) -> Option<String> {
    const MARK: &[u8] = b"x264 - core ";
    let at = data.windows(MARK.len()).position(|w| w == MARK)? + MARK.len() - "core ".len();
    let text = &data[at..];
    let end = text.windows(3).position(|w| w == b" - ").unwrap_or(text.len()).min(64);
    Some(String::from_utf8_lossy(&text[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_x264_core_is_read_from_its_sei() {
        let sei = b"\x00\x00\x01\x06\x05\xffx264 - core 164 r3095 baf4d0d - H.264/MPEG-4 AVC codec - Copyleft";
        assert_eq!(sei_core(sei).as_deref(), Some("core 164 r3095 baf4d0d"));
        assert_eq!(sei_core(b"no sei here"), None);
    }

    #[test]
    fn this_machines_build_names_drake_libavcodec_and_libx264() {
        crate::init().unwrap();
        let build = encoder_build();
        assert!(build.starts_with(&format!("drake {}, libavcodec 59.", env!("CARGO_PKG_VERSION"))), "{build}");
        assert!(build.contains(", libx264 core 1"), "{build}");
    }
}
