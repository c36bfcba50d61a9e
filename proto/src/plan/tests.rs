use super::*;
use crate::probe::{AudioStream, DolbyVision, StreamInfo, SubtitleStream, VideoStream};

fn probe(w: u32, h: u32, fps: f64, audio: bool) -> Probe {
    let mut streams = vec![];
    if w > 0 {
        streams.push(StreamInfo::Video(VideoStream {
            index: 0,
            codec: "h264".into(),
            coded_width: w,
            coded_height: h,
            display_width: w,
            display_height: h,
            sample_aspect_ratio: "1:1".into(),
            rotation: 0,
            frame_rate: fps,
            avg_frame_rate: "30/1".into(),
            pix_fmt: "yuv420p".into(),
            bit_depth: 8,
            default: true,
            keyframe_gap_s: None,
            color_primaries: None,
            color_transfer: None,
            color_space: None,
            dolby_vision: None,
        }));
    }
    if audio {
        streams.push(StreamInfo::Audio(AudioStream {
            index: 1,
            codec: "aac".into(),
            channels: 2,
            channel_layout: "stereo".into(),
            sample_rate: 48000,
            default: true,
            language: None,
            title: None,
        }));
    }
    Probe {
        container: "mov".into(),
        duration: 10.0,
        bitrate: 0,
        size_bytes: None,
        streams,
        attachments: 0,
        timeline_joins: 0,
        seeks_by_reading: false,
        duration_by_reading: false,
        remuxed_parts: None,
    }
}

/// Plans `web` for a source and compares `name WxH` of each rendition.
fn check(source: Probe, expected: &[&str]) {
    let plan = plan(&source, &Profile::load("web").unwrap()).unwrap();
    let got: Vec<String> = plan.renditions.iter().map(|r| format!("{} {}x{}", r.name, r.width, r.height)).collect();
    assert_eq!(got, expected);
}

#[test]
fn ladders() {
    check(probe(1920, 1080, 30.0, true), &["240p 426x240", "360p 640x360", "480p 854x480", "720p 1280x720", "1080p 1920x1080"]);
    check(probe(1280, 720, 30.0, true), &["240p 426x240", "360p 640x360", "480p 854x480", "720p 1280x720"]);
    // Portrait phone video: rungs bound the short side.
    check(probe(720, 1280, 30.0, true), &["240p 240x426", "360p 360x640", "480p 480x854", "720p 720x1280"]);
    // Smaller than the lowest rung: one rendition at its own even size.
    check(probe(321, 181, 30.0, true), &["180p 320x180"]);
    check(probe(640, 480, 25.0, false), &["240p 320x240", "360p 480x360", "480p 640x480"]);
}

#[test]
fn audio_only_sources_get_an_audio_rendition() {
    let plan = plan(&probe(0, 0, 0.0, true), &Profile::load("web").unwrap()).unwrap();
    assert_eq!(plan.renditions.len(), 1);
    assert_eq!(plan.renditions[0].name, AUDIO_RENDITION);
    assert!(plan.renditions[0].video.is_none() && plan.renditions[0].audio.is_some());
    assert_eq!(plan.skipped.len(), 5);
}

#[test]
fn no_audio_means_no_audio_rendition() {
    let plan = plan(&probe(640, 360, 30.0, false), &Profile::load("web").unwrap()).unwrap();
    assert!(plan.renditions.iter().all(|r| r.audio.is_none()));
    assert_eq!(plan.skipped.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["480p", "720p", "1080p"]);
}

