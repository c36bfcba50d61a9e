//! End-to-end tests of the engine subcommands: the real `drake` binary on media
//! generated here with the ffmpeg CLI, checked for what a viewer would notice.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A 1280x720 30 fps source with a tone: `d` seconds.
fn hd_source(dir: &Dir, d: u32) -> String {
    let src = dir.s("src.mp4");
    let d = d.to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=s=1280x720:r=30:d={d}"),
        "-f",
        "lavfi",
        "-i",
        &format!("sine=f=440:d={d}:sample_rate=44100"),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "250",
        "-c:a",
        "aac",
        "-shortest",
        &src,
    ]);
    src
}

fn files(report: &Value) -> Vec<String> {
    report["checksums"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap().to_string()).collect()
}

#[test]
fn probe_describes_streams() {
    let dir = Dir::new();
    let src = hd_source(&dir, 3);
    let p: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    assert!((p["duration"].as_f64().unwrap() - 3.0).abs() < 0.1);
    let v = &p["streams"][0];
    assert_eq!(
        (v["kind"].as_str(), v["codec"].as_str(), v["display_width"].as_u64(), v["frame_rate"].as_f64()),
        (Some("video"), Some("h264"), Some(1280), Some(30.0))
    );
    let a = &p["streams"][1];
    assert_eq!((a["kind"].as_str(), a["sample_rate"].as_u64(), a["channels"].as_u64()), (Some("audio"), Some(44100), Some(1)));
}

/// A browser's MediaRecorder writes WebM as a stream: no duration in its header
/// and no cues. Its length is still measured, so the thumbnails spread over it,
/// the storyboard covers it, and limits and chunking see it.
#[test]
fn a_recording_that_does_not_say_how_long_it_is_is_measured() {
    let dir = Dir::new();
    let src = dir.s("recording.webm");
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=20", "-f", "lavfi", "-i", "sine=d=20"])
        .args(["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus", "-f", "webm", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&src, out.stdout).unwrap();
    let header = ffprobe(&["-show_entries", "format=duration", &src]);
    assert_eq!(header["format"]["duration"], Value::Null, "the header says no duration: {header}");

    let p: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    let duration = p["duration"].as_f64().unwrap();
    assert!((duration - 20.0).abs() < 0.1, "{duration}");
    let thumbs = dir.path("thumbs");
    let printed = drake_ok(&["thumbnails", &src, "--out", thumbs.to_str().unwrap()]);
    assert!(printed.lines().any(|l| l.starts_with(r#"{"type":"progress""#)), "thumbnails print their progress: {printed}");
    let t: Value = serde_json::from_slice(&std::fs::read(thumbs.join("thumbnails.json")).unwrap()).unwrap();
    assert_eq!(t["storyboard"]["tiles"].as_f64(), Some((duration / 2.0).ceil()), "a tile every 2 s: {}", t["storyboard"]);
    let last = t["thumbnails"].as_array().unwrap().last().unwrap()["time"].as_f64().unwrap();
    assert!(last > 15.0, "thumbnails spread over the video: {}", t["thumbnails"]);
}

#[test]
fn ladder_renditions_share_keyframes_and_segments_start_on_them() {
    let dir = Dir::new();
    let src = hd_source(&dir, 13);
    let plan: Value = serde_json::from_str(&drake_ok(&["plan", &src, "--profile", "web"])).unwrap();
    let names: Vec<_> = plan["renditions"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["240p", "360p", "480p", "720p"]);
    assert_eq!(plan["skipped"][0]["name"], "1080p");

    let mut keyframe_sets = Vec::new();
    for name in ["240p", "720p"] {
        let out = dir.path(name);
        let r = transcode(&src, "web", name, &out);
        let mp4 = out.join(r["files"]["progressive"].as_str().unwrap());

        // Dimensions, duration, frame count.
        let s = &streams(&mp4)[0];
        let expected = if name == "240p" { (426, 240) } else { (1280, 720) };
        assert_eq!((s["width"].as_u64().unwrap(), s["height"].as_u64().unwrap()), expected);
        assert_eq!(s["pix_fmt"], "yuv420p");
        assert!((format_duration(&mp4) - 13.0).abs() < 0.07, "{name} duration");
        assert_eq!(r["frame_count"], 390);

        // Fast start: moov before mdat.
        let bytes = std::fs::read(&mp4).unwrap();
        let moov = bytes.windows(4).position(|w| w == b"moov").unwrap();
        let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap();
        assert!(moov < mdat, "moov must precede mdat");

        // Keyframes every 2 s of presentation time.
        let packets = video_packets(&mp4);
        let keys: Vec<f64> = packets.iter().filter(|p| p.3).map(|p| p.0).collect();
        assert_eq!(keys, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0], "{name}");
        keyframe_sets.push(keys);

        // Keyframe index: each entry is a real keyframe sample at that offset and size.
        let index: Value = serde_json::from_slice(&std::fs::read(out.join("keyframes.json")).unwrap()).unwrap();
        let entries = index["keyframes"].as_array().unwrap();
        assert_eq!(entries.len(), 7);
        for e in entries {
            let (t, off, size) = (e["time"].as_f64().unwrap(), e["offset"].as_u64().unwrap(), e["size"].as_u64().unwrap());
            assert!(
                packets.iter().any(|p| p.3 && p.1 == off && p.2 == size && (p.0 - t).abs() < 1e-3),
                "{name}: index entry {e} is not a keyframe sample"
            );
            // An H.264 IDR sample starts with a length-prefixed NAL; type 5 (IDR) appears in it.
            let sample = &bytes[off as usize..(off + size) as usize];
            assert!(sample_has_idr(sample), "{name}: no IDR NAL at {off}");
        }

        // HLS: segments of whole GOPs, each starting with a keyframe.
        let playlist = std::fs::read_to_string(out.join("playlist.m3u8")).unwrap();
        let durations: Vec<f64> =
            playlist.lines().filter_map(|l| l.strip_prefix("#EXTINF:")).map(|l| l.trim_end_matches(',').parse().unwrap()).collect();
        assert_eq!(durations, [6.0, 6.0, 1.0]);
        let init = std::fs::read(out.join("init.mp4")).unwrap();
        let iframes = std::fs::read_to_string(out.join("iframes.m3u8")).unwrap();
        assert!(iframes.contains("#EXT-X-I-FRAMES-ONLY"));
        let ranges = byteranges(&iframes);
        assert_eq!(ranges.len(), 7);
        for (i, seg) in playlist.lines().filter(|l| l.ends_with(".m4s")).enumerate() {
            let joined = dir.path(&format!("{name}-joined-{i}.mp4"));
            let seg_bytes = std::fs::read(out.join(seg)).unwrap();
            std::fs::write(&joined, [init.clone(), seg_bytes.clone()].concat()).unwrap();
            let pk = video_packets(&joined);
            assert!(pk[0].3, "{name} {seg} starts with a keyframe");
            assert!((pk[0].0 - 6.0 * i as f64).abs() < 1e-3, "{name} {seg} starts at {}", pk[0].0);
            // Every I-frame byte range into this segment starts at a moof and ends at
            // the end of a keyframe sample.
            for (len, off, file) in ranges.iter().filter(|r| r.2 == seg) {
                assert_eq!(&seg_bytes[*off as usize + 4..*off as usize + 8], b"moof", "{file}@{off}");
                let end = init.len() as u64 + off + len;
                assert!(pk.iter().any(|p| p.3 && p.1 + p.2 == end), "{name}: range {len}@{off} of {file} does not end a keyframe");
            }
        }
        // The whole HLS rendition plays for the full duration.
        assert!((format_duration(&out.join("playlist.m3u8")) - 13.0).abs() < 0.1);

        // Every file listed with its checksum exists.
        for f in files(&r) {
            assert!(out.join(&f).metadata().unwrap().len() > 0, "{f}");
        }
        assert!(!out.join("stream.fmp4").exists());
        assert_eq!(r["video"]["encoder"], "libx264");
        assert_eq!(r["video"]["encoder_options"]["x264-params"], "keyint=61:min-keyint=61:scenecut=0:open-gop=0");
        assert!(r["codecs"].as_str().unwrap().starts_with("avc1.64"));
        // The HLS is video-only (the audio is the job's group); the MP4 has both.
        assert!(!r["codecs"].as_str().unwrap().contains("mp4a"), "{}", r["codecs"]);
        let tracks: Vec<String> = streams(&out.join(r["files"]["progressive"].as_str().unwrap()))
            .iter()
            .map(|s| s["codec_type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(tracks, ["video", "audio"]);
        assert!(r["peak_bitrate"].as_u64() >= r["average_bitrate"].as_u64());
    }
    assert_eq!(keyframe_sets[0], keyframe_sets[1]);
}

/// Each rendition's PSNR and SSIM, from the GOPs decoded back in the encoding
/// process, agree with ffmpeg's `psnr` and `ssim` filters run on the same files:
/// exactly over the same frames, and within 0.1 dB over all of them.
#[test]
fn measured_quality_agrees_with_ffmpegs_own_filters() {
    let dir = Dir::new();
    let src = dir.s("src.mp4");
    // Moving content with grain, so that the encode loses something to measure.
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=1280x720:r=30:d=13", "-vf", "noise=alls=6:allf=t",
             "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-g", "250", &src]);
    let db = |mse: f64| 10.0 * (255.0f64 * 255.0 / mse).log10();
    for name in ["240p", "480p"] {
        let out = dir.path(name);
        let r = transcode(&src, "web", name, &out);
        let q = &r["quality"];
        let mp4 = out.join(format!("{name}.mp4"));
        // 7 GOPs of 60 frames: GOP 0 was decoded back (one in ten), SSIM on every fourth frame.
        assert_eq!((q["psnr_frames"].as_u64(), q["ssim_frames"].as_u64()), (Some(60), Some(15)), "{name}: {q}");
        let (psnr, frames) = ffmpeg_quality(&mp4, &src, "psnr", None);
        let mean = |key: &str| frames[..60].iter().map(|f| f[key]).sum::<f64>() / 60.0;
        let (ours_y, ours) = (q["psnr_y"].as_f64().unwrap(), q["psnr"].as_f64().unwrap());
        eprintln!(
            "{name}: PSNR Y {ours_y:.3} dB, all {ours:.3} dB; ffmpeg on the same frames {:.3}, {:.3}; on every frame {:.3}, {:.3}",
            db(mean("mse_y")),
            db(mean("mse_avg")),
            psnr["y"],
            psnr["average"]
        );
        assert!((ours_y - db(mean("mse_y"))).abs() <= 0.01, "{name}: PSNR Y {ours_y} vs ffmpeg {}", db(mean("mse_y")));
        assert!((ours - db(mean("mse_avg"))).abs() <= 0.01, "{name}: PSNR {ours} vs ffmpeg {}", db(mean("mse_avg")));
        assert!((ours_y - psnr["y"]).abs() <= 0.1, "{name}: PSNR Y {ours_y} vs ffmpeg over every frame {}", psnr["y"]);
        assert!((ours - psnr["average"]).abs() <= 0.1, "{name}: PSNR {ours} vs ffmpeg over every frame {}", psnr["average"]);
        assert!(ours > 25.0 && ours < 60.0, "{name}: {ours} dB");

        let (ssim, frames) = ffmpeg_quality(&mp4, &src, "ssim", None);
        let sampled = |key: &str| (0..60).step_by(4).map(|n| frames[n][key]).sum::<f64>() / 15.0;
        let (ours_y, ours) = (q["ssim_y"].as_f64().unwrap(), q["ssim"].as_f64().unwrap());
        eprintln!("{name}: SSIM {ours:.5}; ffmpeg on the same frames {:.5}, on every frame {:.5}", sampled("All"), ssim["All"]);
        assert!((ours_y - sampled("Y")).abs() <= 0.001, "{name}: SSIM Y {ours_y} vs ffmpeg {}", sampled("Y"));
        assert!((ours - sampled("All")).abs() <= 0.001, "{name}: SSIM {ours} vs ffmpeg {}", sampled("All"));
        assert!((ours - ssim["All"]).abs() <= 0.01, "{name}: sampled SSIM {ours}, every frame {}", ssim["All"]);
        assert!(q["vmaf"].is_null() && q["vmaf_note"].as_str().unwrap().contains("libvmaf"), "{q}");
    }
    // Measuring can be turned off (to measure what it costs).
    let out = dir.path("unmeasured");
    drake_ok(&["transcode", &src, "--rendition", "240p", "--out", out.to_str().unwrap(), "--no-quality"]);
    let r: Value = serde_json::from_slice(&std::fs::read(out.join("rendition.json")).unwrap()).unwrap();
    assert!(r.get("quality").is_none(), "{r}");
}

#[test]
fn one_decode_makes_several_renditions_like_separate_runs() {
    let dir = Dir::new();
    let src = hd_source(&dir, 5);
    let (a240, a480) = (dir.path("a240"), dir.path("a480"));
    drake_ok(&["transcode", &src, "--rendition", "240p", "--out", &dir.s("a240"), "--rendition", "480p", "--out", &dir.s("a480")]);
    for (name, bundled) in [("240p", &a240), ("480p", &a480)] {
        let alone = dir.path(&format!("alone{name}"));
        let report = transcode(&src, "web", name, &alone);
        let bundled_report: Value = serde_json::from_slice(&std::fs::read(bundled.join("rendition.json")).unwrap()).unwrap();
        // The same plan, frames, keyframes, segments and encoder settings as a run of
        // its own. (Not the same bytes: x264's threaded VBV rate control varies a little
        // with timing.)
        for key in ["name", "width", "height", "frame_count", "duration", "keyframe_times", "segment_count", "codecs", "video", "audio"] {
            assert_eq!(bundled_report[key], report[key], "{name}: {key}");
        }
        assert_eq!(files(&bundled_report), files(&report), "{name}: the same files");
        let size = |r: &Value| {
            r["checksums"].as_array().unwrap().iter().find(|c| c["path"] == format!("{name}.mp4")).unwrap()["size"].as_f64().unwrap()
        };
        let ratio = size(&bundled_report) / size(&report);
        assert!((0.97..1.03).contains(&ratio), "{name}: MP4 size ratio {ratio}");
        let packets = video_packets(&bundled.join(format!("{name}.mp4")));
        let keys: Vec<f64> = packets.iter().filter(|p| p.3).map(|p| p.0).collect();
        assert_eq!(keys, [0.0, 2.0, 4.0], "{name}");
    }

    // Each rendition needs its own directory, once.
    for (args, reason) in [
        (vec!["--rendition", "240p", "--out", "x", "--rendition", "480p"], "give one --out per rendition"),
        (vec!["--rendition", "240p", "--out", "x", "--rendition", "240p", "--out", "y"], "asked for twice"),
    ] {
        let out = drake(&[&["transcode", src.as_str()][..], &args[..]].concat());
        assert_eq!(out.status.code(), Some(65));
        assert!(String::from_utf8_lossy(&out.stderr).contains(reason), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn codec_threads_follow_the_cores_a_task_is_given() {
    let dir = Dir::new();
    let src = hd_source(&dir, 3);
    // x264 writes its settings into the first frame's SEI: "... threads=N lookahead_threads=M ...".
    for (cores, threads) in [("1", " threads=1 "), ("4", " threads=6 ")] {
        let out = dir.path(&format!("cores{cores}"));
        drake_ok(&["transcode", &src, "--rendition", "240p", "--out", out.to_str().unwrap(), "--cores", cores]);
        let mp4 = std::fs::read(out.join("240p.mp4")).unwrap();
        let at = mp4.windows(11).position(|w| w == b"x264 - core").expect("x264's settings SEI");
        let sei = String::from_utf8_lossy(mp4[at..].split(|&b| b == 0).next().unwrap());
        assert!(sei.contains(threads), "--cores {cores}: {sei}");
    }
    let out = drake(&["transcode", &src, "--rendition", "240p", "--out", &dir.s("none"), "--cores", "0"]);
    assert_eq!(out.status.code(), Some(2), "--cores 0 is refused by the argument parser");
}

fn sample_has_idr(sample: &[u8]) -> bool {
    let mut at = 0;
    while at + 4 < sample.len() {
        let len = u32::from_be_bytes(sample[at..at + 4].try_into().unwrap()) as usize;
        if sample[at + 4] & 0x1f == 5 {
            return true;
        }
        at += 4 + len;
    }
    false
}

/// (length, offset, file) of each I-frame playlist entry.
fn byteranges(playlist: &str) -> Vec<(u64, u64, String)> {
    let lines: Vec<&str> = playlist.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let r = l.strip_prefix("#EXT-X-BYTERANGE:")?;
            let (len, off) = r.split_once('@')?;
            Some((len.parse().ok()?, off.parse().ok()?, lines[i + 1].to_string()))
        })
        .collect()
}

#[test]
fn rotated_phone_video_comes_out_upright() {
    let dir = Dir::new();
    // Coded landscape with the left half white, and a display matrix turning it a
    // quarter turn counter-clockwise (what `-metadata rotate=90` writes in FFmpeg 5.1):
    // upright, as the ffmpeg CLI's autorotate shows it, the white half is at the bottom.
    let src = dir.s("phone.mp4");
    let coded = dir.s("coded.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=black:s=640x360:r=30:d=3",
        "-vf",
        "drawbox=x=0:y=0:w=320:h=360:color=white:t=fill",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        &coded,
    ]);
    // FFmpeg 5.1 writes the rotation into the display matrix when stream-copying.
    ffmpeg(&["-i", &coded, "-c", "copy", "-metadata:s:v", "rotate=90", &src]);
    let p: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    assert_eq!(p["streams"][0]["rotation"], 270, "clockwise degrees");
    assert_eq!((p["streams"][0]["display_width"].as_u64(), p["streams"][0]["display_height"].as_u64()), (Some(360), Some(640)));
    let out = dir.path("out");
    let r = transcode(&src, "web", "360p", &out);
    assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(360), Some(640)));
    let mp4 = out.join("360p.mp4");
    let s = &streams(&mp4)[0];
    assert!(s["side_data_list"].is_null(), "no rotation left on the output");
    let (w, h, px) = first_frame_grey(&mp4);
    assert_eq!((w, h), (360, 640));
    let mean = |rows: std::ops::Range<u32>| {
        rows.clone().flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| px[(y * w + x) as usize] as f64).sum::<f64>()
            / (rows.len() as f64 * w as f64)
    };
    assert!(mean(0..300) < 50.0 && mean(340..640) > 200.0, "top {} bottom {}", mean(0..300), mean(340..640));
    // The same picture the ffmpeg CLI shows when it autorotates the source.
    let reference = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i", &src, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(reference.len(), px.len());
    let differing = px.iter().zip(&reference).filter(|(a, b)| a.abs_diff(**b) > 64).count();
    assert!(differing < px.len() / 100, "{differing} pixels differ from ffmpeg's upright picture");
}

