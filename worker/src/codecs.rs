//! RFC 6381 `codecs` strings for HLS `CODECS` attributes.

/// `avc1.PPCCLL` from H.264 extradata, either an avcC record or Annex B SPS.
pub fn avc1(extradata: &[u8]) -> Option<String> {
    let sps = if extradata.first() == Some(&1) && extradata.len() >= 4 {
        &extradata[1..4]
    } else {
        // Annex B: find a start code followed by an SPS NAL (type 7).
        let at = extradata.windows(4).position(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 7)?;
        extradata.get(at + 4..at + 7)?
    };
    Some(format!("avc1.{:02x}{:02x}{:02x}", sps[0], sps[1], sps[2]))
}

/// `vp09.00.LL.08` for 8-bit 4:2:0 profile 0, the level from picture size and rate
/// (VP9 level table: max luma picture size and luma sample rate).
pub fn vp09(width: u32, height: u32, fps: f64) -> String {
    const LEVELS: &[(u32, u64, f64)] = &[
        (10, 36_864, 829_440.0),
        (11, 73_728, 2_764_800.0),
        (20, 122_880, 4_608_000.0),
        (21, 245_760, 9_216_000.0),
        (30, 552_960, 20_736_000.0),
        (31, 983_040, 36_864_000.0),
        (40, 2_228_224, 83_558_400.0),
        (41, 2_228_224, 160_432_128.0),
        (50, 8_912_896, 311_951_360.0),
        (51, 8_912_896, 588_251_136.0),
        (52, 8_912_896, 1_176_502_272.0),
        (60, 35_651_584, 1_176_502_272.0),
        (61, 35_651_584, 2_353_004_544.0),
        (62, 35_651_584, 4_706_009_088.0),
    ];
    let pixels = width as u64 * height as u64;
    let rate = pixels as f64 * fps;
    let level = LEVELS.iter().find(|(_, p, r)| pixels <= *p && rate <= *r).map_or(62, |l| l.0);
    format!("vp09.00.{level}.08")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        assert_eq!(avc1(&[0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0xac]).as_deref(), Some("avc1.64001f"));
        assert_eq!(avc1(&[1, 0x64, 0x00, 0x28, 0xff]).as_deref(), Some("avc1.640028"));
        assert_eq!(avc1(&[0, 0, 1, 0x68]), None);
        assert_eq!(vp09(1280, 720, 30.0), "vp09.00.31.08");
        assert_eq!(vp09(1920, 1080, 30.0), "vp09.00.40.08");
        assert_eq!(vp09(640, 360, 30.0), "vp09.00.21.08");
    }
}
