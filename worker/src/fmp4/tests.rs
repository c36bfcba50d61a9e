use super::*;

fn check_group(times: &[f64], end: f64, expected: &[(Range<usize>, f64)]) {
    let got: Vec<_> = group(times, end, 6.0).into_iter().map(|(r, _, d)| (r, (d * 1000.0).round() / 1000.0)).collect();
    assert_eq!(got, expected);
}

#[test]
fn segments_are_whole_gops() {
    check_group(&[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0], 13.0, &[(0..3, 6.0), (3..6, 6.0), (6..7, 1.0)]);
    // 29.97 fps: keyframes land on the first frame at or after each 2 s mark.
    check_group(&[0.0, 2.002, 4.004, 6.006, 8.008], 9.0, &[(0..3, 6.006), (3..5, 2.994)]);
    check_group(&[0.0], 0.5, &[(0..1, 0.5)]);
    // Past 30 s at 29.97 fps a segment's first frame is 30.030 s but the next
    // one's 36.003 s (frame 1079): a frame short of 6 s, and still a segment.
    check_group(&[30.03, 32.032, 34.0007, 36.0027, 38.0047, 40.007], 41.0, &[(0..3, 5.973), (3..6, 4.997)]);
}

fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(body);
    v
}

#[test]
fn finds_the_first_sample_of_the_video_track() {
    // tfhd: flags default-base-is-moof (0x020000), track 1.
    let tfhd = bx(b"tfhd", &[0, 2, 0, 0, 0, 0, 0, 1]);
    // trun: flags data-offset|sample-size (0x201), 2 samples, offset filled below.
    let mut trun_body = vec![0, 0, 2, 1, 0, 0, 0, 2, 0, 0, 0, 0];
    trun_body.extend_from_slice(&100u32.to_be_bytes());
    trun_body.extend_from_slice(&50u32.to_be_bytes());
    let traf_len = 8 + tfhd.len() + 8 + trun_body.len();
    let moof_len = 8 + traf_len;
    trun_body[8..12].copy_from_slice(&((moof_len + 8) as u32).to_be_bytes());
    let traf = bx(b"traf", &[tfhd, bx(b"trun", &trun_body)].concat());
    let moof = bx(b"moof", &traf);
    let mdat = bx(b"mdat", &[7u8; 150]);
    let init = [bx(b"ftyp", b"isom"), bx(b"moov", &[])].concat();
    let file = [init.clone(), moof.clone(), mdat].concat();
    let l = layout(&file, 1).unwrap();
    assert_eq!(l.init, (0, init.len() as u64));
    let start = (init.len() + moof.len() + 8) as u64;
    assert_eq!(l.fragments[0].first_sample, (start, start + 100));
    assert!(layout(&file, 2).is_err(), "no such track");
    assert!(layout(&file[..file.len() - 1], 1).is_err(), "truncated");
}