#[test]
fn non_square_pixels_become_square_with_the_right_aspect() {
    let dir = Dir::new();
    let src = dir.s("anamorphic.mkv");
    // 720x576 with 16:15 pixels displays as 768x576 (4:3).
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=720x576:r=25:d=3", "-vf", "setsar=16/15", "-c:v", "libx264", "-preset", "ultrafast", &src]);
    let r = transcode(&src, "web", "480p", &dir.path("out"));
    let s = &streams(&dir.path("out/480p.mp4"))[0];
    assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(640), Some(480)));
    assert!(matches!(s["sample_aspect_ratio"].as_str(), None | Some("1:1")), "{}", s["sample_aspect_ratio"]);
    assert_eq!(r["frame_rate"], 25.0);
}

#[test]
fn odd_and_tiny_sources_get_even_dimensions() {
    let dir = Dir::new();
    let src = dir.s("odd.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=320x180:r=30:d=2",
        "-vf",
        "scale=321:181,setsar=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv444p",
        &src,
    ]);
    let plan: Value = serde_json::from_str(&drake_ok(&["plan", &src])).unwrap();
    assert_eq!(plan["renditions"].as_array().unwrap().len(), 1, "one rendition at its own size");
    let name = plan["renditions"][0]["name"].as_str().unwrap().to_string();
    transcode(&src, "web", &name, &dir.path("out"));
    let s = &streams(&dir.path(&format!("out/{name}.mp4")))[0];
    assert_eq!(name, "180p");
    assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(320), Some(180)), "even, and never larger than the source");
    assert_eq!(s["pix_fmt"], "yuv420p", "4:4:4 becomes 4:2:0");
}

#[test]
fn ten_bit_hevc_becomes_8bit_420_h264() {
    let dir = Dir::new();
    let src = dir.s("hevc10.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x360:r=24:d=3",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p10le",
        "-x265-params",
        "log-level=error",
        &src,
    ]);
    let p: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    assert_eq!((p["streams"][0]["codec"].as_str(), p["streams"][0]["bit_depth"].as_u64()), (Some("hevc"), Some(10)));
    let r = transcode(&src, "web", "360p", &dir.path("out"));
    let s = &streams(&dir.path("out/360p.mp4"))[0];
    assert_eq!((s["codec_name"].as_str(), s["pix_fmt"].as_str(), s["profile"].as_str()), (Some("h264"), Some("yuv420p"), Some("High")));
    assert_eq!(r["frame_count"], 72);
    assert!(r["audio"].is_null(), "no audio track invented");
    assert!(streams(&dir.path("out/360p.mp4")).iter().all(|s| s["codec_type"] != "audio"));
}

#[test]
fn variable_frame_rate_becomes_constant() {
    let dir = Dir::new();
    let src = dir.s("vfr.mkv");
    // Drop frames irregularly and keep the gaps: a variable frame rate source.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x360:r=30:d=4",
        "-vf",
        "select='not(eq(mod(n\\,7)\\,3))*not(eq(mod(n\\,11)\\,5))'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        &src,
    ]);
    let src_packets = video_packets(Path::new(&src));
    let gaps: std::collections::BTreeSet<i64> = src_packets.windows(2).map(|w| ((w[1].0 - w[0].0) * 1000.0).round() as i64).collect();
    assert!(gaps.len() > 1, "the source really is VFR: {gaps:?}");
    let r = transcode(&src, "web", "360p", &dir.path("out"));
    let pk = video_packets(&dir.path("out/360p.mp4"));
    let mut times: Vec<f64> = pk.iter().map(|p| p.0).collect();
    times.sort_by(f64::total_cmp);
    let fps = r["frame_rate"].as_f64().unwrap();
    assert!(times.windows(2).all(|w| ((w[1] - w[0]) * fps - 1.0).abs() < 0.01), "constant frame rate at {fps}");
    assert!((times.len() as f64 - 4.0 * fps).abs() <= 2.0, "{} frames", times.len());
}

#[test]
fn surround_audio_is_downmixed_to_stereo() {
    let dir = Dir::new();
    let src = dir.s("surround.mkv");
    // Only the centre channel carries sound: a naive downmix that drops it is silent.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=320x240:r=25:d=3",
        "-f",
        "lavfi",
        "-i",
        "aevalsrc=0|0|0.5*sin(440*2*PI*t)|0|0|0:c=5.1:s=48000:d=3",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "ac3",
        &src,
    ]);
    let p: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    assert_eq!(p["streams"][1]["channels"], 6);
    transcode(&src, "web", "240p", &dir.path("out"));
    let a = streams(&dir.path("out/240p.mp4")).into_iter().find(|s| s["codec_type"] == "audio").unwrap();
    assert_eq!((a["channels"].as_u64(), a["sample_rate"].as_str(), a["profile"].as_str()), (Some(2), Some("48000"), Some("LC")));
    let pcm = audio_samples(&dir.path("out/240p.mp4"), 2);
    let (l, r) = (rms(pcm.iter().step_by(2).copied()), rms(pcm.iter().skip(1).step_by(2).copied()));
    assert!(l > 0.1 && r > 0.1 && (l - r).abs() < 0.02, "centre in both channels: L {l} R {r}");
}

#[test]
fn audio_only_sources_give_an_audio_rendition() {
    let dir = Dir::new();
    let src = dir.s("song.m4a");
    ffmpeg(&["-f", "lavfi", "-i", "sine=f=440:d=9:sample_rate=44100", "-ac", "2", "-c:a", "aac", &src]);
    let plan: Value = serde_json::from_str(&drake_ok(&["plan", &src])).unwrap();
    assert_eq!(plan["renditions"][0]["name"], "audio");
    let r = transcode(&src, "web", "audio", &dir.path("out"));
    assert!(r["video"].is_null());
    assert_eq!(r["codecs"], "mp4a.40.2");
    assert!(r["files"]["iframe_playlist"].is_null());
    let st = streams(&dir.path("out/audio.mp4"));
    assert_eq!(st.len(), 1);
    assert_eq!(st[0]["codec_type"], "audio");
    assert!((format_duration(&dir.path("out/playlist.m3u8")) - 9.0).abs() < 0.1);
    let playlist = std::fs::read_to_string(dir.path("out/playlist.m3u8")).unwrap();
    assert_eq!(playlist.matches("#EXTINF").count(), 2, "{playlist}");
}

#[test]
fn only_the_default_audio_track_is_kept_and_subtitles_are_ignored() {
    let dir = Dir::new();
    let srt = dir.path("subs.srt");
    std::fs::write(&srt, "1\n00:00:00,000 --> 00:00:02,000\nhello\n").unwrap();
    let src = dir.s("multi.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=320x240:r=25:d=3",
        "-f",
        "lavfi",
        "-i",
        "sine=f=300:d=3",
        "-f",
        "lavfi",
        "-i",
        "sine=f=2000:d=3",
        "-i",
        srt.to_str().unwrap(),
        "-map",
        "0",
        "-map",
        "1",
        "-map",
        "2",
        "-map",
        "3",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        "-c:s",
        "srt",
        "-disposition:a:0",
        "0",
        "-disposition:a:1",
        "default",
        "-metadata:s:a:0",
        "language=fre",
        "-metadata:s:a:0",
        "title=Fran\"çais\n",
        "-metadata:s:a:1",
        "language=und",
        "-metadata:s:s:0",
        "language=eng",
        "-disposition:s:0",
        "forced",
        &src,
    ]);
    // The probe tells the tracks apart: languages (untagged `und` is none), titles
    // made safe to quote, subtitle dispositions, text or bitmap.
    let p: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    let (a0, a1, sub) = (&p["streams"][1], &p["streams"][2], &p["streams"][3]);
    assert_eq!(
        (a0["language"].as_str(), a0["title"].as_str(), a0["default"].as_bool()),
        (Some("fre"), Some("Français"), Some(false)),
        "{p}"
    );
    assert_eq!((a1["language"].as_str(), a1["default"].as_bool()), (None, Some(true)), "{p}");
    assert_eq!(
        (sub["kind"].as_str(), sub["codec"].as_str(), sub["text"].as_bool(), sub["language"].as_str(), sub["forced"].as_bool()),
        (Some("subtitle"), Some("subrip"), Some(true), Some("eng"), Some(true)),
        "{p}"
    );
    transcode(&src, "web", "240p", &dir.path("out"));
    let st = streams(&dir.path("out/240p.mp4"));
    assert_eq!(st.iter().map(|s| s["codec_type"].as_str().unwrap()).collect::<Vec<_>>(), ["video", "audio"]);
    // The 2000 Hz default track crosses zero ~4000 times a second; the 300 Hz one ~600.
    let pcm = audio_samples(&dir.path("out/240p.mp4"), 1);
    let crossings = pcm.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count() as f64 / 3.0;
    assert!((3000.0..5000.0).contains(&crossings), "{crossings} zero crossings per second");
}

/// A subtitle stream with more cues than any track should have (a fansub's
/// karaoke effects: tens of thousands of events) is skipped with why; the job's
/// audio, its other subtitles and, without audio, the subtitles alone go on. (It
/// failed the audio task, and so the whole job, as bad input.)
#[test]
fn a_subtitle_track_over_the_cue_limit_is_skipped_alone() {
    let dir = Dir::new();
    std::fs::write(dir.path("ok.srt"), "1\n00:00:01,000 --> 00:00:02,000\nkept\n").unwrap();
    // Each cue's text its own: ffmpeg's SubRip reader drops repeated events.
    let flood: String = (1..=25_001).map(|i| format!("{i}\n00:00:01,000 --> 00:00:02,000\nla {i}\n\n")).collect();
    std::fs::write(dir.path("flood.srt"), flood).unwrap();
    for audio in [true, false] {
        let src = dir.s(&format!("karaoke-{audio}.mkv"));
        let mut args = vec!["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=3"];
        if audio {
            args.extend(["-f", "lavfi", "-i", "sine=d=3"]);
        }
        let (ok, flood) = (dir.s("ok.srt"), dir.s("flood.srt"));
        args.extend(["-i", &ok, "-i", &flood, "-map", "0", "-map", "1", "-map", "2"]);
        if audio {
            args.extend(["-map", "3", "-c:a", "aac"]);
        }
        args.extend(["-c:v", "libx264", "-preset", "ultrafast", "-c:s", "srt", &src]);
        ffmpeg(&args);
        let out = dir.path(&format!("out-{audio}"));
        if audio {
            drake_ok(&["transcode", &src, "--rendition", "240p", "--out", out.to_str().unwrap(), "--audio"]);
        } else {
            drake_ok(&["transcode", &src, "--subtitles", "--out", out.to_str().unwrap()]);
        }
        let report: Value = serde_json::from_slice(&std::fs::read(out.join("audio.json")).unwrap()).unwrap();
        let first = if audio { 2 } else { 1 };
        assert_eq!(report["tracks"].as_array().unwrap().len(), usize::from(audio), "{report}");
        assert_eq!(report["subtitles"].as_array().unwrap().iter().map(|t| &t["stream"]).collect::<Vec<_>>(), [&json!(first)]);
        assert_eq!(
            report["skipped_subtitles"],
            json!([{"stream": first + 1, "codec": "subrip", "language": null, "reason": "more than 25000 cues"}])
        );
        assert!(std::fs::read_to_string(out.join("s0.vtt")).unwrap().contains("kept"));
    }
}