/// Text subtitles are kept wherever there is a video to caption, with or without
/// audio; an audio-only source's are skipped, as its caption files are.
#[test]
fn text_subtitles_are_kept_beside_any_video() {
    let web = Profile::load("web").unwrap();
    let with_subs = |w, audio| {
        let mut p = probe(w, w * 9 / 16, 30.0, audio);
        let sub = |index, codec: &str, text| SubtitleStream {
            index,
            codec: codec.into(),
            text,
            language: Some("eng".into()),
            title: None,
            default: false,
            forced: false,
            hearing_impaired: false,
        };
        p.streams.push(StreamInfo::Subtitle(sub(2, "subrip", true)));
        p.streams.push(StreamInfo::Subtitle(sub(3, "hdmv_pgs_subtitle", false)));
        plan(&p, &web).unwrap()
    };
    for audio in [true, false] {
        let plan = with_subs(640, audio);
        assert_eq!(plan.subtitle_tracks.iter().map(|t| t.stream).collect::<Vec<_>>(), [2], "audio: {audio}");
        assert_eq!(plan.skipped_subtitles.iter().map(|t| t.stream).collect::<Vec<_>>(), [3], "audio: {audio}");
    }
    let plan = with_subs(0, true);
    assert!(plan.subtitle_tracks.is_empty());
    assert_eq!(plan.skipped_subtitles[0].reason, "the source has no video to caption");
}

#[test]
fn dolby_vision_with_no_ordinary_base_layer_is_refused_and_the_rest_are_planned() {
    let web = Profile::load("web").unwrap();
    let with = |profile, compatibility| {
        let mut p = probe(1920, 1080, 30.0, true);
        if let StreamInfo::Video(v) = &mut p.streams[0] {
            v.dolby_vision = Some(DolbyVision { profile, level: 6, compatibility });
        }
        plan(&p, &web)
    };
    let refused = with(5, 0).unwrap_err();
    assert_eq!(refused, PlanError::DolbyVisionOnly(5));
    assert!(refused.to_string().contains("Dolby Vision profile 5 with no HDR10, HLG or SDR base layer"), "{refused}");
    // Profile 8.1 (HDR10), 8.4 (a phone's HLG), 7 (Blu-ray) and 9 (SDR) have a base
    // layer of their own, which is encoded as any HDR or SDR stream is.
    for (profile, compatibility) in [(8, 1), (8, 4), (7, 6), (9, 2)] {
        assert_eq!(with(profile, compatibility).unwrap().renditions.len(), 5, "{profile}.{compatibility}");
    }
}

#[test]
fn frame_rates_snap_and_cap() {
    for (fps, expected) in [(29.97, (30000, 1001)), (29.95, (30000, 1001)), (25.0, (25, 1)), (12.0, (12, 1)), (14.5, (14500, 1000))] {
        assert_eq!(rational_frame_rate(fps), expected, "{fps}");
    }
    assert_eq!(capped_rate(120.0, 60.0), (60, 1));
    assert_eq!(capped_rate(59.94, 60.0), (60000, 1001));
    assert_eq!(capped_rate(240.0, 60.0), (60, 1));
}

#[test]
fn headers_that_claim_too_much_are_refused_before_decoding() {
    let web = Profile::load("web").unwrap();
    let over = |p: Probe| match plan(&p, &web) {
        Err(PlanError::OverLimit(what, _)) => what,
        other => panic!("expected a limit, got {other:?}"),
    };
    // A small file claiming a 60000x60000 picture (a side under 16384 is not enough:
    // 16000x16000 is 256 megapixels a frame).
    assert!(over(probe(16000, 16000, 30.0, false)).contains("16000x16000 pixels per frame"));
    // 8K is fine at a normal rate, not at 10,000 frames a second.
    assert!(plan(&probe(8192, 4320, 30.0, false), &web).is_ok());
    assert!(over(probe(8192, 4320, 10_000.0, false)).contains("pixels per second"));
    let mut long = probe(640, 360, 30.0, true);
    long.duration = 1e9;
    assert!(over(long).contains("duration"));
    let mut loud = probe(640, 360, 30.0, true);
    if let StreamInfo::Audio(a) = &mut loud.streams[1] {
        a.sample_rate = 100_000_000;
    }
    assert!(over(loud).contains("sample rate"));
}

