use super::*;

#[test]
fn every_shipped_profile_loads() {
    for name in Profile::builtin_names() {
        let p = Profile::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!p.rungs.is_empty());
        assert!(p.rungs.windows(2).all(|w| w[0].height < w[1].height), "{name}: rungs sorted");
    }
    let web = Profile::load("web").unwrap();
    let names: Vec<_> = web.rungs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["240p", "360p", "480p", "720p", "1080p"]);
    assert_eq!(web.video.codec, VideoCodec::H264);
}

const BASE: &str = r#"schema = 1
name = "t"

[video]
codec = "h264"
preset = "veryfast"
gop_seconds = 2.0
segment_seconds = 6.0
max_frame_rate = 60.0

[audio]
codec = "aac"
bitrate_kbps = 128
channels = 2
sample_rate = 48000

[[rendition]]
name = "240p"
height = 240
crf = 23
maxrate_kbps = 400
bufsize_kbps = 800
"#;

/// Replaces `from` in the base profile with `to` and checks the error text.
fn check(from: &str, to: &str, expected: &str) {
    assert!(BASE.contains(from), "{from}");
    let text = BASE.replacen(from, to, 1);
    let err = Profile::parse(&text, "profiles/t.toml").expect_err(to).to_string();
    assert_eq!(err, expected, "for {to:?}");
}

#[test]
fn errors_name_file_line_and_key() {
    check(
        "crf = 23",
        "crf = 23\ncolour = 1",
        "profiles/t.toml:21: `colour`: unknown field `colour`, expected one of `name`, `height`, `crf`, `bitrate_kbps`, `maxrate_kbps`, `bufsize_kbps`",
    );
    check("crf = 23", "crf = 99", "profiles/t.toml:20: `rendition.crf`: must be 0..=51");
    check("crf = 23", "crf = \"high\"", "profiles/t.toml:20: `crf`: invalid type: string \"high\", expected u32");
    check("schema = 1", "schema = 2", "profiles/t.toml:1: `schema`: schema version 2 is not supported (this build reads 1)");
    check(
        "preset = \"veryfast\"",
        "preset = \"fastest\"",
        "profiles/t.toml:6: `video.preset`: must be one of ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow",
    );
    check(
        "segment_seconds = 6.0",
        "segment_seconds = 5.0",
        "profiles/t.toml:8: `video.segment_seconds`: must be a whole number of GOPs (a multiple of gop_seconds)",
    );
    check("height = 240", "height = 241", "profiles/t.toml:19: `rendition.height`: must be an even number in 16..=4320");
    check(
        "crf = 23",
        "crf = 23\nbitrate_kbps = 300",
        "profiles/t.toml:18: `rendition`: `240p` needs exactly one of `crf` or `bitrate_kbps`",
    );
    check("channels = 2", "channels = 6", "profiles/t.toml:14: `audio.channels`: must be 1 or 2");
}

#[test]
fn fixed_bitrate_rungs_are_possible() {
    let text = BASE.replacen("crf = 23", "bitrate_kbps = 300", 1);
    let p = Profile::parse(&text, "t.toml").unwrap();
    assert_eq!(p.rungs[0].rate, RateControl::Bitrate { bitrate: 300_000, maxrate: 400_000, bufsize: 800_000 });
}

#[test]
fn unknown_names_are_rejected() {
    assert!(matches!(Profile::load("nope"), Err(ProfileError::Unknown(_))));
    assert!(matches!(Profile::load("../etc"), Err(ProfileError::Read { .. })));
}

#[test]
fn a_profile_may_require_worker_tags() {
    assert!(Profile::parse(BASE, "t.toml").unwrap().requires_tags.is_empty());
    let text = BASE.replacen("name = \"t\"\n", "name = \"t\"\nrequires_tags = [\"gpu\", \"eu-west\", \"gpu\"]\n", 1);
    assert_eq!(Profile::parse(&text, "t.toml").unwrap().requires_tags, ["eu-west", "gpu"]);
    check(
        "name = \"t\"\n",
        "name = \"t\"\nrequires_tags = [\"GPU!\"]\n",
        "profiles/t.toml:3: `requires_tags`: \"GPU!\" is not a tag (1 to 64 of a-z, 0-9, '.', '_', '-')",
    );
}

#[test]
fn chunking_cuts_whole_segments() {
    let p = Profile::parse(BASE, "t.toml").unwrap();
    assert_eq!(p.chunking, Chunking { min_duration_s: 180.0, chunk_s: 60.0 });
    let with = |table: &str| BASE.replacen("[[rendition]]", &format!("{table}\n\n[[rendition]]"), 1);
    let p = Profile::parse(&with("[chunking]\nmin_duration_s = 600\nchunk_s = 30"), "t.toml").unwrap();
    assert_eq!(p.chunking, Chunking { min_duration_s: 600.0, chunk_s: 30.0 });
    let err = |table: &str| Profile::parse(&with(table), "t.toml").expect_err(table).to_string();
    assert!(
        err("[chunking]\nchunk_s = 50").contains("`chunking.chunk_s`: must be a whole number of segments"),
        "{}",
        err("[chunking]\nchunk_s = 50")
    );
    assert!(err("[chunking]\nchunk_s = 3").contains("`chunking.chunk_s`: must be between 6 and 3600"));
    assert!(err("[chunking]\nmin_duration_s = -1").contains("`chunking.min_duration_s`: must be between 0 and 86400"));
    assert!(err("[chunking]\nchunks = 4").contains("unknown field `chunks`"));
    // Segments that do not divide a minute: the default is the nearest whole number of them.
    let eight = BASE.replacen("segment_seconds = 6.0", "segment_seconds = 8.0", 1);
    assert_eq!(Profile::parse(&eight, "t.toml").unwrap().chunking.chunk_s, 64.0);
}