/// A fansub's Matroska carries its ASS subtitles' fonts as attached files, often
/// dozens: they are counted, not listed, and never count against the stream limit.
/// (70 fonts made it "73 streams (at most 64 are accepted)", refused as bad input.)
#[test]
fn a_matroska_with_many_attached_fonts_is_accepted() {
    let dir = Dir::new();
    std::fs::write(dir.path("s.srt"), "1\n00:00:01,000 --> 00:00:02,000\nsung\n").unwrap();
    let src = dir.s("fansub.mkv");
    let srt = dir.s("s.srt");
    let mut args: Vec<String> = ["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=2", "-f", "lavfi", "-i", "sine=d=2", "-i", &srt]
        .into_iter()
        .map(String::from)
        .collect();
    for i in 0..70 {
        let font = dir.s(&format!("font{i}.ttf"));
        std::fs::write(&font, format!("not really a font {i}")).unwrap();
        args.extend(["-attach".into(), font, format!("-metadata:s:t:{i}"), "mimetype=application/x-truetype-font".into()]);
    }
    args.extend(["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-c:s", "ass", &src].map(String::from));
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let p: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    assert_eq!((p["streams"].as_array().unwrap().len(), &p["attachments"]), (3, &json!(70)), "{p}");
    transcode(&src, "web", "240p", &dir.path("out"));
    drake_ok(&["transcode", &src, "--rendition", "240p", "--out", &dir.s("audio"), "--audio"]);
    assert!(std::fs::read_to_string(dir.path("audio/s0.vtt")).unwrap().contains("sung"));
}

#[test]
fn ts_webm_and_hevc_are_accepted() {
    let dir = Dir::new();
    let ts = dir.s("broadcast.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x360:r=25:d=4",
        "-f",
        "lavfi",
        "-i",
        "sine=d=4",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        &ts,
    ]);
    let webm = dir.s("clip.webm");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x360:r=30:d=4",
        "-f",
        "lavfi",
        "-i",
        "sine=d=4",
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-c:a",
        "libopus",
        &webm,
    ]);
    let hevc = dir.s("hevc.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x360:r=30:d=4",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
        "-tag:v",
        "hvc1",
        &hevc,
    ]);
    for (src, fps) in [(&ts, 25.0), (&webm, 30.0), (&hevc, 30.0)] {
        let out = dir.path(&format!("out-{}", Path::new(src).extension().unwrap().to_str().unwrap()));
        let r = transcode(src, "web", "360p", &out);
        assert!((r["duration"].as_f64().unwrap() - 4.0).abs() < 0.1, "{src}: {}", r["duration"]);
        // A TS keeps its audio/video offset: one extra frame may lead the video.
        assert!(r["frame_count"].as_u64().unwrap().abs_diff((4.0 * fps) as u64) <= 1, "{src}: {}", r["frame_count"]);
        let keys: Vec<f64> = video_packets(&out.join("360p.mp4")).iter().filter(|p| p.3).map(|p| p.0).collect();
        assert_eq!(keys[..2], [0.0, 2.0], "{src}: keyframes start at zero even when the source does not");
        assert!(keys.iter().all(|k| (k / 2.0 - (k / 2.0).round()).abs() < 1e-6), "{src}: {keys:?}");
    }
}

#[test]
fn vp9_profile_keeps_keyframes_aligned() {
    let dir = Dir::new();
    let src = dir.s("src.mp4");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=1280x720:r=30:d=5", "-c:v", "libx264", "-preset", "ultrafast", &src]);
    let r = transcode(&src, "vp9", "360p", &dir.path("out"));
    assert_eq!(r["video"]["encoder"], "libvpx-vp9");
    assert!(r["codecs"].as_str().unwrap().starts_with("vp09.00."));
    let keys: Vec<f64> = video_packets(&dir.path("out/360p.mp4")).iter().filter(|p| p.3).map(|p| p.0).collect();
    assert_eq!(keys, [0.0, 2.0, 4.0]);
    // libvpx reports every frame's errors itself: PSNR covers every frame.
    let q = &r["quality"];
    assert_eq!(q["psnr_frames"], r["frame_count"], "{q}");
    let (psnr, _) = ffmpeg_quality(&dir.path("out/360p.mp4"), &src, "psnr", None);
    let ours = q["psnr"].as_f64().unwrap();
    assert!((ours - psnr["average"]).abs() <= 0.1, "VP9 PSNR {ours} vs ffmpeg {}", psnr["average"]);
}