#[test]
fn long_sources_are_cut_on_segment_boundaries_of_one_frame_grid() {
    let web = Profile::load("web").unwrap();
    assert_eq!(web.chunking, Chunking { min_duration_s: 180.0, chunk_s: 60.0 });
    let at = |fps: f64, duration: f64, chunk_s: f64| {
        let source = Probe { duration, ..probe(1280, 720, fps, true) };
        chunks(&plan(&source, &web).unwrap(), &source, &Chunking { min_duration_s: 180.0, chunk_s })
    };
    // Shorter than min_duration_s: encoded whole.
    assert_eq!(at(30.0, 179.9, 60.0), None);

    // 4 minutes at 30 fps in 60 s chunks: four of 1800 frames.
    let c = at(30.0, 240.0, 60.0).unwrap();
    assert_eq!((c.frame_rate.as_str(), c.total_frames), ("30/1", 7200));
    let starts: Vec<(u64, u64)> = c.chunks.iter().map(|k| (k.start_frame, k.frames)).collect();
    assert_eq!(starts, [(0, 1800), (1800, 1800), (3600, 1800), (5400, 1800)]);

    // 29.97 fps: each chunk starts on the first frame at or after its mark, where an
    // unchunked encode forces its IDR (ceil(60 * 30000/1001) = 1799).
    let c = at(29.97, 240.0, 60.0).unwrap();
    assert_eq!(c.frame_rate, "30000/1001");
    assert_eq!(c.chunks.iter().map(|k| k.start_frame).collect::<Vec<_>>(), [0, 1799, 3597, 5395]);
    assert_eq!(c.total_frames, 7193);
    for k in &c.chunks {
        let t = k.start_frame as f64 * 1001.0 / 30000.0;
        assert!(t + 1e-9 >= k.index as f64 * 60.0 && t < k.index as f64 * 60.0 + 1001.0 / 30000.0, "chunk {} at {t}", k.index);
    }
    // Chunks cover every frame once.
    assert_eq!(c.chunks.last().unwrap().end_frame(), c.total_frames);
    assert!(c.chunks.windows(2).all(|w| w[0].end_frame() == w[1].start_frame));

    // A tail shorter than half a chunk joins the chunk before it; a longer one is its own.
    let c = at(25.0, 245.0, 60.0).unwrap();
    assert_eq!(c.chunks.iter().map(|k| k.frames).collect::<Vec<_>>(), [1500, 1500, 1500, 1625]);
    assert_eq!(at(25.0, 275.0, 60.0).unwrap().chunks.len(), 5);
    // No video, nothing to cut.
    let audio_only = Probe { duration: 600.0, ..probe(0, 0, 0.0, true) };
    assert_eq!(chunks(&plan(&audio_only, &web).unwrap(), &audio_only, &web.chunking), None);
    // A six-hour film in 6 s chunks still makes at most MAX_CHUNKS.
    let c = at(30.0, 6.0 * 3600.0, 6.0).unwrap();
    assert!(c.chunks.len() <= MAX_CHUNKS && c.chunk_s == 24.0, "{} chunks of {} s", c.chunks.len(), c.chunk_s);
}

#[test]
fn chunks_are_long_enough_that_their_keyframe_gaps_stay_a_small_part() {
    let web = Profile::load("web").unwrap();
    let cut = |gap: Option<f64>| {
        let mut source = Probe { duration: 1200.0, ..probe(1280, 720, 30.0, true) };
        let Some(StreamInfo::Video(v)) = source.streams.first_mut() else { unreachable!() };
        v.keyframe_gap_s = gap;
        chunks(&plan(&source, &web).unwrap(), &source, &web.chunking).map(|c| (c.chunk_s, c.chunks.len()))
    };
    // Unknown (MPEG-TS) and short gaps keep the profile's 60 s chunks.
    assert_eq!(cut(None), Some((60.0, 20)));
    assert_eq!(cut(Some(2.0)), Some((60.0, 20)));
    assert_eq!(cut(Some(30.0)), Some((60.0, 20)));
    // Longer gaps double the chunks, keeping them on segment boundaries.
    assert_eq!(cut(Some(30.5)), Some((120.0, 10)));
    assert_eq!(cut(Some(200.0)), Some((480.0, 3)));
    // One keyframe (the gap is the source), or a gap past its end: encoded whole.
    assert_eq!(cut(Some(1200.0)), None);
    assert_eq!(cut(Some(1e9)), None);
    assert_eq!(cut(Some(f64::INFINITY)), Some((60.0, 20)));
}