#[test]
fn thumbnails_skip_black_frames_and_the_storyboard_covers_the_video() {
    let dir = Dir::new();
    let src = dir.s("fade.mp4");
    // Three seconds of black, then a fade-in to a picture: the poster must not be black.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=black:s=640x360:r=25:d=3",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x360:r=25:d=7",
        "-filter_complex",
        "[1]fade=in:0:25[t];[0][t]concat=n=2:v=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        &src,
    ]);
    // On their own, and from the decode of a transcode (as the farm bundles them).
    let alone = dir.path("thumbs");
    drake_ok(&["thumbnails", &src, "--out", alone.to_str().unwrap(), "--count", "4"]);
    check_thumbnails(&alone);
    let (bundled, rendition) = (dir.path("bundled"), dir.path("360p"));
    let progress = drake_ok(&[
        "transcode",
        &src,
        "--rendition",
        "360p",
        "--out",
        rendition.to_str().unwrap(),
        "--thumbnails",
        bundled.to_str().unwrap(),
        "--thumbnails-count",
        "4",
    ]);
    assert!(progress.trim_end().ends_with(r#"{"type":"done","fraction":1.0}"#), "done comes last: {progress}");
    assert!(rendition.join("rendition.json").exists());
    check_thumbnails(&bundled);
    let report = |dir: &Path| serde_json::from_slice::<Value>(&std::fs::read(dir.join("thumbnails.json")).unwrap()).unwrap();
    let (a, b) = (report(&alone), report(&bundled));
    assert_eq!(a["storyboard"], b["storyboard"], "the same storyboard layout");
    for (x, y) in a["thumbnails"].as_array().unwrap().iter().zip(b["thumbnails"].as_array().unwrap()) {
        // Each thumbnail is picked within the same quarter of the video.
        assert_eq!((x["time"].as_f64().unwrap() / 2.5).floor(), (y["time"].as_f64().unwrap() / 2.5).floor(), "{x} vs {y}");
        assert_eq!((&x["width"], &x["height"]), (&y["width"], &y["height"]));
    }
}

/// A cover photo from a phone is stored as its sensor saw it, with an EXIF tag
/// saying how to turn it upright (6: a quarter turn clockwise). Its poster is
/// upright, as every picture viewer shows it; libav's decoder ignores the tag.
#[test]
fn a_cover_photo_is_turned_upright_by_its_exif_orientation() {
    let dir = Dir::new();
    let (png, jpeg) = (dir.s("cover.png"), dir.s("cover.jpg"));
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=300x200:d=1", "-frames:v", "1", &png]);
    ffmpeg(&["-i", &png, &jpeg]);
    let plain = std::fs::read(&jpeg).unwrap();
    // APP1 "Exif", big-endian TIFF, one IFD entry: Orientation (0x0112), SHORT, 6.
    let exif: &[u8] = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0";
    let mut turned = plain[..2].to_vec();
    turned.extend_from_slice(&[0xff, 0xe1, 0, (exif.len() + 2) as u8]);
    turned.extend_from_slice(exif);
    turned.extend_from_slice(&plain[2..]);
    let turned_jpeg = dir.s("turned.jpg");
    std::fs::write(&turned_jpeg, &turned).unwrap();
    for (cover, upright) in [(&jpeg, false), (&turned_jpeg, true)] {
        let song = dir.s(&format!("song-{upright}.mp3"));
        ffmpeg(&["-f", "lavfi", "-i", "sine=d=3", "-i", cover, "-map", "0", "-map", "1", "-c:a", "libmp3lame", "-c:v", "copy", &song]);
        let out = dir.path(&format!("thumbs-{upright}"));
        drake_ok(&["thumbnails", &song, "--out", out.to_str().unwrap()]);
        let t: Value = serde_json::from_slice(&std::fs::read(out.join("thumbnails.json")).unwrap()).unwrap();
        let poster = image::open(out.join("poster.jpg")).unwrap().to_rgb8();
        // testsrc2's red bar is at its left; a quarter turn clockwise puts it on top.
        let (size, red_at) = if upright { ((200, 300), (49, 20)) } else { ((300, 200), (20, 150)) };
        assert_eq!((&t["poster"]["width"], &t["poster"]["height"]), (&json!(size.0), &json!(size.1)), "{t}");
        assert_eq!(poster.dimensions(), size);
        let px = poster.get_pixel(red_at.0, red_at.1);
        assert!(px[0] > 180 && px[1] < 80 && px[2] < 80, "upright {upright}: {px:?}");
        let tile = &t["storyboard"];
        assert!(tile["tile_width"].as_u64() < tile["tile_height"].as_u64() || !upright, "the storyboard's tile is upright too: {tile}");
    }
}

#[test]
fn thumbnails_that_fail_in_a_transcode_do_not_cost_its_renditions() {
    let dir = Dir::new();
    let src = dir.s("src.mp4");
    test_clip(&src, "320x240", 3);
    let song = dir.s("song.m4a");
    ffmpeg(&["-f", "lavfi", "-i", "sine=f=440:d=3:sample_rate=44100", "-ac", "2", "-c:a", "aac", &song]);
    for (input, rendition, extra, reason) in [
        (src.as_str(), "240p", "0", "thumbnails not made: bad input: a thumbnail count of 0 is outside 1..=100"),
        (song.as_str(), "audio", "4", "thumbnails not made: bad input: the source has no video or cover art to take thumbnails from"),
    ] {
        let (out, thumbs) = (dir.path(&format!("{rendition}-out")), dir.path(&format!("{rendition}-thumbs")));
        let run = drake(&[
            "transcode",
            input,
            "--rendition",
            rendition,
            "--out",
            out.to_str().unwrap(),
            "--thumbnails",
            thumbs.to_str().unwrap(),
            "--thumbnails-count",
            extra,
        ]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        assert!(out.join("rendition.json").exists(), "the rendition is made");
        assert!(!thumbs.join("thumbnails.json").exists(), "no thumbnails report");
        assert!(stderr.contains(reason), "{stderr}");
    }
}

/// A thumbnails directory: five pictures that are not black, and a storyboard of
/// contiguous cues over the whole 10 s video, pointing into the sprite.
/// Storyboard tiles show the frame at their cue's time, also in a long source
/// without a keyframe index (MPEG-TS), where a seek lands past the keyframe before
/// the time and only the next keyframe would decode.
#[test]
fn storyboard_tiles_show_their_time_in_a_source_without_a_keyframe_index() {
    let dir = Dir::new();
    let src = dir.s("long.ts");
    // Over 10 minutes, so tiles are 10 s apart and each is sought; every frame n
    // flat grey at 16 + (7n mod 220); keyframes every 317 frames, off the tiles' grid.
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", &numbered_grey("32x24", 610), "-c:v", "libx264", "-preset", "ultrafast", "-g", "317", &src]);
    let out = dir.path("thumbs");
    drake_ok(&["thumbnails", &src, "--out", out.to_str().unwrap()]);
    let off = tiles_not_showing(&out, 61, |t| (t * 30.0).round() as u64);
    assert!(off.is_empty(), "tiles showing another time (time, grey, the time's grey): {off:?}");
}

/// A phone's recording has a keyframe every second or so: its thumbnails are made
/// from its keyframes alone (1 frame in 29 here), and each storyboard tile shows
/// the first keyframe of its span.
#[test]
fn thumbnails_of_a_source_with_close_keyframes_decode_keyframes_alone() {
    let dir = Dir::new();
    let src = dir.s("phone.mp4");
    // 61 s, so tiles are 2 s apart; keyframes every 29 frames, off the tiles' grid.
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", &numbered_grey("32x24", 61), "-c:v", "libx264", "-preset", "ultrafast", "-g", "29", "-keyint_min", "29", "-sc_threshold", "0", &src]);
    let out = dir.path("thumbs");
    drake_ok(&["thumbnails", &src, "--out", out.to_str().unwrap()]);
    let off = tiles_not_showing(&out, 31, |t| {
        let keyframe = ((t * 30.0).round() as u64).div_ceil(29) * 29;
        assert!((keyframe as f64) < (t + 2.0) * 30.0, "a keyframe in every span");
        keyframe
    });
    assert!(off.is_empty(), "tiles not showing the first keyframe of their span (time, grey, its grey): {off:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("thumbnails.json")).unwrap()).unwrap();
    for t in report["thumbnails"].as_array().unwrap().iter().chain([&report["poster"]]) {
        let frame = (t["time"].as_f64().unwrap() * 30.0).round() as u64;
        assert_eq!(frame % 29, 0, "a keyframe: {t}");
    }
}

/// The storyboard tiles in `out` (of a [`numbered_grey`] source; there must be
/// `count`) that do not show frame `frame(cue start)`: (start, grey, that frame's grey).
fn tiles_not_showing(out: &Path, count: usize, frame: impl Fn(f64) -> u64) -> Vec<(f64, f64, f64)> {
    let tiles = storyboard_greys(out);
    assert_eq!(tiles.len(), count);
    tiles
        .into_iter()
        .filter_map(|(t, grey)| {
            let want = numbered_grey_of(frame(t));
            ((grey - want).abs() > 4.0).then_some((t, grey.round(), want.round()))
        })
        .collect()
}

/// The storyboard's tiles in `out`: each cue's start and the mean grey (full range)
/// of its tile's middle, clear of JPEG bleeding from its neighbours.
fn storyboard_greys(out: &Path) -> Vec<(f64, f64)> {
    let vtt = std::fs::read_to_string(out.join("storyboard.vtt")).unwrap();
    let mut tiles = Vec::new();
    for cue in vtt.split("\n\n").skip(1).filter(|c| !c.is_empty()) {
        let (times, target) = cue.split_once('\n').unwrap();
        let p: Vec<f64> = times.split(" --> ").next().unwrap().split(':').map(|x| x.parse().unwrap()).collect();
        let t = p[0] * 3600.0 + p[1] * 60.0 + p[2];
        let (sheet, xywh) = target.split_once("#xywh=").unwrap();
        let [x, y, w, h]: [u32; 4] = xywh.split(',').map(|v| v.parse().unwrap()).collect::<Vec<_>>().try_into().unwrap();
        let img = image::open(out.join(sheet)).unwrap().to_luma8();
        let inner: Vec<f64> = (y + h / 4..y + 3 * h / 4)
            .flat_map(|j| (x + w / 4..x + 3 * w / 4).map(move |i| (i, j)))
            .map(|(i, j)| f64::from(img.get_pixel(i, j)[0]))
            .collect();
        tiles.push((t, inner.iter().sum::<f64>() / inner.len() as f64));
    }
    tiles
}

/// Frame `n`'s grey in [`numbered_grey`], in full range; neighbouring frames are 8 apart.
fn numbered_grey_of(n: u64) -> f64 {
    ((n * 7) % 220) as f64 * 255.0 / 219.0
}

fn check_thumbnails(out: &Path) {
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("thumbnails.json")).unwrap()).unwrap();
    let mut images = vec![report["poster"]["path"].as_str().unwrap().to_string()];
    images.extend(report["thumbnails"].as_array().unwrap().iter().map(|t| t["path"].as_str().unwrap().to_string()));
    assert_eq!(images.len(), 5);
    for name in &images {
        let img = image::open(out.join(name)).unwrap_or_else(|e| panic!("{name} decodes: {e}")).to_luma8();
        let mean = img.pixels().map(|p| p[0] as f64).sum::<f64>() / (img.width() * img.height()) as f64;
        assert!(mean > 40.0, "{name} is black (mean luma {mean})");
    }
    // Storyboard: contiguous cues from 0 to the end, pointing into the sprite.
    let vtt = std::fs::read_to_string(out.join("storyboard.vtt")).unwrap();
    assert!(vtt.starts_with("WEBVTT\n\n"));
    let secs = |s: &str| {
        let p: Vec<f64> = s.split(':').map(|x| x.parse().unwrap()).collect();
        p[0] * 3600.0 + p[1] * 60.0 + p[2]
    };
    let cues: Vec<(f64, f64)> = vtt.lines().filter_map(|l| l.split_once(" --> ")).map(|(a, b)| (secs(a), secs(b))).collect();
    assert_eq!(cues[0].0, 0.0);
    assert!(cues.windows(2).all(|w| w[0].1 == w[1].0), "contiguous");
    assert!((cues.last().unwrap().1 - 10.0).abs() < 0.05, "covers the whole video");
    let sheet = image::open(out.join("storyboard_00.jpg")).unwrap();
    for l in vtt.lines().filter(|l| l.contains("#xywh=")) {
        let xywh: Vec<u32> = l.split("#xywh=").nth(1).unwrap().split(',').map(|x| x.parse().unwrap()).collect();
        assert!(xywh[0] + xywh[2] <= sheet.width() && xywh[1] + xywh[3] <= sheet.height(), "{l}");
        assert!((100..=160).contains(&xywh[2]));
    }
}

/// Bad inputs: a non-zero exit within seconds, the bad-input code, one readable
/// line on stderr, no panic, and nothing left that looks complete.
fn check_rejected(input: &str, out: &Path, reason: &str) {
    let started = Instant::now();
    let o = drake(&["transcode", input, "--rendition", "240p", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{input}: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{input} took {:?}", started.elapsed());
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("drake: bad input: ") && last.contains(reason), "{input}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    if out.exists() {
        let left: Vec<_> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{input} left {left:?}");
    }
}

/// MPEG-TS recordings joined end to end start their timestamps over at the join.
/// Encoded as they are, the second part would be dropped and nothing would say so
/// (the container's duration counts one part too). The probe counts the joins,
/// and `drake remux` (which the coordinator runs on such a source) lays the parts
/// one after another in Matroska, which encodes whole: both tones, in order. The
/// source itself is refused, by the whole encode and by the audio task every
/// chunked job has, saying how to make it one timeline. A stream whose timestamps
/// wrap around (every 26.5 hours of a broadcast's clock) is one timeline and is
/// encoded whole.
#[test]
fn recordings_joined_end_to_end_are_made_one_timeline_not_cut_short() {
    let dir = Dir::new();
    joined_recordings(&dir, "320x240", 30, 5, &[]);
    check_rejected(&dir.s("joined.ts"), &dir.path("whole"), "timestamps go back from");
    let o = drake(&["transcode", &dir.s("joined.ts"), "--rendition", "240p", "--out", &dir.s("audio"), "--audio"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("joined end to end") && stderr.contains("drake remux SOURCE"), "{stderr}");

    let probe: Value = serde_json::from_str(&drake_ok(&["probe", &dir.s("joined.ts")])).unwrap();
    assert_eq!(probe["timeline_joins"], 1, "{probe}");
    let remuxed: Value = serde_json::from_str(&drake_ok(&["remux", &dir.s("joined.ts"), "--out", &dir.s("one.mkv")])).unwrap();
    assert_eq!(remuxed["parts"], 2, "{remuxed}");
    let probe: Value = serde_json::from_str(&drake_ok(&["probe", &dir.s("one.mkv")])).unwrap();
    assert!(probe.get("timeline_joins").is_none() && (probe["duration"].as_f64().unwrap() - 10.0).abs() < 0.1, "{probe}");
    let r = transcode(&dir.s("one.mkv"), "web", "240p", &dir.path("one"));
    assert!((300..=302).contains(&r["frame_count"].as_u64().unwrap()), "{r}");
    let audio = mono_48k(&dir.path("one/240p.mp4"));
    let (first, second) = (tone_hz(&audio[48000..4 * 48000]), tone_hz(&audio[6 * 48000..9 * 48000]));
    assert!((first - 440.0).abs() <= 10.0 && (second - 880.0).abs() <= 10.0, "tones {first} and {second} Hz");

    // The same 20 s with timestamps that wrap past 2^33 ticks (26.5 hours) 8.6 s in, and without.
    let mut frames = Vec::new();
    for (name, offset) in [("wrap.ts", "95433.7"), ("plain.ts", "0")] {
        #[rustfmt::skip]
        ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=20", "-f", "lavfi", "-i", "sine=d=20", "-c:v", "libx264",
                 "-preset", "ultrafast", "-c:a", "aac", "-output_ts_offset", offset, "-f", "mpegts", &dir.s(name)]);
        let probe: Value = serde_json::from_str(&drake_ok(&["probe", &dir.s(name)])).unwrap();
        assert!(probe.get("timeline_joins").is_none(), "{name}: {probe}");
        frames.push(transcode(&dir.s(name), "web", "240p", &dir.path(&format!("out-{name}")))["frame_count"].as_u64().unwrap());
    }
    assert!(frames[0] == frames[1] && frames[0] >= 600, "frames (wrapped, plain): {frames:?}");
}

/// `src` remuxed as a fast-start MP4 (its header first) and cut after half its
/// bytes: a header that promises more than the file holds. Gives its path.
fn faststart_cut_in_half(dir: &Dir, src: &str) -> String {
    let faststart = dir.s("faststart.mp4");
    ffmpeg(&["-i", src, "-c", "copy", "-movflags", "+faststart", &faststart]);
    let bytes = std::fs::read(&faststart).unwrap();
    std::fs::write(dir.path("short.mp4"), &bytes[..bytes.len() / 2]).unwrap();
    dir.s("short.mp4")
}

#[test]
fn bad_inputs_are_rejected_cleanly() {
    let dir = Dir::new();
    let good = hd_source(&dir, 6);
    let bytes = std::fs::read(&good).unwrap();

    std::fs::write(dir.path("empty.mp4"), b"").unwrap();
    check_rejected(&dir.s("empty.mp4"), &dir.path("o1"), "empty");

    let random: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.path("random.mp4"), random).unwrap();
    check_rejected(&dir.s("random.mp4"), &dir.path("o2"), "not a media file");

    std::fs::write(dir.path("notes.txt"), "This is not a video.\n".repeat(100)).unwrap();
    check_rejected(&dir.s("notes.txt"), &dir.path("o3"), "");

    // A photo or a caption file sent as the source: libav knows them, Drake refuses them.
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240", "-frames:v", "1", &dir.s("photo.png")]);
    check_rejected(&dir.s("photo.png"), &dir.path("o6"), "a still image (png), not a video or audio file");
    std::fs::write(dir.path("captions.srt"), "1\n00:00:01,000 --> 00:00:02,000\nHello\n").unwrap();
    check_rejected(&dir.s("captions.srt"), &dir.path("o7"), "a SubRip subtitle file (srt), not a video or audio container");

    // moov at the end, cut off: the container cannot even be opened.
    std::fs::write(dir.path("cut.mp4"), &bytes[..bytes.len() / 3]).unwrap();
    check_rejected(&dir.s("cut.mp4"), &dir.path("o4"), "");

    // Fast-start MP4 cut short: the header promises 6 s the data does not hold.
    check_rejected(&faststart_cut_in_half(&dir, &good), &dir.path("o5"), "header declares");

    // A WAV whose format tag no decoder knows.
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + 48000u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&0x7777u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&48000u32.to_le_bytes());
    wav.extend_from_slice(&96000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&48000u32.to_le_bytes());
    wav.extend(std::iter::repeat_n(0u8, 48000));
    std::fs::write(dir.path("odd.wav"), wav).unwrap();
    let o = drake(&["transcode", &dir.s("odd.wav"), "--rendition", "audio", "--out", dir.path("o6").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unsupported audio codec"));

    // Probe and thumbnails reject the same way.
    let o = drake(&["probe", &dir.s("random.mp4")]);
    assert_eq!(o.status.code(), Some(65));
    let o = drake(&["thumbnails", &dir.s("notes.txt"), "--out", dir.path("o7").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));

    // A rendition that would upscale is refused with the planner's reason.
    let o = drake(&["transcode", &good, "--rendition", "1080p", "--out", dir.path("o8").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("would upscale"));
}

#[test]
fn caption_files_become_webvtt_and_malformed_ones_name_the_line() {
    let dir = Dir::new();
    let srt = dir.path("fr.srt");
    std::fs::write(&srt, "1\r\n00:00:01,000 --> 00:00:02,500\r\nBonjour\r\n\r\n2\r\n00:00:03,000 --> 00:00:04,000\r\nEncore\r\n").unwrap();
    let vtt = drake_ok(&["captions", srt.to_str().unwrap()]);
    assert_eq!(vtt, "WEBVTT\n\n00:00:01.000 --> 00:00:02.500\nBonjour\n\n00:00:03.000 --> 00:00:04.000\nEncore\n");
    // ffmpeg reads what it wrote as WebVTT, with the same two cues.
    let out = dir.path("fr.vtt");
    std::fs::write(&out, &vtt).unwrap();
    let o = std::process::Command::new("ffmpeg").args(["-v", "error", "-i", out.to_str().unwrap(), "-f", "srt", "-"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).matches(" --> ").count(), 2);

    // A source's text subtitles come out timed like its video, whose outputs start
    // at 0 even when the container starts later (here at 1.4 s).
    let src = dir.s("subbed.mkv");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=5", "-i", srt.to_str().unwrap(), "-map", "0", "-map", "1",
             "-c:v", "libx264", "-preset", "ultrafast", "-c:s", "ass", "-output_ts_offset", "1.4", &src]);
    let vtt = drake_ok(&["captions", &src, "--stream", "1"]);
    assert_eq!(vtt, "WEBVTT\n\n00:00:01.000 --> 00:00:02.500\nBonjour\n\n00:00:03.000 --> 00:00:04.000\nEncore\n", "{vtt}");
    let o = drake(&["captions", &src, "--stream", "0"]);
    assert_eq!(o.status.code(), Some(65), "the video stream is not subtitles");

    let broken = dir.path("broken.srt");
    std::fs::write(&broken, "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 --> 00:00:0x,000\nbad\n").unwrap();
    let o = drake(&["captions", broken.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken.srt: line 6: bad timestamp"), "{err}");
}

#[test]
fn profile_errors_name_the_file_line_and_key() {
    let dir = Dir::new();
    let src = hd_source(&dir, 1);
    let web = include_str!("../profiles/web.toml");
    let path = dir.path("mine.toml");
    std::fs::write(&path, web.replacen("crf = 23", "crf = 23\nsharpness = 3", 1)).unwrap();
    let o = drake(&["plan", &src, "--profile", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("mine.toml:") && err.contains("`sharpness`"), "{err}");

    // A rung cannot take the name of a job's other directories.
    for taken in ["audio", "subtitles", "captions", "thumbnails"] {
        std::fs::write(&path, web.replacen("name = \"240p\"", &format!("name = \"{taken}\""), 1)).unwrap();
        let o = drake(&["plan", &src, "--profile", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(65), "{taken}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("`rendition.name`") && err.contains(&format!("`{taken}`")), "{err}");
    }
}

#[test]
fn progress_is_reported_as_json_lines() {
    let dir = Dir::new();
    let src = hd_source(&dir, 4);
    let stdout = drake_ok(&["transcode", &src, "--rendition", "240p", "--out", dir.path("out").to_str().unwrap()]);
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = lines.last().unwrap();
    assert_eq!((last["type"].as_str(), last["fraction"].as_f64()), (Some("done"), Some(1.0)));
    assert!(lines.iter().all(|l| (0.0..=1.0).contains(&l["fraction"].as_f64().unwrap())));
}

#[test]
fn http_sources_are_read_with_range_requests() {
    let dir = Dir::new();
    // moov at the end: libav must seek, which over HTTP means range requests.
    let src = dir.s("src.mp4");
    test_clip(&src, "640x360", 4);
    let server = RangeServer::start(dir.tmp.path().to_path_buf());
    let url = format!("{}/src.mp4", server.url);
    let p: Value = serde_json::from_str(&drake_ok(&["probe", &url])).unwrap();
    assert_eq!(p["streams"][0]["display_width"], 640);
    assert!(p["size_bytes"].is_null());
    let r = transcode(&url, "web", "240p", &dir.path("out"));
    assert_eq!(r["frame_count"], 120);
    assert!(server.range_requests.load(std::sync::atomic::Ordering::SeqCst) > 0, "libav used range requests");

    let o = drake(&["probe", &format!("{}/missing.mp4", server.url)]);
    assert_eq!(o.status.code(), Some(65), "a 404 is bad input: {}", String::from_utf8_lossy(&o.stderr));
    // What the store serves whole but libav cannot read is bad input, as from a file.
    std::fs::write(dir.path("garbage.mp4"), vec![0x42u8; 20_000]).unwrap();
    let o = drake(&["probe", &format!("{}/garbage.mp4", server.url)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("not a media file"), "{stderr}");
    // A browser's recording says no duration, which over HTTP would take reading it
    // all: refused as bad input, saying what to do (it was a 0 s source, and the
    // audio's check failed as internal, four times).
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=160x120:d=2", "-c:v", "libvpx", "-f", "webm", "-live", "1", &dir.s("live.webm")]);
    let o = drake(&["probe", &format!("{}/live.webm", server.url)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("says how long it is") && stderr.contains("drake remux"), "{stderr}");
    // A local copy is read for it.
    let local: Value = serde_json::from_str(&drake_ok(&["probe", &dir.s("live.webm")])).unwrap();
    assert!((local["duration"].as_f64().unwrap() - 2.0).abs() < 0.05 && local["duration_by_reading"] == true, "{local}");
    // Only http(s) and plain paths: other libav protocols are refused.
    let o = drake(&["probe", &format!("concat:{src}|{src}")]);
    assert_eq!(o.status.code(), Some(65));
}

/// A store that cuts answers short and fails requests now and then is waited
/// out: what is read over HTTP is the whole source, as from a file. (libav alone
/// let the MP4 demuxer drop the one keyframe of a short clip when a seek's range
/// request failed, and the thumbnails failed as bad input: "no decodable video
/// frames".) A store that refuses the rest of the source, or range requests,
/// fails the engine as unreachable (exit 75), to be retried, never as bad input.
#[test]
fn a_store_that_fails_mid_read_is_waited_out_and_one_that_refuses_fails_as_unreachable() {
    let dir = Dir::new();
    // One keyframe, and the moov at the end: every read after the header is a seek.
    let src = dir.s("src.mp4");
    test_clip(&src, "426x240", 2);
    let thumbs = |input: &str, out: &str| {
        drake_ok(&["thumbnails", input, "--out", &dir.s(out)]);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.path(out).join("thumbnails.json")).unwrap()).unwrap();
        report["thumbnails"].as_array().unwrap().iter().map(|t| t["time"].as_f64().unwrap()).collect::<Vec<_>>()
    };
    let local = thumbs(&src, "local");

    // After the first answer, one request in three is cut short and one in three
    // is a 503.
    let flaky = RangeServer::answering(dir.tmp.path().to_path_buf(), |n| match n % 3 {
        _ if n == 1 => Answer::Serve,
        0 => Answer::Status(503),
        1 => Answer::CutAfter(20_000),
        _ => Answer::Serve,
    });
    let url = format!("{}/src.mp4", flaky.url);
    assert_eq!(thumbs(&url, "flaky"), local, "the thumbnails read through a flaky store");
    let r = transcode(&url, "web", "240p", &dir.path("out"));
    assert_eq!(r["frame_count"], 60, "every frame read through a flaky store");
    let o = drake(&["thumbnails", &url, "--out", &dir.s("again")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("drake: storage: reading"), "the store's failures are in the log");

    // The store answers 404 for good (the source deleted) after the header is
    // read, or while it is.
    for first in [Answer::Serve, Answer::CutAfter(1000)] {
        let refusing = RangeServer::answering(dir.tmp.path().to_path_buf(), move |n| if n == 1 { first } else { Answer::Status(404) });
        let o = drake(&["thumbnails", &format!("{}/src.mp4", refusing.url), "--out", &dir.s("refused")]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(75), "{first:?}, then 404: the store's trouble, to be retried: {stderr}");
        assert!(stderr.lines().last().is_some_and(|l| l.contains("404")), "{first:?}, then 404: {stderr}");
    }
    // A store (or a proxy in front of it) that does not answer range requests
    // cannot serve a source whose index is at its end: the store's trouble too.
    let whole = RangeServer::answering(dir.tmp.path().to_path_buf(), |_| Answer::Whole);
    let o = drake(&["thumbnails", &format!("{}/src.mp4", whole.url), "--out", &dir.s("whole")]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("does not answer range requests"), "{stderr}");
}

#[test]
fn small_files_that_claim_huge_pictures_fail_fast_as_bad_input() {
    let dir = Dir::new();
    for (name, size) in [("a.y4m", "W60000 H60000"), ("b.y4m", "W16000 H16000")] {
        std::fs::write(dir.path(name), format!("YUV4MPEG2 {size} F30:1 C420\nFRAME\nabc")).unwrap();
        let started = std::time::Instant::now();
        let out = drake(&["plan", &dir.s(name), "--profile", "web"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "{name}: {stderr}");
        assert!(stderr.lines().last().unwrap().starts_with("drake: bad input:"), "{name}: {stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{name} took {:?}", started.elapsed());
    }
}

/// A chunk decodes from the source keyframe before its start, so how far apart a
/// source's keyframes are (from its container's index, or from reading a file
/// whose container has none) sets how long its chunks must be. A
/// source with a single keyframe, as screen recorders and browsers write them, is
/// encoded whole: cut in chunks, each would decode everything before it again.
#[test]
fn sparse_keyframes_make_longer_chunks_or_a_whole_encode() {
    let dir = Dir::new();
    let profile = chunked_web_profile(&dir);
    let x264 = |keyint: &str| {
        ["-c:v", "libx264", "-preset", "ultrafast", "-x264-params", &format!("keyint={keyint}:min-keyint={keyint}:scenecut=0")]
            .map(String::from)
            .to_vec()
    };
    let vp8_live = ["-c:v", "libvpx", "-b:v", "200k", "-g", "100000", "-live", "1", "-f", "webm"].map(String::from).to_vec();
    // Lossless, so that a seek's reading through is far more than libav's buffers.
    let lossless = |mut codec: Vec<String>| {
        codec.extend(["-qp", "0"].map(String::from));
        codec
    };
    let live = |mut codec: Vec<String>| {
        codec.extend(["-f", "matroska", "-live", "1"].map(String::from));
        lossless(codec)
    };
    // (file, encoder, the probe's longest keyframe gap, the chunks' length and
    // count, whether a chunk's seek would read through what is before it)
    #[rustfmt::skip]
    let cases = [
        ("every5s.mp4", x264("150"), Some(5.0), Some((12.0, 5)), false),
        ("every8s.mov", x264("240"), Some(8.0), Some((24.0, 3)), false),
        ("one.mp4", x264("infinite"), Some(60.0), None, false),
        ("one.avi", x264("infinite"), Some(60.0), None, false),
        // A browser's recording: no index, no duration; the probe reads it through.
        ("one.webm", vp8_live, Some(60.0), None, false),
        // MPEG-TS has no index, and Matroska's cues are not read before a seek: the
        // probe reads them through. A seek in MPEG-TS searches its timestamps.
        ("one.ts", x264("infinite"), Some(60.0), None, false),
        ("every5s.ts", x264("150"), Some(5.0), Some((12.0, 5)), false),
        ("one.mkv", x264("infinite"), Some(60.0), None, false),
        ("every8s.mkv", x264("240"), Some(8.0), Some((24.0, 3)), false),
        // Matroska written as a stream has no cues, and FLV (from ffmpeg) no index:
        // a seek reads everything before its target (the coordinator remuxes them).
        ("every5s-live.mkv", live(x264("150")), Some(5.0), Some((12.0, 5)), true),
        ("every5s.flv", lossless(x264("150")), Some(5.0), Some((12.0, 5)), true),
    ];
    for (name, codec, gap, chunks, seeks_by_reading) in cases {
        let src = dir.s(name);
        let mut args = vec!["-f".to_string(), "lavfi".into(), "-i".into(), "testsrc2=s=160x120:r=30:d=60".into()];
        args.extend(codec);
        args.push(src.clone());
        ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let probe: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
        let measured = probe["streams"][0]["keyframe_gap_s"].as_f64();
        // MP4 indexes decode times, a frame or two before the presentation times.
        assert!(measured.zip(gap).is_some_and(|(m, g)| (m - g).abs() < 0.1) || measured == gap, "{name}: gap {measured:?}");
        assert_eq!(probe.get("seeks_by_reading").is_some_and(|b| b == true), seeks_by_reading, "{name}: {probe}");
        let plan: Value = serde_json::from_str(&drake_ok(&["plan", &src, "--profile", profile.to_str().unwrap()])).unwrap();
        let cut = &plan["chunks"];
        let got = cut["chunk_s"].as_f64().map(|s| (s, cut["chunks"].as_array().unwrap().len()));
        assert_eq!(got, chunks, "{name}: {cut}");
    }
}

/// `drake remux` gives a Matroska written as a stream (no cues) the cues a chunk's
/// seek needs, and keeps every packet: libav gives the first packets of a stream
/// with B-frames no decode time, and those get the ticks before the next one. (At
/// a high quality, so that a seek's reading through is far more than libav's
/// buffers; lossless x264 would have no B-frames.)
#[test]
fn a_remux_gives_a_matroska_without_cues_an_index_and_keeps_every_packet() {
    let dir = Dir::new();
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=60", "-f", "lavfi", "-i", "sine=d=60", "-c:v", "libx264",
             "-preset", "veryfast", "-crf", "8", "-bf", "3", "-g", "50", "-c:a", "aac", "-f", "matroska", "-live", "1", &dir.s("live.mkv")]);
    let probe: Value = serde_json::from_str(&drake_ok(&["probe", &dir.s("live.mkv")])).unwrap();
    assert_eq!(probe["seeks_by_reading"], true, "{probe}");
    let remuxed: Value = serde_json::from_str(&drake_ok(&["remux", &dir.s("live.mkv"), "--out", &dir.s("cued.mkv")])).unwrap();
    assert_eq!(remuxed, json!({"parts": 1, "dropped": 0}));
    let probe: Value = serde_json::from_str(&drake_ok(&["probe", &dir.s("cued.mkv")])).unwrap();
    assert!(probe.get("seeks_by_reading").is_none(), "{probe}");
    let times = |name: &str| {
        let mut t: Vec<u64> = video_packets(&dir.path(name)).iter().map(|p| (p.0 * 1000.0).round() as u64).collect();
        t.sort_unstable();
        t
    };
    assert_eq!(times("cued.mkv"), times("live.mkv"));
    assert_eq!(times("cued.mkv").len(), 1500);
}

/// A remux that fills its disk says so by its exit code, so the coordinator waits
/// for room instead of counting a failed attempt; other failures keep theirs.
#[test]
fn a_remux_onto_a_full_disk_exits_as_out_of_space() {
    let dir = Dir::new();
    let Some(_disk) = common::farm::SpoolDisk::mount(&dir.path("small"), 1) else {
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        return;
    };
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=20", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "10",
             "-f", "matroska", "-live", "1", &dir.s("live.mkv")]);
    assert!(std::fs::metadata(dir.path("live.mkv")).unwrap().len() > 2 << 20, "a source bigger than the disk");
    let full = drake(&["remux", &dir.s("live.mkv"), "--out", &dir.s("small/cued.mkv")]);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(proto::exit::NO_SPACE), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let unwritable = drake(&["remux", &dir.s("live.mkv"), "--out", &dir.s("no/such/dir/cued.mkv")]);
    assert_eq!(unwritable.status.code(), Some(proto::exit::INTERNAL), "{}", String::from_utf8_lossy(&unwritable.stderr));
}

/// The thumbnails of a source with one keyframe (a screen recording) read it in
/// one pass: a seek to each tile would land on that keyframe at the start and
/// decode everything before the tile again. With an index (MP4) the probe's
/// keyframe gap says so; without one (MPEG-TS) the first seek that lands behind
/// the walk does.
#[test]
fn thumbnails_of_a_source_with_one_keyframe_read_it_once() {
    let dir = Dir::new();
    let server = RangeServer::start(dir.tmp.path().to_path_buf());
    // Over 10 minutes, so that tiles are 10 s apart, further than a walk decodes on.
    let grey = numbered_grey("32x24", 610);
    let mut requests = Vec::new();
    for name in ["one.mp4", "one.ts"] {
        ffmpeg(&["-f", "lavfi", "-i", &grey, "-c:v", "libx264", "-preset", "ultrafast", "-x264-params", "keyint=infinite", &dir.s(name)]);
        let before = server.range_requests.load(std::sync::atomic::Ordering::SeqCst);
        let out = dir.path(&format!("thumbs-{name}"));
        drake_ok(&["thumbnails", &format!("{}/{name}", server.url), "--out", out.to_str().unwrap()]);
        requests.push(server.range_requests.load(std::sync::atomic::Ordering::SeqCst) - before);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("thumbnails.json")).unwrap()).unwrap();
        assert_eq!((report["storyboard"]["interval"].as_f64(), report["storyboard"]["tiles"].as_u64()), (Some(10.0), Some(61)), "{name}");
    }
    // A seek is a range request or, in MPEG-TS, a few (libav's binary search).
    assert!(requests[0] <= 8 && requests[1] <= 40, "range requests (MP4, MPEG-TS): {requests:?}");
}

/// A long source cut in time: each chunk, encoded on its own from a seek, holds
/// exactly its frames of the job's grid, starts on an IDR and keeps the 2 s grid;
/// joined with the audio (encoded once, whole) without re-encoding, they make the
/// files, frames, keyframes and segments of a whole encode, with seams that play,
/// seek and look like the whole encode's.
#[test]
fn chunks_encoded_apart_and_joined_make_what_a_whole_encode_makes() {
    let dir = Dir::new();
    let src = dir.s("src.mp4");
    // 29.97 fps, so chunk starts fall between marks and frames; source keyframes
    // every 170 frames (5.7 s, as far apart as the planner keeps 12 s chunks), so
    // each chunk seeks to one before its start (20 and 40 frames before).
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=640x360:r=30000/1001:d=31", "-f", "lavfi", "-i", "sine=f=440:d=31:sample_rate=44100",
             "-c:v", "libx264", "-preset", "ultrafast", "-g", "170", "-c:a", "aac", "-shortest", &src]);
    let probe: proto::probe::Probe = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    let web = proto::profile::Profile::load("web").unwrap();
    let plan = proto::plan::plan(&probe, &web).unwrap();
    let chunking = proto::profile::Chunking { min_duration_s: 0.0, chunk_s: 12.0 };
    let cut = proto::plan::chunks(&plan, &probe, &chunking).unwrap();
    assert_eq!(cut.frame_rate, "30000/1001");
    let starts: Vec<(u64, u64)> = cut.chunks.iter().map(|c| (c.start_frame, c.frames)).collect();
    assert_eq!(starts, [(0, 360), (360, 360), (720, cut.total_frames - 720)]);

    let mut reports: Vec<Vec<proto::chunk::ChunkReport>> = vec![Vec::new(), Vec::new()];
    for c in &cut.chunks {
        let last = c.index as usize == cut.chunks.len() - 1;
        let frames = if last { "end".to_string() } else { c.frames.to_string() };
        let (d240, d360) = (dir.path(&format!("c{}-240p", c.index)), dir.path(&format!("c{}-360p", c.index)));
        let spec = format!("{}:{}:{frames}", c.index, c.start_frame);
        #[rustfmt::skip]
        drake_ok(&["transcode", &src, "--rendition", "240p", "--out", d240.to_str().unwrap(),
                   "--rendition", "360p", "--out", d360.to_str().unwrap(), "--chunk", &spec]);
        for (k, d) in [d240, d360].iter().enumerate() {
            assert!(d.join("chunk.pkts").is_file());
            let r: proto::chunk::ChunkReport = serde_json::from_slice(&std::fs::read(d.join("chunk.json")).unwrap()).unwrap();
            proto::chunk::check(&r, c, last, (30000, 1001), 2.0).unwrap();
            reports[k].push(r);
        }
    }
    for (k, name) in ["240p", "360p"].iter().enumerate() {
        let of: Vec<&proto::chunk::ChunkReport> = reports[k].iter().collect();
        proto::chunk::same_parameters(&of).unwrap();
        let whole = transcode(&src, "web", name, &dir.path(&format!("whole-{name}")));
        let frames: u64 = of.iter().map(|r| r.frames).sum();
        assert_eq!(frames, whole["frame_count"].as_u64().unwrap(), "{name}: chunked and whole frame counts");
        let keyframes: Vec<f64> = of.iter().flat_map(|r| r.keyframes.iter().map(|&k| k as f64 * 1001.0 / 30000.0)).collect();
        let expected: Vec<f64> = whole["keyframe_times"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
        assert_eq!(keyframes.len(), expected.len(), "{name}: {keyframes:?} vs {expected:?}");
        assert!(keyframes.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-3), "{name}: {keyframes:?} vs {expected:?}");
    }

    // A chunk past the source's end is bad input, and leaves nothing behind.
    let out = dir.path("past-end");
    let o = drake(&["transcode", &src, "--rendition", "240p", "--out", out.to_str().unwrap(), "--chunk", "9:5000:100"]);
    assert_eq!(o.status.code(), Some(65), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the source ends 0 frames into it"));
    assert!(!out.join("chunk.json").exists());

    // The join: the same outputs as the whole encode, from the chunks and the audio.
    let profile = chunked_web_profile(&dir);
    let audio = dir.path("audio");
    drake_ok(&["transcode", &src, "--rendition", "240p", "--out", audio.to_str().unwrap(), "--audio"]);
    let joined = dir.path("joined-240p");
    // The join reads the source's probe, never the source.
    let probe_file = dir.path("probe.json");
    std::fs::write(&probe_file, drake_ok(&["probe", &src])).unwrap();
    #[rustfmt::skip]
    let mut args: Vec<String> = ["join", "--probe", probe_file.to_str().unwrap(), "--profile", profile.to_str().unwrap(), "--rendition", "240p"]
        .map(String::from).to_vec();
    for c in &cut.chunks {
        args.extend(["--chunk".to_string(), dir.s(&format!("c{}-240p", c.index))]);
    }
    args.extend(["--audio", audio.to_str().unwrap(), "--out", joined.to_str().unwrap()].map(String::from));
    // Chunks out of order never reach the outputs: the first fails its check.
    let (a, b) = (args.iter().position(|x| x == "--chunk").unwrap() + 1, args.iter().rposition(|x| x == "--chunk").unwrap() + 1);
    let mut swapped = args.clone();
    swapped.swap(a, b);
    let o = drake(&swapped.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(70), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("chunk 0:"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!joined.join("rendition.json").exists());
    let printed = drake_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Its progress, which the worker's heartbeats carry and whose silence stops a hung engine.
    assert!(printed.lines().any(|l| l.starts_with(r#"{"type":"progress""#)), "the join prints its progress: {printed}");
    let j: Value = serde_json::from_slice(&std::fs::read(joined.join("rendition.json")).unwrap()).unwrap();
    let w: Value = serde_json::from_slice(&std::fs::read(dir.path("whole-240p").join("rendition.json")).unwrap()).unwrap();
    assert_eq!(files(&j), files(&w), "the same files as a whole encode");
    for key in ["frame_count", "keyframe_times", "segment_count", "codecs", "width", "height"] {
        assert_eq!(j[key], w[key], "{key}");
    }
    // Quality adds up over the chunks: every frame's PSNR, and each chunk's samples.
    let (jq, wq) = (&j["quality"], &w["quality"]);
    // Each chunk's first GOP was decoded back (60 frames; SSIM on 15 of them).
    assert_eq!((jq["psnr_frames"].as_u64(), jq["ssim_frames"].as_u64()), (Some(3 * 60), Some(3 * 15)), "{jq}");
    assert!((jq["psnr"].as_f64().unwrap() - wq["psnr"].as_f64().unwrap()).abs() <= 0.5, "{jq} vs {wq}");
    let (jd, wd) = (j["duration"].as_f64().unwrap(), w["duration"].as_f64().unwrap());
    assert!((jd - wd).abs() <= 1001.0 / 30000.0, "durations {jd} vs {wd}");
    let (jm, wm) = (joined.join("240p.mp4"), dir.path("whole-240p").join("240p.mp4"));
    let samples = |p: &Path| {
        let a = streams(p).into_iter().find(|s| s["codec_type"] == "audio").unwrap();
        a["duration_ts"].as_u64().unwrap()
    };
    assert!(samples(&jm).abs_diff(samples(&wm)) <= 1024, "audio samples {} vs {}", samples(&jm), samples(&wm));
    check_segments(&joined, &dir.path("seg.mp4"));
    // It plays through the playlist, and a seek to just after a seam decodes cleanly.
    let seam = format!("{:.3}", 360.0 * 1001.0 / 30000.0 + 0.05);
    for args in [
        vec!["-v", "error", "-i", joined.join("playlist.m3u8").to_str().unwrap(), "-f", "null", "-"],
        vec!["-v", "error", "-ss", &seam, "-i", jm.to_str().unwrap(), "-frames:v", "30", "-f", "null", "-"],
    ] {
        let o = std::process::Command::new("ffmpeg").args(&args).output().unwrap();
        assert!(o.status.success() && o.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // Bitrate at the seams: no 2 s window across a seam holds more than the VBV
    // allows (maxrate for 2 s plus the buffer), though x264's rate control restarts.
    let (maxrate, bufsize) = (400_000.0, 800_000.0); // web's 240p
    for c in &cut.chunks[1..] {
        let seam = c.start_frame as f64 * 1001.0 / 30000.0;
        let (pj, pw) = (window_peak(&jm, seam), window_peak(&wm, seam));
        eprintln!(
            "seam at frame {}: peak 2 s window {:.0} kbit joined, {:.0} whole (VBV bound {:.0})",
            c.start_frame,
            pj / 1e3,
            pw / 1e3,
            (2.0 * maxrate + bufsize) / 1e3
        );
        assert!(pj <= 2.0 * maxrate + bufsize, "seam at frame {}: {pj} bits in 2 s", c.start_frame);
    }
    // Quality at the seams: PSNR against the source over the frames around each
    // seam, within 0.5 dB of the whole encode's over the same frames.
    for c in &cut.chunks[1..] {
        let around = (c.start_frame - 15, c.start_frame + 15);
        let (pj, pw) = (seam_psnr(&jm, &src, around), seam_psnr(&wm, &src, around));
        eprintln!("seam at frame {}: PSNR joined {pj:.2} dB, whole {pw:.2} dB", c.start_frame);
        assert!((pj - pw).abs() <= 0.5, "seam at frame {}: joined {pj:.2} dB, whole {pw:.2} dB", c.start_frame);
    }
}

/// A phone's variable frame rate source, cut in chunks: each chunk takes from the
/// source exactly the frames a whole encode takes for its part of the job's grid,
/// even where the seam falls in a gap between source frames.
#[test]
fn variable_frame_rate_chunks_take_the_frames_a_whole_encode_takes() {
    let dir = Dir::new();
    let (whole, joined) = chunked_and_whole_levels(&dir, "vfr.mkv", &["-c:v", "libx264", "-preset", "ultrafast", "-g", "100"]);
    same_source_frames(&whole, &joined);
    // Source frame 360, the seam 12 s in, was dropped: chunk 1's first frame must
    // repeat frame 359, from before the chunk's start.
    same_source_frames(&whole[360..361], &whole[359..360]);
}

/// A phone records at a nominal rate and drops frames in low light. MP4 and MOV
/// then say fewer frames a second than were captured (their average is frames over
/// duration: 23.4 here, for 30), Matroska says the nominal rate. The output keeps
/// the nominal rate whatever the container: every source frame in its own slot of
/// the 30 fps grid, a dropped frame's slot showing the frame before it, whole and
/// chunked alike.
#[test]
fn a_variable_frame_rate_recording_keeps_its_nominal_rate_in_every_container() {
    for name in ["vfr.mp4", "vfr.mov"] {
        let dir = Dir::new();
        let (whole, joined) = chunked_and_whole_levels(&dir, name, &["-c:v", "libx264", "-preset", "ultrafast", "-g", "100"]);
        same_source_frames(&whole, &joined);
        assert!((899..=900).contains(&whole.len()), "{name}: {} frames for 30 s at 30 fps", whole.len());
        // Neighbouring source frames are 8 grey levels apart.
        let kept = |n: usize| n % 7 != 3 && n % 11 != 5;
        let wrong: Vec<usize> = (1..whole.len()).filter(|&n| kept(n) != ((whole[n] - whole[n - 1]).abs() > 3.0)).collect();
        assert!(wrong.is_empty(), "{name}: slots not showing their own source frame (or the one before a gap): {wrong:?}");
    }
}

/// A broadcast recording's audio changes at an ad break: here from 48 kHz stereo
/// to 44.1 kHz mono, mid-stream. The output keeps every second of both parts, each
/// its own tone, with no gap at the change.
#[test]
fn audio_that_changes_rate_and_channels_mid_stream_is_kept_whole() {
    let dir = Dir::new();
    let part = |name: &str, tone: u32, rate: &str, channels: &str, offset: &str| {
        let path = dir.s(name);
        let sine = format!("sine=f={tone}:d=4:sample_rate={rate}");
        #[rustfmt::skip]
        ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=4", "-f", "lavfi", "-i", &sine, "-c:v", "libx264", "-preset", "ultrafast",
                 "-c:a", "mp2", "-ac", channels, "-ar", rate, "-output_ts_offset", offset, "-f", "mpegts", &path]);
        std::fs::read(path).unwrap()
    };
    // One transport stream, its audio PID changing shape 4 s in.
    let mut ts = part("a.ts", 440, "48000", "2", "0");
    ts.extend(part("b.ts", 880, "44100", "1", "4"));
    let src = dir.s("change.ts");
    std::fs::write(&src, ts).unwrap();
    transcode(&src, "web", "240p", &dir.path("out"));

    let samples = mono_48k(&dir.path("out/240p.mp4"));
    let seconds = samples.len() as f64 / 48000.0;
    assert!((seconds - 8.0).abs() < 0.1, "{seconds:.3} s of audio for 8 s");
    // Each tenth of a second: its tone, and that it is not silent.
    let tenths: Vec<(f64, i32)> =
        samples.chunks_exact(4800).map(|c| (tone_hz(c), c.iter().map(|&v| i32::from(v).abs()).max().unwrap())).collect();
    let silent: Vec<usize> = tenths.iter().enumerate().filter(|(_, t)| t.1 < 1000).map(|(i, _)| i).collect();
    assert!(silent.is_empty(), "silent tenths of a second: {silent:?}");
    assert!(tenths[1..38].iter().all(|t| (t.0 - 440.0).abs() <= 20.0), "the first part is 440 Hz: {tenths:?}");
    assert!(tenths[42..78].iter().all(|t| (t.0 - 880.0).abs() <= 20.0), "the second part is 880 Hz: {tenths:?}");
}

/// A podcast uploaded as one still picture over its audio, or a screen recording
/// that stopped sending frames when the screen stopped changing: the video ends
/// long before the audio. It holds its last picture to the audio's end, whole and
/// in chunks, since a player stops where the first of them runs out. (It was
/// refused as a truncated file.)
#[test]
fn a_still_picture_over_long_audio_is_held_to_the_audio_end() {
    let dir = Dir::new();
    let src = dir.s("still.mp4");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=0.5", "-f", "lavfi", "-i", "sine=d=30", "-c:v", "libx264", "-preset", "ultrafast",
             "-c:a", "aac", &src]);
    let r = transcode(&src, "web", "240p", &dir.path("whole"));
    assert_eq!(r["frame_count"], 900, "{r}");
    let playlist = std::fs::read_to_string(dir.path("whole/playlist.m3u8")).unwrap();
    let listed: f64 =
        playlist.lines().filter_map(|l| l.strip_prefix("#EXTINF:")).map(|l| l.trim_end_matches(',').parse::<f64>().unwrap()).sum();
    assert!((listed - 30.0).abs() < 0.05, "the video's HLS lasts {listed} s");

    // Chunks past the picture's end repeat it too, as the plan's frame counts say.
    drake_ok(&["transcode", &src, "--rendition", "240p", "--out", &dir.s("audio"), "--audio"]);
    let cut = chunk_and_join(&dir, &src, Some(&dir.s("audio")));
    assert_eq!((cut.total_frames, cut.chunks.len()), (900, 3));
    let joined: Value = serde_json::from_slice(&std::fs::read(dir.path("joined/rendition.json")).unwrap()).unwrap();
    assert_eq!(joined["frame_count"], 900, "{joined}");

    // A file cut short loses its audio too: it is still refused as truncated.
    check_rejected(&faststart_cut_in_half(&dir, &src), &dir.path("short"), "header declares");

    // One picture under a song, as `ffmpeg -i cover.jpg -i song.m4a` makes it: the
    // renditions hold it, and every thumbnail and tile is it. (The thumbnails
    // failed the job: "no decodable video frames".)
    let (cover, one) = (dir.s("cover.png"), dir.s("one-frame.mp4"));
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:d=1", "-frames:v", "1", &cover]);
    ffmpeg(&["-i", &cover, "-f", "lavfi", "-i", "sine=d=10", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", &one]);
    assert_eq!(streams(Path::new(&one))[0]["nb_frames"], "1");
    let r = transcode(&one, "web", "240p", &dir.path("one"));
    assert_eq!(r["frame_count"], 250, "{r}");
    let thumbs = dir.path("one-thumbs");
    drake_ok(&["thumbnails", &one, "--out", thumbs.to_str().unwrap()]);
    check_thumbnails(&thumbs);
    // Neither the poster nor a thumbnail is larger than the video.
    let report: Value = serde_json::from_slice(&std::fs::read(thumbs.join("thumbnails.json")).unwrap()).unwrap();
    assert_eq!((&report["poster"]["width"], &report["poster"]["height"]), (&json!(320), &json!(240)), "{report}");
    assert_eq!(image::open(thumbs.join("thumb_00.jpg")).unwrap().width(), 320);
}

/// An edit's or a recording's audio that ends half a second before or after its
/// video, as uploads' tracks often do: every output's video and audio reach the
/// source's end, the video holding its last picture, the audio padded with
/// silence; whole, in the job's audio task, and cut in chunks. (Each failed the
/// job as an internal error four times: the audio task's check of its length,
/// the MP4's, and the last chunk's frame count.)
#[test]
fn audio_that_ends_before_or_after_the_video_reaches_the_source_end_as_the_video_does() {
    for (name, video_s, audio_s) in [("audio-short", "30", "29.5"), ("audio-long", "29.5", "30")] {
        let dir = Dir::new();
        let src = dir.s(&format!("{name}.mp4"));
        #[rustfmt::skip]
        ffmpeg(&["-f", "lavfi", "-i", &format!("testsrc2=s=320x240:r=30:d={video_s}"), "-f", "lavfi", "-i", &format!("sine=d={audio_s}"),
                 "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-c:a", "aac", &src]);
        let r = transcode(&src, "web", "240p", &dir.path("whole"));
        assert_eq!(r["frame_count"], 900, "{name}: {r}");
        let audio = mono_48k(&dir.path("whole/240p.mp4"));
        assert!((audio.len() as f64 / 48000.0 - 30.0).abs() < 0.03, "{name}: {} samples", audio.len());
        // What the source lacks is silence; what it has is kept.
        let (heard, tail) = audio.split_at(48000 * 29);
        assert!(heard[48000..].iter().any(|&s| s.abs() > 1000), "{name}: the sine is there");
        let silent_from = if name == "audio-short" { 48000 / 2 + 1200 } else { tail.len() };
        assert!(tail[silent_from.min(tail.len())..].iter().all(|&s| s.abs() <= 1), "{name}: silence after the source's audio");

        drake_ok(&["transcode", &src, "--rendition", "240p", "--out", &dir.s("audio"), "--audio"]);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.path("audio/audio.json")).unwrap()).unwrap();
        assert!((report["tracks"][0]["duration"].as_f64().unwrap() - 30.0).abs() < 0.03, "{name}: {report}");
        let cut = chunk_and_join(&dir, &src, Some(&dir.s("audio")));
        assert_eq!((cut.total_frames, cut.chunks.len()), (900, 3), "{name}");
        let joined: Value = serde_json::from_slice(&std::fs::read(dir.path("joined/rendition.json")).unwrap()).unwrap();
        assert_eq!(joined["frame_count"], 900, "{name}: {joined}");
    }
}

/// An old phone's 3GP-like recording: AAC at 8 kHz, whose frames last 128 ms. Its
/// container says where the sound ends, inside the last frame; the rest of that
/// frame is the encoder's padding and is not the source's. Every output's audio
/// ends there. (The last frame was kept whole, 96 ms past the source's end, and
/// the job's audio task failed its own length check four times.)
#[test]
fn low_rate_audio_ends_where_its_container_says_not_at_its_last_frames_end() {
    let dir = Dir::new();
    let src = dir.s("phone.mp4");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=15:d=20", "-f", "lavfi", "-i", "sine=sample_rate=8000:d=20",
             "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ar", "8000", "-ac", "1", &src]);
    let declared = format_duration(Path::new(&src));
    assert!((declared - 20.0).abs() < 0.01, "{declared}");

    transcode(&src, "web", "240p", &dir.path("whole"));
    let samples = mono_48k(&dir.path("whole/240p.mp4")).len() as f64;
    // The output's own last AAC frame (21 ms at 48 kHz) is whole when decoded.
    assert!((samples / 48000.0 - 20.0).abs() < 0.025, "{} s of audio", samples / 48000.0);

    drake_ok(&["transcode", &src, "--rendition", "240p", "--out", &dir.s("audio"), "--audio"]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.path("audio/audio.json")).unwrap()).unwrap();
    assert!((report["tracks"][0]["duration"].as_f64().unwrap() - 20.0).abs() < 0.025, "{report}");

    // Matroska and MPEG-TS say nothing of that padding: the last frame is kept
    // whole, and the audio may end one source frame (128 ms here) past the source.
    for ext in ["mkv", "ts"] {
        let other = dir.s(&format!("phone.{ext}"));
        #[rustfmt::skip]
        ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=15:d=20", "-f", "lavfi", "-i", "sine=sample_rate=8000:d=20",
                 "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ar", "8000", "-ac", "1", &other]);
        drake_ok(&["transcode", &other, "--rendition", "240p", "--out", &dir.s(&format!("audio-{ext}")), "--audio"]);
    }

    // Only the last frame is ever cut: a track whose header declares half of what
    // it holds (a recorder that wrote its header early) keeps all of its sound.
    let whole = dir.s("no-edit-list.mp4");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=10", "-f", "lavfi", "-i", "sine=d=10", "-c:v", "libx264",
             "-preset", "ultrafast", "-c:a", "aac", "-use_editlist", "0", &whole]);
    let mut bytes = std::fs::read(&whole).unwrap();
    let mdhd = bytes.windows(4).enumerate().filter(|(_, w)| *w == b"mdhd").nth(1).unwrap().0; // the audio track's, version 0
    let declared = u32::from_be_bytes(bytes[mdhd + 20..mdhd + 24].try_into().unwrap());
    bytes[mdhd + 20..mdhd + 24].copy_from_slice(&(declared / 2).to_be_bytes());
    let short = dir.s("declares-half.mp4");
    std::fs::write(&short, bytes).unwrap();
    drake_ok(&["transcode", &short, "--rendition", "240p", "--out", &dir.s("half"), "--audio"]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.path("half/audio.json")).unwrap()).unwrap();
    assert!(report["tracks"][0]["duration"].as_f64().unwrap() > 9.9, "{report}");
}

/// A source's default audio track is in a codec no decoder here reads (a newer
/// phone's spatial audio beside its stereo track): it is listed, and the job
/// keeps the audio it can read instead of failing.
#[test]
fn an_audio_track_no_decoder_reads_is_left_out_not_fatal() {
    let dir = Dir::new();
    let readable = dir.s("two.mkv");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=3", "-f", "lavfi", "-i", "sine=f=440:d=3", "-f", "lavfi", "-i", "sine=f=880:d=3",
             "-map", "0", "-map", "1", "-map", "2", "-c:v", "libx264", "-preset", "ultrafast", "-c:a:0", "libopus", "-c:a:1", "flac", &readable]);
    // Rename the first track's codec to one Matroska does not know.
    let mut bytes = std::fs::read(&readable).unwrap();
    let at = bytes.windows(6).position(|w| w == b"A_OPUS").expect("the Opus track's codec id");
    bytes[at..at + 6].copy_from_slice(b"A_OPUX");
    let src = dir.s("unknown.mkv");
    std::fs::write(&src, bytes).unwrap();

    let probe: Value = serde_json::from_str(&drake_ok(&["probe", &src])).unwrap();
    let kinds: Vec<(&str, &str)> =
        probe["streams"].as_array().unwrap().iter().map(|s| (s["kind"].as_str().unwrap(), s["codec"].as_str().unwrap())).collect();
    assert_eq!(kinds, [("video", "h264"), ("other", "none"), ("audio", "flac")], "{probe}");
    assert_eq!(probe["streams"][1]["medium"], "audio without a decoder");

    transcode(&src, "web", "240p", &dir.path("out"));
    let hz = tone_hz(&mono_48k(&dir.path("out/240p.mp4"))[48000..96000]);
    assert!((hz - 880.0).abs() <= 10.0, "the readable track (880 Hz) is kept: {hz} Hz");
}

/// A recording whose audio track was opened and never written to (a sample, no
/// sound) beside a good video: the video is encoded, with silence as long as the
/// source in its MP4 and in the job's audio task, so the ladder and the audio
/// group keep their track. Alone, such a track is nothing to encode: bad input.
#[test]
fn an_audio_track_with_no_sound_becomes_silence_beside_its_video() {
    let dir = Dir::new();
    let src = dir.s("mute.mp4");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=5", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo,atrim=end_sample=1",
             "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-t", "5", &src]);
    let r = transcode(&src, "web", "240p", &dir.path("whole"));
    assert_eq!(r["frame_count"], 150);
    let audio = mono_48k(&dir.path("whole/240p.mp4"));
    assert!((audio.len() as f64 / 48000.0 - 5.0).abs() < 0.05, "{} samples", audio.len());
    assert!(audio.iter().all(|&s| s.abs() <= 1), "silence");
    drake_ok(&["transcode", &src, "--rendition", "240p", "--out", &dir.s("audio"), "--audio"]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.path("audio/audio.json")).unwrap()).unwrap();
    assert!((report["tracks"][0]["duration"].as_f64().unwrap() - 5.0).abs() < 0.05, "{report}");

    let alone = dir.s("mute.m4a");
    ffmpeg(&["-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo,atrim=end_sample=1", "-c:a", "aac", &alone]);
    let o = drake(&["transcode", &alone, "--rendition", "audio", "--out", &dir.s("alone")]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("bad input: no decodable audio"), "{stderr}");
}

/// SMPTE bars' seven bars across the top two thirds of a picture's first frame, in
/// RGB, after the filters `reading` (ending in a comma: a size, a matrix to read
/// its YUV with; none: as the stream says).
fn bars(path: &str, reading: &str) -> Vec<[u8; 3]> {
    // To RGB first: libswscale takes a matrix only where it makes RGB.
    let filters = format!("{reading}format=rgb24,crop=iw:ih*2/3:0:0,scale=7:1:flags=area");
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i", path, "-frames:v", "1", "-vf", &filters, "-f", "rawvideo", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks(3).map(|c| [c[0], c[1], c[2]]).collect()
}

/// The largest difference of one colour component between two sets of bars.
fn bars_off(got: &[[u8; 3]], expected: &[[u8; 3]]) -> u8 {
    got.iter().zip(expected).flat_map(|(g, e)| g.iter().zip(e).map(|(a, b)| a.abs_diff(*b))).max().unwrap()
}

/// Every rendition says which colours its pixels are (H.264's VUI), and the
/// thumbnails are made from them as a player reads them. A source that does not
/// say gets what players take for its size, BT.709 from 720 lines and BT.601
/// below; left unsaid, a player may take an HD source's 1080p rung as BT.709 and
/// its 240p rung as BT.601, and libswscale takes every picture as BT.601, so an
/// HD source's thumbnails would shift (a cyan bar's green from 162 to 191).
#[test]
fn renditions_and_thumbnails_keep_the_colours_of_the_source() {
    let dir = Dir::new();
    let smpte = |size: &str| format!("smptebars=s={size}:r=30:d=1");
    let x264 = ["-c:v", "libx264", "-crf", "10", "-pix_fmt", "yuv420p"];
    let bt709 = ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"];
    // (name, size, how it is encoded, how its YUV reads, the matrix its renditions say)
    let cases = [
        ("tagged", "640x360", [&x264[..], &bt709].concat(), Some("bt709"), "bt709"),
        ("untagged-hd", "1280x720", x264.to_vec(), Some("bt709"), "bt709"),
        ("untagged-sd", "640x360", x264.to_vec(), Some("bt601"), "smpte170m"),
        // BT.2020's matrix with BT.709's primaries: brought to BT.709's matrix.
        (
            "bt2020-matrix",
            "640x360",
            [&x264[..], &["-colorspace", "bt2020nc", "-color_primaries", "bt709", "-color_trc", "bt709"]].concat(),
            Some("bt2020"),
            "bt709",
        ),
        // H.264 in RGB (a screen recorder's lossless capture): no matrix to keep.
        ("rgb", "640x360", vec!["-c:v", "libx264rgb", "-crf", "0", "-pix_fmt", "rgb24"], None, "smpte170m"),
    ];
    for (name, size, encode, reads_as, matrix) in cases {
        let src = dir.s(&format!("{name}.mkv"));
        ffmpeg(&[&["-f", "lavfi", "-i", &smpte(size)][..], &encode, &[src.as_str()]].concat());
        // As a player reads it: at the rendition's size (so that both lose the same
        // detail), or at the poster's (the source's own here).
        let read_as = reads_as.map(|m| format!("scale=in_color_matrix={m},")).unwrap_or_default();
        let (expected, expected_poster) = (bars(&src, &format!("scale=-2:240,{read_as}")), bars(&src, &read_as));
        let (out, thumbs) = (dir.path(&format!("out-{name}")), dir.path(&format!("thumbs-{name}")));
        drake_ok(&["transcode", &src, "--rendition", "240p", "--out", out.to_str().unwrap(), "--thumbnails", thumbs.to_str().unwrap()]);
        let video = out.join("240p.mp4");
        assert_eq!(streams(&video)[0]["color_space"].as_str(), Some(matrix), "{name}");
        for (what, got) in [("video", bars(video.to_str().unwrap(), "")), ("poster", bars(thumbs.join("poster.jpg").to_str().unwrap(), ""))]
        {
            // The poster is a JPEG, whose 4:2:0 and quantizer move saturated colours
            // by up to 15; either read with the other matrix is off by 29 or more.
            let (expected, within) = if what == "video" { (&expected, 4) } else { (&expected_poster, 20) };
            let off = bars_off(&got, expected);
            assert!(off <= within, "{name} {what}: bars {got:?}, in the source {expected:?}");
        }
    }
}

/// A phone's HLG recording, an HDR10 (PQ) film or a camera's BT.2020 SDR, with an
/// SDR player: the outputs and the thumbnails show the colours the scene has in
/// BT.709 SDR, and say they are BT.709. Taken as BT.709 unmapped, HDR pictures are
/// grey and washed out: SMPTE bars' 75% white shows as 50%, their yellow's blue as
/// 53 where it is 2; BT.2020 SDR's yellow gets a blue of 78.
#[test]
fn a_high_dynamic_range_source_comes_out_in_standard_dynamic_range_colours() {
    let dir = Dir::new();
    let sdr = dir.s("sdr.mp4");
    // Tagged BT.709, as the HDR versions below take it, so that it reads back as BT.709.
    let bt709 = ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"];
    let bars_args = ["-f", "lavfi", "-i", "smptebars=s=640x360:r=30:d=2", "-c:v", "libx264", "-crf", "10", "-pix_fmt", "yuv420p"];
    ffmpeg(&[&bars_args[..], &bt709, &[sdr.as_str()]].concat());
    // The seven bars across the top two thirds of a picture's first frame, in RGB.
    let expected = bars(&sdr, "");
    // HLG, PQ, and SDR in BT.2020's gamut (10-bit cameras): zscale's and x265's names.
    for (zscale, transfer) in [("arib-std-b67", "arib-std-b67"), ("smpte2084", "smpte2084"), ("2020_10", "bt2020-10")] {
        // The same scene in 10-bit HEVC, BT.2020, as a phone, a camera or a grading
        // suite writes it; in HDR, SDR white at HDR reference white (203 nits).
        let hdr = dir.s(&format!("{transfer}.mp4"));
        let to_hdr =
            format!("zscale=tin=709:pin=709:min=709:rin=limited:npl=203:t={zscale}:p=2020:m=2020_ncl:r=limited,format=yuv420p10le");
        let x265 = format!("log-level=error:colorprim=bt2020:transfer={transfer}:colormatrix=bt2020nc");
        ffmpeg(&["-i", &sdr, "-vf", &to_hdr, "-c:v", "libx265", "-preset", "ultrafast", "-crf", "10", "-x265-params", &x265, &hdr]);
        // The probe (the job's manifest, the dashboard) says what the source's colours are.
        let probe: Value = serde_json::from_str(&drake_ok(&["probe", &hdr])).unwrap();
        let video = probe["streams"].as_array().unwrap().iter().find(|s| s["kind"] == "video").unwrap().clone();
        let said = (video["color_primaries"].as_str(), video["color_transfer"].as_str(), video["color_space"].as_str());
        assert_eq!(said, (Some("bt2020"), Some(transfer), Some("bt2020nc")), "{video}");
        let out = dir.path(&format!("out-{transfer}"));
        let thumbs = dir.path(&format!("thumbs-{transfer}"));
        drake_ok(&["transcode", &hdr, "--rendition", "360p", "--out", out.to_str().unwrap(), "--thumbnails", thumbs.to_str().unwrap()]);
        let video = out.join("360p.mp4");
        let s = &streams(&video)[0];
        assert_eq!(
            (s["color_primaries"].as_str(), s["color_transfer"].as_str(), s["color_space"].as_str()),
            (Some("bt709"), Some("bt709"), Some("bt709")),
            "{transfer}"
        );
        for (what, got) in [("video", bars(video.to_str().unwrap(), "")), ("poster", bars(thumbs.join("poster.jpg").to_str().unwrap(), ""))]
        {
            // Highlights roll off and BT.2020 comes into BT.709's gamut, so colours
            // move a little; unmapped, every bar is off by 50 or more.
            let off = got.iter().zip(&expected).flat_map(|(g, e)| g.iter().zip(e).map(|(a, b)| a.abs_diff(*b))).max().unwrap();
            eprintln!("OFF {transfer} {what} {off}");
            assert!(off <= 36, "{transfer} {what}: bars {got:?}, in SDR {expected:?}");
        }
    }
}

/// Dolby Vision from a phone (profile 8.4) carries an HLG base layer, encoded as
/// any HLG source is. A streaming master in profile 5 has none: its pictures are
/// Dolby's IPTPQc2, which only the reshaping in every frame's metadata turns into
/// colour, and Drake cannot apply it. Encoded as they are they come out green and
/// purple, so such a source is refused with its reason.
#[test]
fn dolby_vision_is_encoded_from_its_base_layer_and_refused_without_one() {
    let dir = Dir::new();
    let hlg = dir.s("hlg.mp4");
    let x265 = "log-level=error:colorprim=bt2020:transfer=arib-std-b67:colormatrix=bt2020nc";
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=1", "-pix_fmt", "yuv420p10le", "-c:v", "libx265", "-x265-params", x265, &hlg]);
    let (phone, master) = (dir.s("profile-8.4.mp4"), dir.s("profile-5.mp4"));
    with_dolby_vision(&hlg, &phone, 8, 4);
    with_dolby_vision(&hlg, &master, 5, 0);

    let probe: Value = serde_json::from_str(&drake_ok(&["probe", &master])).unwrap();
    let video = probe["streams"].as_array().unwrap().iter().find(|s| s["kind"] == "video").unwrap().clone();
    assert_eq!(video["dolby_vision"], json!({"profile": 5, "level": 6, "compatibility": 0}), "{probe}");
    // A remux (a source without cues, or joined recordings) keeps the record.
    let remuxed = dir.s("profile-5.mkv");
    drake_ok(&["remux", &master, "--out", &remuxed]);
    let probe: Value = serde_json::from_str(&drake_ok(&["probe", &remuxed])).unwrap();
    let video = probe["streams"].as_array().unwrap().iter().find(|s| s["kind"] == "video").unwrap().clone();
    assert_eq!(video["dolby_vision"]["profile"], 5, "{probe}");

    let out = dir.path("phone");
    drake_ok(&["transcode", &phone, "--rendition", "240p", "--out", out.to_str().unwrap()]);
    let s = &streams(&out.join("240p.mp4"))[0];
    assert_eq!(s["color_transfer"].as_str(), Some("bt709"), "the HLG base layer is mapped to SDR");

    let out = dir.path("master");
    let o = drake(&["transcode", &master, "--rendition", "240p", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("bad input: the video is Dolby Vision profile 5 with no HDR10, HLG or SDR base layer"), "{stderr}");
    assert!(!out.join("240p.mp4").exists());
}

/// An MPEG-TS source has no keyframe index: a seek lands on any packet, often
/// past the keyframe before a chunk. Each chunk must still decode from a
/// keyframe before its start, or its first seconds would freeze on the next one.
#[test]
fn chunks_of_a_source_without_a_keyframe_index_start_from_a_keyframe_before_them() {
    let dir = Dir::new();
    // Keyframes every 130 of the 23.4 frames a second kept (5.6 s, as far apart as
    // the planner keeps 12 s chunks): chunks start 12 and 24 s in, 0.9 and 1.8 s
    // after one.
    let (whole, joined) = chunked_and_whole_levels(&dir, "vfr.ts", &["-c:v", "libx264", "-preset", "ultrafast", "-g", "130"]);
    same_source_frames(&whole, &joined);
    // An MPEG program stream (DVD, camcorders) has none either, and its last frame
    // has no timestamp at all.
    let (whole, joined) = chunked_and_whole_levels(&Dir::new(), "vfr.mpg", &["-c:v", "mpeg2video", "-q:v", "3", "-g", "130", "-bf", "2"]);
    same_source_frames(&whole, &joined);
}

/// Encodes a generated 30 s variable frame rate source (in the container its name
/// says, with the `codec` ffmpeg arguments) to 240p whole and in 12 s chunks
/// joined, and gives the source frame (its grey level) each output frame shows:
/// (whole, joined).
fn chunked_and_whole_levels(dir: &Dir, name: &str, codec: &[&str]) -> (Vec<f64>, Vec<f64>) {
    let src = dir.s(name);
    // Every source frame n is flat grey at level 16 + (7n mod 220), so a decoded
    // frame's mean says which source frame it shows. Frames are dropped
    // irregularly with their gaps kept.
    let grey = numbered_grey("320x240", 30);
    #[rustfmt::skip]
    let mut args = vec!["-f", "lavfi", "-i", &grey,
             "-vf", "select='not(eq(mod(n\\,7)\\,3))*not(eq(mod(n\\,11)\\,5))'", "-fps_mode", "vfr"];
    args.extend(codec);
    args.push(&src);
    ffmpeg(&args);
    let cut = chunk_and_join(dir, &src, None);
    assert_eq!((cut.frame_rate.as_str(), cut.chunks[1].start_frame), ("30/1", 360));
    transcode(&src, "web", "240p", &dir.path("whole"));

    // Each frame's mean grey level, decoded at 16x12.
    let levels = |mp4: &Path| -> Vec<f64> {
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i", mp4.to_str().unwrap(), "-vf", "scale=16:12,format=gray", "-f", "rawvideo", "-"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout.chunks(16 * 12).map(|f| f.iter().map(|&p| f64::from(p)).sum::<f64>() / f.len() as f64).collect()
    };
    (levels(&dir.path("whole/240p.mp4")), levels(&dir.path("joined/240p.mp4")))
}

/// Encodes `src`'s 240p rendition in the chunks the planner cuts it in at 12 s
/// (the last to the source's end), and joins them, with the job's audio from
/// `audio` (a `transcode --audio` directory) if given, into `dir/joined`.
/// Gives the chunk plan.
fn chunk_and_join(dir: &Dir, src: &str, audio: Option<&str>) -> proto::plan::ChunkPlan {
    let probe_json = drake_ok(&["probe", src]);
    let probe: proto::probe::Probe = serde_json::from_str(&probe_json).unwrap();
    let web = proto::profile::Profile::load("web").unwrap();
    let plan = proto::plan::plan(&probe, &web).unwrap();
    let chunking = proto::profile::Chunking { min_duration_s: 0.0, chunk_s: 12.0 };
    let cut = proto::plan::chunks(&plan, &probe, &chunking).unwrap();

    let profile = chunked_web_profile(dir);
    std::fs::write(dir.path("probe.json"), probe_json).unwrap();
    let mut join = vec!["join".to_string(), "--probe".into(), dir.s("probe.json"), "--profile".into(), profile.to_string_lossy().into()];
    join.extend(["--rendition".into(), "240p".into(), "--out".into(), dir.s("joined")]);
    if let Some(audio) = audio {
        join.extend(["--audio".into(), audio.into()]);
    }
    for c in &cut.chunks {
        let last = c.index as usize == cut.chunks.len() - 1;
        let spec = format!("{}:{}:{}", c.index, c.start_frame, if last { "end".to_string() } else { c.frames.to_string() });
        let out = dir.s(&format!("c{}", c.index));
        drake_ok(&["transcode", src, "--rendition", "240p", "--out", &out, "--chunk", &spec]);
        join.extend(["--chunk".into(), out]);
    }
    drake_ok(&join.iter().map(String::as_str).collect::<Vec<_>>());
    cut
}

/// A lavfi source of `seconds` at 30 fps whose frame n is flat grey at level
/// 16 + (7n mod 220): a decoded frame's mean grey says which source frame it shows.
fn numbered_grey(size: &str, seconds: u32) -> String {
    format!("color=gray:s={size}:r=30:d={seconds},geq=lum='mod(N*7\\,220)+16':cb=128:cr=128")
}

/// The web profile with chunking for short test sources (12 s chunks from any
/// length), written into `dir`.
fn chunked_web_profile(dir: &Dir) -> PathBuf {
    let profile = dir.path("chunked.toml");
    let web_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles/web.toml")).unwrap();
    std::fs::write(&profile, format!("{web_text}\n[chunking]\nmin_duration_s = 0\nchunk_s = 12\n")).unwrap();
    profile
}

/// Frame by frame, two lists of grey levels show the same source frames:
/// neighbouring source frames are 8 levels apart, and coding moves a flat
/// frame's mean by less than 2.
fn same_source_frames(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "frame counts");
    let differ: Vec<(usize, f64, f64)> =
        a.iter().zip(b).enumerate().filter(|(_, (x, y))| (*x - *y).abs() > 3.0).map(|(i, (x, y))| (i, *x, *y)).collect();
    assert!(differ.is_empty(), "frames showing other source frames (frame, one, other): {differ:?}");
}

/// A film's audio languages are encoded side by side, a thread a track up to the
/// task's cores, into the very bytes one thread makes, each track its own.
#[test]
fn audio_tracks_encode_side_by_side_into_the_bytes_one_thread_makes() {
    let dir = Dir::new();
    let src = dir.s("languages.mp4");
    let tones = [330.0, 550.0, 770.0, 990.0];
    let mut args: Vec<String> = ["-f", "lavfi", "-i", "testsrc2=s=320x240:r=10:d=8"].map(String::from).to_vec();
    for hz in tones {
        args.extend(["-f".into(), "lavfi".into(), "-i".into(), format!("sine=f={hz}:d=8:sample_rate=48000")]);
    }
    for k in 0..=tones.len() {
        args.extend(["-map".into(), k.to_string()]);
    }
    for (k, language) in ["eng", "fre", "ger", "spa"].iter().enumerate() {
        args.extend([format!("-metadata:s:a:{k}"), format!("language={language}")]);
    }
    args.extend(["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ac", "2", &src].map(String::from));
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let mut checksums = Vec::new();
    for cores in ["1", "4"] {
        let out = dir.path(&format!("audio-{cores}"));
        drake_ok(&["transcode", &src, "--rendition", "240p", "--out", out.to_str().unwrap(), "--audio", "--cores", cores]);
        let made: Value = serde_json::from_slice(&std::fs::read(out.join("audio.json")).unwrap()).unwrap();
        assert_eq!(made["tracks"].as_array().map(Vec::len), Some(tones.len()), "{made}");
        checksums.push(made["checksums"].clone());
    }
    assert!(checksums[0].as_array().is_some_and(|files| files.len() > tones.len()), "{}", checksums[0]);
    assert_eq!(checksums[0], checksums[1], "one thread and four made different files");

    // Each track kept its own tone: no thread took another's packets.
    let out = dir.path("audio-4");
    for (k, hz) in tones.iter().enumerate() {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&format!("a{k}.")) && p.extension().unwrap() == "m4s")
            .collect();
        segments.sort();
        let mut whole = std::fs::read(out.join(format!("a{k}.init.mp4"))).unwrap();
        for segment in segments {
            whole.extend(std::fs::read(segment).unwrap());
        }
        let track = dir.path(&format!("a{k}.mp4"));
        std::fs::write(&track, whole).unwrap();
        let got = tone_hz(&mono_48k(&track)[48000..6 * 48000]);
        assert!((got - hz).abs() <= 10.0, "track a{k}: {got} Hz, made from {hz} Hz");
    }
}

/// A job's audio encoded once, whole, for every rendition's join: it spans the
/// source, priming included, and is not cut anywhere.
#[test]
fn the_audio_is_encoded_once_whole_as_packets() {
    let dir = Dir::new();
    let src = hd_source(&dir, 5);
    let out = dir.path("audio");
    drake_ok(&["transcode", &src, "--rendition", "240p", "--out", out.to_str().unwrap(), "--audio"]);
    let made: Value = serde_json::from_slice(&std::fs::read(out.join("audio.json")).unwrap()).unwrap();
    let (start, end) = (made["start"].as_f64().unwrap(), made["end"].as_f64().unwrap());
    assert_eq!(made["sample_rate"].as_u64(), Some(48000), "{made}");
    // The encoder's priming sits before 0; the end is the source's, within one AAC frame.
    assert!((-0.05..=0.0).contains(&start), "{made}");
    assert!((end - format_duration(Path::new(&src))).abs() < 1024.0 / 48000.0 + 0.03, "{made}");
    // 1024 samples a packet (the last one may be shorter), all of them there.
    let expected = ((end - start) * 48000.0 / 1024.0 - 1e-6).ceil() as u64;
    assert_eq!(made["packets"].as_u64(), Some(expected), "{made}");
    assert!(out.join("audio.pkts").metadata().unwrap().len() > 5 * 128_000 / 8 / 2);

    // A source without audio is bad input.
    let silent = dir.s("silent.mp4");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=2", "-c:v", "libx264", "-preset", "ultrafast", &silent]);
    let o = drake(&["transcode", &silent, "--rendition", "240p", "--out", dir.s("none").as_str(), "--audio"]);
    assert_eq!(o.status.code(), Some(65), "{}", String::from_utf8_lossy(&o.stderr));
}
