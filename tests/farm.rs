//! The coordinator as a real process on loopback: auth, job submission, probing
//! and planning in a child `drake probe`, and failures with readable reasons.

mod common;

use common::farm::*;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn every_api_route_checks_the_caller() {
    let c = Coordinator::start();
    assert_eq!(c.call("GET", "/healthz", None, None).0, 200);
    for (method, path) in [
        ("GET", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/x"),
        ("POST", "/api/v1/jobs/x/cancel"),
        ("POST", "/api/v1/join-tokens"),
    ] {
        let (status, body) = c.call(method, path, None, Some(json!({})));
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{method} {path}");
        let (status, _) = c.call(method, path, Some("drk_admin_forged"), Some(json!({})));
        assert_eq!(status, 401, "{method} {path} with a forged token");
    }
    // A join token may only join: it cannot submit or mint.
    let (status, t) = c.call("POST", "/api/v1/join-tokens", Some(&c.admin), Some(json!({"uses": 1, "ttl_seconds": 600})));
    assert_eq!(status, 201);
    let join = t["token"].as_str().unwrap();
    assert_eq!(c.call("POST", "/api/v1/jobs", Some(join), Some(json!({"source_url": "http://x/y.mp4"}))).0, 403);
    assert_eq!(c.call("POST", "/api/v1/join-tokens", Some(join), Some(json!({"uses": 1, "ttl_seconds": 600}))).0, 403);
    let (status, body) = c.call("POST", "/api/v1/join-tokens", Some(&c.admin), Some(json!({"uses": 0, "ttl_seconds": 600})));
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    // Nothing a caller names is fetched from a private network: known addresses are
    // refused at once, and nothing is recorded.
    for body in [
        json!({"source_url": format!("{}/admin", c.url)}),
        json!({"source_url": "http://169.254.169.254/latest/meta-data/"}),
        json!({"source_url": "http://[::ffff:127.0.0.1]:9/x.mp4"}),
        json!({"source_url": "http://localhost:9/x.mp4"}),
        json!({"source_url": "https://media.example.com/x.mp4", "callback_url": "http://10.0.0.7/hook"}),
        json!({"source_url": "https://media.example.com/x.mp4", "captions": [{"url": "http://10.0.0.7/en.vtt", "language": "en"}]}),
    ] {
        let (status, e) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(body.clone()));
        assert_eq!((status, e["code"].as_str()), (422, Some("unprocessable")), "{body}: {e}");
    }
    // Caption files: a language tag each, and at most eight.
    let caption = json!({"url": "https://media.example.com/en.vtt", "language": "en"});
    for body in [
        json!({"source_url": "https://media.example.com/x.mp4", "captions": [{"url": "https://media.example.com/en.vtt", "language": "<b>"}]}),
        json!({"source_url": "https://media.example.com/x.mp4", "captions": vec![caption; 9]}),
    ] {
        let (status, e) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(body.clone()));
        assert_eq!((status, e["code"].as_str()), (400, Some("bad_request")), "{body}: {e}");
    }
    let (_, listed) = c.call("GET", "/api/v1/jobs", Some(&c.admin), None);
    assert_eq!(listed["jobs"], json!([]));
}

#[test]
fn submitted_jobs_are_probed_and_planned_lowest_rung_first_then_longest() {
    let dir = Dir::new();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=854x480:r=30:d=2",
        "-f",
        "lavfi",
        "-i",
        "sine=d=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        &dir.s("src.mp4"),
    ]);
    std::fs::write(dir.path("garbage.mp4"), vec![0x5au8; 50_000]).unwrap();
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=1", "-c:v", "libx265", "-x265-params", "log-level=error", &dir.s("hevc.mp4")]);
    with_dolby_vision(&dir.s("hevc.mp4"), &dir.s("dolby-vision-5.mp4"), 5, 0);
    let server = RangeServer::start(dir.tmp.path().to_path_buf());
    let c = Coordinator::start_with(&["--allow-network", "127.0.0.1/32"]);

    let body = json!({"source_url": format!("{}/src.mp4", server.url), "idempotency_key": "upload-1"});
    let (status, job) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(body.clone()));
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["state"], "queued");
    let id = job["id"].as_str().unwrap();
    let (status, again) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(body));
    assert_eq!((status, again["id"].as_str()), (200, Some(id)), "same idempotency key, same job");

    let job = c.wait_for(id, |j| j["tasks"].as_array().is_some_and(|t| !t.is_empty()));
    let tasks: Vec<String> = job["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}:{}", t["kind"].as_str().unwrap(), t["rendition"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(
        tasks,
        ["audio:240p", "transcode:240p", "transcode:480p", "transcode:360p", "thumbnails:-"],
        "the audio (every rendition muxes it), the lowest rung, then longest first"
    );

    let (_, listed) = c.call("GET", "/api/v1/jobs?state=queued&per_page=10", Some(&c.admin), None);
    assert_eq!(listed["jobs"][0]["id"].as_str(), Some(id));

    // A corrupt upload fails its own job with the engine's reason.
    let (_, bad) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(json!({"source_url": format!("{}/garbage.mp4", server.url)})));
    let bad = c.wait_for(bad["id"].as_str().unwrap(), |j| j["state"] == "failed");
    assert!(bad["error"].as_str().unwrap().starts_with("bad input:"), "{bad}");
    // So does a source whose colours Drake cannot map, before any task is planned.
    let (_, dv) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(json!({"source_url": format!("{}/dolby-vision-5.mp4", server.url)})));
    let dv = c.wait_for(dv["id"].as_str().unwrap(), |j| j["state"] == "failed");
    assert!(dv["error"].as_str().unwrap().starts_with("bad input: the video is Dolby Vision profile 5"), "{dv}");
    assert_eq!(dv["tasks"], json!([]), "{dv}");

    // Cancel, then retry.
    let (status, canceled) = c.call("POST", &format!("/api/v1/jobs/{id}/cancel"), Some(&c.admin), None);
    assert_eq!((status, canceled["state"].as_str()), (200, Some("canceled")));
    // A retried cancel (its answer lost) is no error; a job that ended otherwise cannot be canceled.
    let (status, again) = c.call("POST", &format!("/api/v1/jobs/{id}/cancel"), Some(&c.admin), None);
    assert_eq!((status, again["state"].as_str()), (200, Some("canceled")));
    let (status, _) = c.call("POST", &format!("/api/v1/jobs/{}/cancel", bad["id"].as_str().unwrap()), Some(&c.admin), None);
    assert_eq!(status, 409);
    let (status, retried) = c.call("POST", &format!("/api/v1/jobs/{id}/retry"), Some(&c.admin), None);
    assert_eq!((status, retried["state"].as_str()), (200, Some("queued")));

    let (status, e) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(json!({"source_url": "file:///etc/passwd"})));
    assert_eq!((status, e["code"].as_str()), (400, Some("bad_request")));
    let (status, e) =
        c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(json!({"source_url": "http://x/a.mp4", "profile": "../../etc/x.toml"})));
    assert_eq!((status, e["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(c.call("GET", "/api/v1/jobs/nope", Some(&c.admin), None).0, 404);
}

#[test]
fn a_farm_of_two_workers_transcodes_an_upload_end_to_end() {
    let c = Coordinator::start_with(&["--lease-ttl-seconds", "6", "--allow-network", "127.0.0.0/8"]);
    let join = c.join_token(2);
    let _w1 = c.worker("w1", &join);
    let _w2 = c.worker("w2", &join);
    let dir = Dir::new();
    // Two languages: English (the default) and an untagged commentary track; and
    // two subtitle streams (English, the default as the MP4 muxer marks the first;
    // French, forced) as mov_text from SubRip.
    let clip = dir.s("clip.mp4");
    std::fs::write(dir.path("en.srt"), "1\n00:00:01,000 --> 00:00:03,000\nHello there\n\n2\n00:00:05,000 --> 00:00:07,500\nSecond line\n")
        .unwrap();
    std::fs::write(dir.path("fr.srt"), "1\n00:00:02,000 --> 00:00:04,000\nBonjour\n").unwrap();
    let args = format!(
        "-f lavfi -i testsrc2=s=640x360:r=30:d=8 -f lavfi -i sine=f=440:d=8 -f lavfi -i sine=f=880:d=8 -i {} -i {} \
         -map 0 -map 1 -map 2 -map 3 -map 4 -c:v libx264 -preset ultrafast -c:a aac -c:s mov_text \
         -metadata:s:a:0 language=eng -disposition:a:0 default -disposition:a:1 0 \
         -metadata:s:s:0 language=eng -metadata:s:s:1 language=fre -disposition:s:1 forced",
        dir.s("en.srt"),
        dir.s("fr.srt")
    );
    ffmpeg(&args.split_whitespace().chain([clip.as_str()]).collect::<Vec<_>>());
    std::fs::write(dir.path("corrupt.mp4"), vec![0x42u8; 100_000]).unwrap();
    let (hook_url, hooks) = webhook_receiver();
    // Caption files sent with the job: one uploaded (WebVTT), one by URL (SubRip,
    // fetched by the coordinator), and a malformed one.
    std::fs::write(dir.path("de.vtt"), "WEBVTT\n\n00:00:00.500 --> 00:00:02.000 line:0\nHallo\n").unwrap();
    let site = Dir::new();
    std::fs::write(site.path("es.srt"), "1\n00:00:03,000 --> 00:00:04,000\nHola\n").unwrap();
    std::fs::write(dir.path("bad.srt"), "1\n00:00:01,000 --> 00:00:02,000\nfine\n\n2\n00:00:03,000 -> 00:00:04,000\nbroken arrow\n")
        .unwrap();
    let site_server = StaticSite::serve(&site);

    // Everything that happens, as server-sent events.
    let events = dir.path("events.txt");
    let mut sse = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "120",
            "-H",
            &format!("Authorization: Bearer {}", c.admin),
            &format!("{}/api/v1/events", c.url),
            "-o",
            events.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();

    // A corrupt upload fails its own job with a readable reason...
    let (status, bad) = c.upload(&dir.s("corrupt.mp4"), &[]);
    assert_eq!(status, 201, "{bad}");
    let bad = c.wait_ended(bad["id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(bad["state"], "failed");
    assert!(bad["error"].as_str().unwrap().starts_with("bad input:"), "{bad}");
    // So does a malformed caption file, naming its line, before anything is encoded
    // (sent by `drake submit --caption`).
    let out = Command::new(drake_bin())
        .args([
            "submit",
            &dir.s("clip.mp4"),
            "--coordinator",
            &c.url,
            "--token",
            &c.admin,
            "--caption",
            &format!("en={}", dir.s("bad.srt")),
        ])
        .output()
        .unwrap();
    let bad_id = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("job ").to_string();
    let bad = c.wait_ended(&bad_id, Duration::from_secs(60));
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(
        bad["error"], "bad input: caption file 1 (en, bad.srt): line 6: expected START --> END, found \"00:00:03,000 -> 00:00:04,000\"",
        "{bad}"
    );
    assert!(bad["tasks"].as_array().unwrap().is_empty(), "{bad}");

    // ...and the next job succeeds.
    let es_url = format!("{}/es.srt", site_server.url);
    let (status, job) = c.upload(
        &dir.s("clip.mp4"),
        &[("profile", "web"), ("callback_url", &hook_url), ("caption.de", &format!("@{}", dir.s("de.vtt"))), ("caption_url.es", &es_url)],
    );
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let job = c.wait_ended(&id, Duration::from_secs(180));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["playable"], true);
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4, "the audio, 240p, 360p, thumbnails");
    let workers: std::collections::BTreeSet<&str> = tasks.iter().map(|t| t["worker"].as_str().unwrap()).collect();
    assert_eq!(workers.len(), 2, "the renditions spread over both workers: {job}");
    // The thumbnails came from the decode of the lease that took the last rendition:
    // the same worker and the same child.
    let child = |t: &Value| (t["worker"].clone(), t["timing"]["child_started_at"].clone());
    let thumbnails = tasks.iter().find(|t| t["kind"] == "thumbnails").unwrap();
    assert!(thumbnails["timing"]["child_started_at"].is_i64(), "{thumbnails}");
    assert!(tasks.iter().any(|t| t["kind"] == "transcode" && child(t) == child(thumbnails)), "{job}");

    // The master playlist plays over HTTP.
    let master = job["outputs"]["master_playlist"].as_str().unwrap();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-headers",
            &format!("Authorization: Bearer {}\r\n", c.admin),
            "-show_entries",
            "format=duration",
            "-of",
            "json",
            &format!("{}{master}", c.url),
        ])
        .output()
        .unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let duration: f64 = serde_json::from_slice::<Value>(&probe.stdout).unwrap()["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 8.0).abs() < 0.1, "{duration}");
    let master_text = String::from_utf8(c.fetch(master)).unwrap();
    assert_eq!(master_text.matches("#EXT-X-STREAM-INF:BANDWIDTH=").count(), 2);
    assert_eq!(master_text.matches("#EXT-X-I-FRAME-STREAM-INF:").count(), 2);
    assert!(master_text.contains("RESOLUTION=640x360,FRAME-RATE=30.000"));
    // The audio is its own group: every track, the source's default first and
    // DEFAULT=YES, the untagged one named by its stream; every rung points at it.
    assert!(
        master_text.contains(
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"English\",LANGUAGE=\"en\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"audio/a0.m3u8\""
        ),
        "{master_text}"
    );
    assert!(
        master_text.contains(
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"Track 2\",DEFAULT=NO,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"audio/a1.m3u8\""
        ),
        "{master_text}"
    );
    assert_eq!(master_text.lines().filter(|l| l.starts_with("#EXT-X-STREAM-INF:") && l.contains(",AUDIO=\"audio\"")).count(), 2);
    // The text subtitles are a group too, with their languages and dispositions.
    for line in [
        "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"English\",LANGUAGE=\"en\",DEFAULT=YES,AUTOSELECT=YES,FORCED=NO,URI=\"audio/s0.m3u8\"",
        "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"French\",LANGUAGE=\"fr\",DEFAULT=NO,AUTOSELECT=YES,FORCED=YES,URI=\"audio/s1.m3u8\"",
    ] {
        assert!(master_text.contains(line), "{line} in {master_text}");
    }
    assert_eq!(master_text.lines().filter(|l| l.starts_with("#EXT-X-STREAM-INF:") && l.contains(",SUBTITLES=\"subs\"")).count(), 2);
    // The caption files sent with the job join the group.
    for line in [
        "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"German\",LANGUAGE=\"de\",DEFAULT=NO,AUTOSELECT=YES,FORCED=NO,URI=\"captions/c0.m3u8\"",
        "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"Spanish\",LANGUAGE=\"es\",DEFAULT=NO,AUTOSELECT=YES,FORCED=NO,URI=\"captions/c1.m3u8\"",
    ] {
        assert!(master_text.contains(line), "{line} in {master_text}");
    }

    // Every published file matches its manifest checksum.
    let manifest: Value = serde_json::from_slice(&c.fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap();
    let mut files: Vec<Value> = manifest["thumbnails"]["files"].as_array().unwrap().clone();
    for r in manifest["renditions"].as_array().unwrap().iter().chain(manifest["audio"]["tracks"].as_array().unwrap()) {
        files.extend(r["files"].as_array().unwrap().iter().cloned());
    }
    assert!(files.len() > 15, "{}", files.len());
    // The audio packets the MP4s muxed are gone with the job's end, never listed.
    assert!(!files.iter().any(|f| f["url"].as_str().unwrap().ends_with(".pkts")));
    assert_eq!(c.call("GET", &format!("/dav/jobs/{id}/audio/audio.pkts"), Some(&c.admin), None).0, 404);
    for f in &files {
        let bytes = c.fetch(f["url"].as_str().unwrap());
        use sha2::Digest;
        assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap(), "{f}");
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), f["sha256"].as_str().unwrap(), "{f}");
    }
    assert_eq!(manifest["probe"]["streams"][0]["display_width"], 640);

    // Judged by tools no one here wrote: every playlist parses with hls-parser in
    // strict mode, and each rendition's CODECS (in the master playlist too) is what
    // ffprobe finds in its tracks. Each rendition's quality was measured.
    // The rungs' HLS is video-only (their CODECS in the master add the group's
    // audio); their MP4s keep the default audio muxed in, for a plain <video src>.
    let mut playlists = vec![(master.to_string(), master_text.clone())];
    let first_segment = |init: &str, segment: &str, name: &str| {
        let path = dir.path(name);
        std::fs::write(&path, [c.fetch(init), c.fetch(segment)].concat()).unwrap();
        path
    };
    for r in manifest["renditions"].as_array().unwrap() {
        let codecs = r["codecs"].as_str().unwrap();
        assert!(master_text.contains(&format!("CODECS=\"{codecs},mp4a.40.2\",AUDIO=\"audio\"")), "{codecs} in {master_text}");
        let url_of = |name: &str| {
            let f = r["files"].as_array().unwrap().iter().find(|f| f["url"].as_str().unwrap().ends_with(&format!("/{name}")));
            f.unwrap_or_else(|| panic!("{name} in {r}"))["url"].as_str().unwrap().to_string()
        };
        for f in r["files"].as_array().unwrap() {
            let url = f["url"].as_str().unwrap();
            if url.ends_with(".m3u8") {
                playlists.push((url.to_string(), String::from_utf8(c.fetch(url)).unwrap()));
            }
        }
        let mp4 = dir.path("rendition.mp4");
        std::fs::write(&mp4, c.fetch(&url_of(&format!("{}.mp4", r["name"].as_str().unwrap())))).unwrap();
        check_codecs(&format!("{codecs},mp4a.40.2"), &mp4);
        check_codecs(codecs, &first_segment(&url_of("init.mp4"), &url_of("seg_00000.m4s"), "hls.mp4"));
        let psnr = r["quality"]["psnr"].as_f64().unwrap_or_default();
        assert!(psnr > 25.0 && r["quality"]["ssim"].as_f64().unwrap_or_default() > 0.8, "{}", r["quality"]);
    }
    for t in manifest["audio"]["tracks"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let url = t["playlist"].as_str().unwrap();
        playlists.push((url.to_string(), String::from_utf8(c.fetch(url)).unwrap()));
        let (init, segment) = (url.replace(".m3u8", ".init.mp4"), url.replace(".m3u8", ".00000.m4s"));
        check_codecs(t["codecs"].as_str().unwrap(), &first_segment(&init, &segment, "audio.mp4"));
        assert!((t["duration"].as_f64().unwrap() - 8.0).abs() < 0.05, "{t}");
        assert_eq!(t["default"], name == "a0");
    }
    // Each subtitle track is one WebVTT file, timed like the video.
    let subtitles = manifest["subtitles"].as_array().unwrap();
    assert_eq!(subtitles.len(), 4, "the source's two, then the two caption files: {manifest}");
    for t in subtitles {
        let url = t["playlist"].as_str().unwrap();
        playlists.push((url.to_string(), String::from_utf8(c.fetch(url)).unwrap()));
    }
    let vtt = String::from_utf8(c.fetch(subtitles[0]["vtt"].as_str().unwrap())).unwrap();
    assert!(vtt.starts_with("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n"), "{vtt}");
    assert!(vtt.contains("00:00:01.000 --> 00:00:03.000\nHello there\n"), "{vtt}");
    assert_eq!(
        (subtitles[1]["language"].as_str(), subtitles[1]["forced"].as_bool(), subtitles[1]["cues"].as_u64()),
        (Some("fr"), Some(true), Some(1))
    );
    assert_eq!(manifest["skipped_subtitles"], json!([]));
    // The caption files as WebVTT on the video's timeline, listed with their checksums.
    let (de, es) = (&subtitles[2], &subtitles[3]);
    assert_eq!((de["sidecar"].as_str(), de["cues"].as_u64(), es["url"].as_str()), (Some("de.vtt"), Some(1), Some(es_url.as_str())));
    let de_vtt = String::from_utf8(c.fetch(de["vtt"].as_str().unwrap())).unwrap();
    assert_eq!(de_vtt, "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n\n00:00:00.500 --> 00:00:02.000 line:0\nHallo\n");
    let es_vtt = String::from_utf8(c.fetch(es["vtt"].as_str().unwrap())).unwrap();
    assert!(es_vtt.ends_with("\n00:00:03.000 --> 00:00:04.000\nHola\n"), "{es_vtt}");
    for f in de["files"].as_array().unwrap().iter().chain(es["files"].as_array().unwrap()) {
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(c.fetch(f["url"].as_str().unwrap()))), f["sha256"].as_str().unwrap(), "{f}");
    }
    assert_eq!(playlists.len(), 1 + 2 * 2 + 2 + 4, "the master, each rung's media and I-frame playlists, each audio and subtitle track's");
    hls_parser_strict(&playlists);

    // DASH over the same segments: one MPD, each track's timeline listing exactly
    // its HLS segments, and ffmpeg's DASH demuxer reads it to the end.
    let mpd_url = job["outputs"]["dash_manifest"].as_str().unwrap();
    assert_eq!(manifest["dash_manifest"].as_str(), Some(mpd_url));
    let mpd = String::from_utf8(c.fetch(mpd_url)).unwrap();
    for r in manifest["renditions"].as_array().unwrap() {
        let segments = r["timeline"]["segments"].as_array().unwrap();
        assert_eq!(segments.len() as u64, r["segment_count"].as_u64().unwrap(), "{r}");
        let codecs = r["codecs"].as_str().unwrap();
        assert!(mpd.contains(&format!("bandwidth=\"{}\" codecs=\"{codecs}\"", r["peak_bitrate"])), "{codecs} in {mpd}");
    }
    assert_eq!(mpd.matches("<AdaptationSet").count(), 1 + 2 + 4, "video, two audio languages, four subtitles: {mpd}");
    assert!(mpd.contains("<BaseURL>captions/c1.vtt</BaseURL>"), "{mpd}");
    assert!(mpd.contains("mimeType=\"text/vtt\" lang=\"fr\"") && mpd.contains("<BaseURL>audio/s1.vtt</BaseURL>"), "{mpd}");
    let probe = ffprobe(&[
        "-headers",
        &format!("Authorization: Bearer {}\r\n", c.admin),
        "-show_entries",
        "stream=codec_type",
        &format!("{}{mpd_url}", c.url),
    ])
    .to_string();
    assert!(probe.contains("video") && probe.contains("audio"), "{probe}");

    // The webhook came, signed per Standard Webhooks, and was retried after a 500.
    let started = Instant::now();
    while hooks.lock().unwrap().len() < 2 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let hooks = hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 2, "delivered again after a 500");
    let secret = std::fs::read_to_string(c.data.path("webhook-secret")).unwrap();
    for (head, body) in &hooks {
        let (id, ts, sig) = (header(head, "webhook-id"), header(head, "webhook-timestamp"), header(head, "webhook-signature"));
        use base64::Engine;
        use hmac::Mac;
        let key = base64::engine::general_purpose::STANDARD.decode(secret.trim().trim_start_matches("whsec_")).unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        assert_eq!(sig, format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())));
        let payload: Value = serde_json::from_str(body).unwrap();
        assert_eq!(payload["type"], "job.succeeded");
        assert_eq!(payload["data"]["job_id"], job["id"]);
    }
    assert_eq!(header(&hooks[0].0, "webhook-id"), header(&hooks[1].0, "webhook-id"), "a retry keeps its id");

    // Workers are listed with their state.
    let (_, list) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
    let names: std::collections::BTreeSet<&str> = list["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["w1", "w2"].into());
    assert!(list["workers"][0]["capabilities"]["encoders"].as_array().unwrap().iter().any(|e| e == "libx264"));

    let _ = sse.kill();
    let _ = sse.wait();
    let events = std::fs::read_to_string(&events).unwrap();
    assert!(events.contains("\"type\":\"task\"") && events.contains("\"state\":\"succeeded\""), "{events}");
    assert!(events.contains("\"progress\":"), "progress reaches SSE subscribers");
}

/// A video without sound that carries its subtitles (a screen recording, a silent
/// clip captioned for social feeds): with no audio task to extract them beside
/// the audio, a task of their own does. (They were skipped: "the source has no
/// audio and video together".)
#[test]
fn a_video_without_audio_keeps_its_text_subtitles() {
    let c = Coordinator::start();
    let _w = c.worker("w1", &c.join_token(1));
    let dir = Dir::new();
    std::fs::write(dir.path("en.srt"), "1\n00:00:01,000 --> 00:00:02,500\nNo sound here\n").unwrap();
    // And one over the cue limit, which is skipped alone (each cue's text its own:
    // ffmpeg's SubRip reader drops repeated events).
    let flood: String = (1..=25_001).map(|i| format!("{i}\n00:00:01,000 --> 00:00:02,000\nla {i}\n\n")).collect();
    std::fs::write(dir.path("flood.srt"), flood).unwrap();
    let clip = dir.s("silent.mkv");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=4", "-i", &dir.s("en.srt"), "-i", &dir.s("flood.srt"),
             "-map", "0", "-map", "1", "-map", "2", "-c:v", "libx264", "-preset", "ultrafast",
             "-c:s", "srt", "-metadata:s:s:0", "language=eng", &clip]);
    let (status, job) = c.upload(&clip, &[]);
    assert_eq!(status, 201, "{job}");
    let job = c.wait_ended(job["id"].as_str().unwrap(), Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");
    let tasks: Vec<(&str, &str)> =
        job["tasks"].as_array().unwrap().iter().map(|t| (t["kind"].as_str().unwrap(), t["name"].as_str().unwrap())).collect();
    assert!(tasks.contains(&("audio", "subtitles")), "{tasks:?}");

    let manifest: Value = serde_json::from_slice(&c.fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap();
    assert_eq!(manifest["audio"], Value::Null, "no audio tracks: {manifest}");
    assert_eq!(
        manifest["skipped_subtitles"],
        json!([{"stream": 2, "codec": "subrip", "language": null, "reason": "more than 25000 cues"}]),
        "{manifest}"
    );
    let subtitles = manifest["subtitles"].as_array().unwrap();
    assert_eq!(subtitles.len(), 1, "{manifest}");
    let vtt = String::from_utf8(c.fetch(subtitles[0]["vtt"].as_str().unwrap())).unwrap();
    assert!(vtt.contains("00:00:01.000 --> 00:00:02.500\nNo sound here"), "{vtt}");
    let master = String::from_utf8(c.fetch(job["outputs"]["master_playlist"].as_str().unwrap())).unwrap();
    assert!(master.contains("#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"English\",LANGUAGE=\"en\""), "{master}");
    assert!(master.contains("URI=\"subtitles/s0.m3u8\""), "{master}");
    assert!(!master.contains("TYPE=AUDIO"), "{master}");
    let rungs = master.lines().filter(|l| l.starts_with("#EXT-X-STREAM-INF:")).collect::<Vec<_>>();
    assert!(!rungs.is_empty() && rungs.iter().all(|l| l.contains(",SUBTITLES=\"subs\"") && !l.contains("AUDIO=")), "{master}");
}

/// A browser's recording (MediaRecorder's WebM: VP8 and Opus written as a stream,
/// with neither a duration nor cues). The tasks that read the source over HTTP
/// could not tell how long it is (the audio's was "the source at 0.000 s", four
/// times, and the job failed), so the coordinator remuxes it first. A raw stream
/// without a single timestamp is refused, saying so.
#[test]
fn a_browser_recording_without_a_duration_is_transcoded() {
    let c = Coordinator::start();
    let _w = c.worker("w1", &c.join_token(1));
    let dir = Dir::new();
    let clip = dir.s("recording.webm");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=6", "-f", "lavfi", "-i", "sine=d=6:sample_rate=48000",
             "-c:v", "libvpx", "-deadline", "realtime", "-b:v", "300k", "-c:a", "libopus", "-f", "webm", "-live", "1", &clip]);
    let said = Command::new("ffprobe").args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", &clip]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&said.stdout).trim(), "N/A", "the recording says no duration");
    let (status, job) = c.upload(&clip, &[]);
    assert_eq!(status, 201, "{job}");
    let job = c.wait_ended(job["id"].as_str().unwrap(), Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["probe"]["remuxed_parts"], 1, "{}", job["probe"]);
    assert!((job["probe"]["duration"].as_f64().unwrap() - 6.0).abs() < 0.05, "{}", job["probe"]);
    assert!(job["tasks"].as_array().unwrap().iter().all(|t| t["attempts"] == 1), "{job}");
    let manifest: Value = serde_json::from_slice(&c.fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap();
    let tracks = manifest["audio"]["tracks"].as_array().unwrap();
    assert!((tracks[0]["duration"].as_f64().unwrap() - 6.0).abs() < 0.05, "{manifest}");
    assert_eq!(manifest["thumbnails"]["storyboard"]["tiles"].as_u64().map(|n| n > 1), Some(true), "{manifest}");
    for r in manifest["renditions"].as_array().unwrap() {
        assert!((r["duration"].as_f64().unwrap() - 6.0).abs() < 0.05, "{r}");
    }

    // A raw H.264 stream (a dashcam's or DVR's export) has no timestamps to read a
    // duration from either: its own job fails, saying so.
    let raw = dir.s("dashcam.h264");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=2", "-c:v", "libx264", "-f", "h264", &raw]);
    let (status, job) = c.upload(&raw, &[]);
    assert_eq!(status, 201, "{job}");
    let job = c.wait_ended(job["id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(job["state"], "failed", "{job}");
    let why = job["error"].as_str().unwrap();
    assert!(why.starts_with("bad input: ") && why.contains("no packet carries a timestamp"), "{job}");
}

/// A song or podcast whose file carries its cover picture (an M4A's or MP3's
/// front cover): the job's poster, thumbnail and one-tile storyboard are that
/// picture, as a music player shows it. Without one, there are no pictures.
#[test]
fn an_audio_only_upload_shows_its_cover_art() {
    let c = Coordinator::start();
    let _w = c.worker("w1", &c.join_token(1));
    let dir = Dir::new();
    let (cover, plain, song) = (dir.s("cover.png"), dir.s("plain.m4a"), dir.s("song.m4a"));
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=300x200:d=1", "-frames:v", "1", &cover]);
    ffmpeg(&["-f", "lavfi", "-i", "sine=d=6", "-c:a", "aac", &plain]);
    ffmpeg(&["-i", &plain, "-i", &cover, "-map", "0", "-map", "1", "-c", "copy", "-disposition:v:0", "attached_pic", &song]);
    // An MP3 whose cover is damaged past decoding (its JPEG's headers overwritten)
    // is a song without pictures, not a failed job.
    let (jpeg, mp3, broken) = (dir.s("cover.jpg"), dir.s("song.mp3"), dir.s("broken-cover.mp3"));
    ffmpeg(&["-i", &cover, &jpeg]);
    ffmpeg(&["-f", "lavfi", "-i", "sine=d=6", "-i", &jpeg, "-map", "0", "-map", "1", "-c:a", "libmp3lame", "-c:v", "copy", &mp3]);
    let mut bytes = std::fs::read(&mp3).unwrap();
    let at = bytes.windows(3).position(|w| w == [0xff, 0xd8, 0xff]).unwrap();
    let mut x = 12345u32;
    for b in &mut bytes[at + 2..at + 1500] {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    std::fs::write(&broken, bytes).unwrap();
    for (file, with_cover) in [(&song, true), (&plain, false), (&broken, false)] {
        let (status, job) = c.upload(file, &[]);
        assert_eq!(status, 201, "{job}");
        let job = c.wait_ended(job["id"].as_str().unwrap(), Duration::from_secs(120));
        assert_eq!(job["state"], "succeeded", "{job}");
        let kinds: Vec<&str> = job["tasks"].as_array().unwrap().iter().map(|t| t["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, if with_cover { vec!["transcode", "thumbnails"] } else { vec!["transcode"] }, "{file}");
        // Made on the first try, alone or beside the audio rendition's encode.
        assert!(job["tasks"].as_array().unwrap().iter().all(|t| t["attempts"] == 1), "{job}");
        let manifest: Value = serde_json::from_slice(&c.fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap();
        let thumbnails = &manifest["thumbnails"];
        if *file == broken {
            assert_eq!(job["probe"]["streams"][1]["medium"], "cover art that does not decode", "{job}");
        }
        if !with_cover {
            assert_eq!(*thumbnails, Value::Null, "{manifest}");
            continue;
        }
        assert_eq!((&thumbnails["poster"]["width"], &thumbnails["poster"]["height"]), (&json!(300), &json!(200)), "{thumbnails}");
        assert_eq!(thumbnails["thumbnails"].as_array().unwrap().len(), 1, "{thumbnails}");
        assert_eq!(thumbnails["storyboard"]["tiles"], 1, "{thumbnails}");
        let url = |name: &str| {
            let f = thumbnails["files"].as_array().unwrap().iter().find(|f| f["url"].as_str().unwrap().ends_with(name));
            f.unwrap_or_else(|| panic!("{name} in {thumbnails}"))["url"].as_str().unwrap().to_string()
        };
        let vtt = String::from_utf8(c.fetch(&url("storyboard.vtt"))).unwrap();
        assert!(vtt.contains("00:00:00.000 --> 00:00:06.0"), "one tile over the whole song: {vtt}");
        // The poster is the cover: its red bar (testsrc2's first) at the left.
        let poster = image::load_from_memory(&c.fetch(&url("poster.jpg"))).unwrap().to_rgb8();
        let px = poster.get_pixel(20, 150);
        assert!(px[0] > 180 && px[1] < 80 && px[2] < 80, "{px:?}");
    }
}

#[test]
fn a_worker_killed_mid_task_costs_one_lease_not_the_job() {
    let c = Coordinator::start_with(&["--lease-ttl-seconds", "4"]);
    let join = c.join_token(2);
    let dir = Dir::new();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=1280x720:r=30:d=20",
        "-f",
        "lavfi",
        "-i",
        "sine=d=20",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        &dir.s("long.mp4"),
    ]);
    let mut workers = vec![c.worker("victim", &join), c.worker("survivor", &join)];
    let (_, job) = c.upload(&dir.s("long.mp4"), &[]);
    let id = job["id"].as_str().unwrap().to_string();

    // Wait until the victim is visibly mid-task, then SIGKILL it.
    let started = Instant::now();
    let victim_task = loop {
        let (_, list) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
        let busy = list["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "victim")
            .and_then(|w| w["current_tasks"].as_array().and_then(|t| t.first()).cloned());
        if let Some(t) = busy.filter(|t| t["progress"].as_f64().unwrap_or(0.0) > 0.0) {
            break t["task_id"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the victim never got busy: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let victim = workers.remove(0);
    let scratch = victim.scratch.to_string_lossy().into_owned();
    assert!(processes_mentioning(&scratch).iter().any(|p| p.contains(" --out ")), "a child was running");
    assert_eq!(victim.name, "victim");
    drop(victim); // SIGKILL

    // Its child dies with it (PR_SET_PDEATHSIG): no orphaned transcode.
    let started = Instant::now();
    while !processes_mentioning(&scratch).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "orphans: {:?}", processes_mentioning(&scratch));
        std::thread::sleep(Duration::from_millis(100));
    }

    let job = c.wait_ended(&id, Duration::from_secs(300));
    assert_eq!(job["state"], "succeeded", "{job}");
    let t = job["tasks"].as_array().unwrap().iter().find(|t| t["id"] == victim_task.as_str()).unwrap();
    assert_eq!(t["attempts"], 2, "the lost lease was taken back and run again: {t}");
    assert_eq!(workers[0].name, "survivor");

    // No duplicate or partial outputs: each rendition directory holds exactly the
    // files its manifest lists, and no staging or temporary file is left.
    let manifest: Value = serde_json::from_slice(&c.fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap();
    let root = c.data.path(&format!("storage/jobs/{id}"));
    assert!(!root.join(".staging").exists(), "staging left behind");
    for r in manifest["renditions"].as_array().unwrap().iter().chain([&manifest["thumbnails"]]) {
        let dir = r["dir"].as_str().unwrap();
        let mut on_disk: Vec<String> = std::fs::read_dir(c.data.path(&format!("storage/{dir}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut listed: Vec<String> =
            r["files"].as_array().unwrap().iter().map(|f| f["url"].as_str().unwrap().rsplit('/').next().unwrap().to_string()).collect();
        on_disk.sort();
        listed.sort();
        assert_eq!(on_disk, listed, "{dir}");
    }
}

#[test]
fn drake_up_and_drake_submit_from_the_readme() {
    let data = Dir::new();
    let mut up = Command::new(drake_bin())
        .args(["up", "--workers", "2", "--listen", "127.0.0.1:0", "--data", data.tmp.path().to_str().unwrap()])
        .env_remove("DRAKE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap().rsplit(' ').next().unwrap().to_string();
    let line = lines.next().unwrap().unwrap();
    assert!(line.starts_with("admin token: kept in ") && !line.contains("drk_admin_"), "not a terminal, so no secret: {line}");
    let token = std::fs::read_to_string(data.path("admin-token")).unwrap().trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:") && token.starts_with("drk_admin_"), "{url} {token}");

    let dir = Dir::new();
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=480x270:r=25:d=4", "-c:v", "libx264", "-preset", "ultrafast", &dir.s("a.mp4")]);
    std::fs::write(dir.path("bad.mp4"), b"not a video at all").unwrap();
    let submit =
        |file: &str| Command::new(drake_bin()).args(["submit", file, "--coordinator", &url, "--token", &token, "--wait"]).output().unwrap();
    let ok = submit(&dir.s("a.mp4"));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout} {}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("succeeded: master playlist http://127.0.0.1:"), "{stdout}");
    let bad = submit(&dir.s("bad.mp4"));
    assert_eq!(bad.status.code(), Some(1), "the exit code says the job failed");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("failed: bad input"), "{}", String::from_utf8_lossy(&bad.stderr));

    // SIGTERM stops the farm and its workers.
    sigterm(up.id());
    let started = Instant::now();
    while up.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(20), "drake up did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(processes_mentioning(&data.tmp.path().to_string_lossy()).is_empty(), "workers left running");
}

#[test]
fn cancel_kills_the_child_and_sigterm_drains_a_worker() {
    let c = Coordinator::start_with(&["--lease-ttl-seconds", "4", "--max-upload-bytes", "5000000"]);
    let join = c.join_token(2);
    let dir = Dir::new();
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=1280x720:r=30:d=20", "-c:v", "libx264", "-preset", "ultrafast", &dir.s("long.mp4")]);
    let mut w = c.worker("drainer", &join);

    // Uploads over the limit are refused without creating a job. One whose
    // Content-Length is over it, with room for caption files, is refused before
    // a byte is spooled (or the spool made).
    let huge = dir.path("huge.mp4");
    std::fs::File::create(&huge).unwrap().set_len(48 << 20).unwrap();
    let (status, e) = c.upload(&dir.s("huge.mp4"), &[]);
    assert_eq!((status, e["code"].as_str()), (413, Some("too_large")), "{e}");
    assert!(!c.data.path("storage/uploads").exists(), "the spool was made for a refused upload");
    // One within that room is refused once it has sent more than the limit, and
    // the answer reaches the client while it is still sending (`linger`).
    assert!(std::fs::metadata(dir.path("long.mp4")).unwrap().len() > 5_000_000);
    for _ in 0..3 {
        let (status, e) = c.upload(&dir.s("long.mp4"), &[]);
        assert_eq!((status, e["code"].as_str()), (413, Some("too_large")), "{e}");
    }
    let (_, list) = c.call("GET", "/api/v1/jobs", Some(&c.admin), None);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
    assert_eq!(std::fs::read_dir(c.data.path("storage/uploads")).map_or(0, |d| d.count()), 0, "no partial upload left");

    let c = Coordinator::start_with(&["--lease-ttl-seconds", "4"]);
    let join = c.join_token(2);
    drop(w);
    w = c.worker("drainer", &join);
    let scratch = w.scratch.to_string_lossy().into_owned();
    let running = |c: &Coordinator| loop {
        let (_, list) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
        if let Some(t) =
            list["workers"][0]["current_tasks"].as_array().and_then(|t| t.first()).filter(|t| t["progress"].as_f64().unwrap_or(0.0) > 0.0)
        {
            return t["job_id"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    // Cancel: the running child is killed within a heartbeat, and the job ends canceled.
    let (_, job) = c.upload(&dir.s("long.mp4"), &[]);
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(running(&c), id);
    let (status, _) = c.call("POST", &format!("/api/v1/jobs/{id}/cancel"), Some(&c.admin), None);
    assert_eq!(status, 200);
    let started = Instant::now();
    while processes_mentioning(&scratch).iter().any(|p| p.contains(" --out ")) {
        assert!(started.elapsed() < Duration::from_secs(10), "the canceled child still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.wait_ended(&id, Duration::from_secs(5))["state"], "canceled");

    // SIGTERM: the worker finishes the task it is running, takes no new one, and exits.
    let (_, job) = c.upload(&dir.s("long.mp4"), &[]);
    let id = job["id"].as_str().unwrap().to_string();
    running(&c);
    // A lone worker takes the whole ladder in one lease (one decode for all rungs).
    let (_, list) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
    let held: Vec<String> =
        list["workers"][0]["current_tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_string()).collect();
    assert!(!held.is_empty());
    sigterm(w.child.id());
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the worker did not drain");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(exit.success(), "{exit}");
    let (_, j) = c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&c.admin), None);
    for t in j["tasks"].as_array().unwrap() {
        let expected = if held.iter().any(|h| t["id"] == h.as_str()) { "succeeded" } else { "queued" };
        assert_eq!(t["state"], expected, "held tasks finish, no other is taken: {}", j["tasks"]);
    }
}

#[test]
fn each_role_reaches_only_its_routes() {
    let c = Coordinator::start();
    let (status, t) = c.call("POST", "/api/v1/tokens", Some(&c.admin), Some(json!({"role": "submit", "label": "pipeline"})));
    assert_eq!(status, 201, "{t}");
    let submit = t["token"].as_str().unwrap().to_string();
    assert_eq!(c.call("POST", "/api/v1/tokens", Some(&c.admin), Some(json!({"role": "admin", "label": "x"}))).0, 400);
    assert_eq!(c.call("POST", "/api/v1/tokens", Some(&submit), Some(json!({"role": "submit", "label": "x"}))).0, 403);

    // A worker credential, obtained the way a worker gets one.
    let join = c.join_token(1);
    let reg = json!({"version": 1, "name": "probe", "drake_version": "0", "slots": 1, "capabilities": {"encoders": ["libx264"], "cores": 2, "tags": []}});
    let (status, r) = c.call("POST", "/api/v1/workers/register", Some(&join), Some(reg.clone()));
    assert_eq!(status, 201, "{r}");
    let worker = r["token"].as_str().unwrap().to_string();
    assert_eq!(c.call("POST", "/api/v1/workers/register", Some(&join), Some(reg)).0, 401, "a one-use join token is spent");

    for (method, path, body) in [
        ("GET", "/api/v1/jobs", None),
        ("POST", "/api/v1/jobs", Some(json!({"source_url": "http://x/a.mp4"}))),
        ("POST", "/api/v1/join-tokens", Some(json!({"uses": 1, "ttl_seconds": 600}))),
        ("GET", "/api/v1/workers", None),
        ("GET", "/api/v1/events", None),
    ] {
        assert_eq!(c.call(method, path, Some(&worker), body).0, 403, "worker token on {method} {path}");
    }
    for (method, path) in [("POST", "/api/v1/join-tokens"), ("GET", "/api/v1/workers"), ("POST", "/api/v1/workers/lease")] {
        assert_eq!(
            c.call(
                method,
                path,
                Some(&submit),
                Some(json!({"uses": 1, "ttl_seconds": 600, "version": 1, "free_slots": 1, "wait_seconds": 0}))
            )
            .0,
            403,
            "submit token on {method} {path}"
        );
    }
    assert_eq!(c.call("GET", "/api/v1/jobs", Some(&submit), None).0, 200);

    // WebDAV: the worker may write, the submit token may only read, nobody may escape.
    let dav = |token: &str, method: &str, path: &str| -> u16 {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "--path-as-is",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ]);
        if method == "PUT" {
            cmd.args(["--data-binary", "x"]);
        }
        let out = cmd.arg(format!("{}{path}", c.url)).output().unwrap();
        String::from_utf8(out.stdout).unwrap().parse().unwrap()
    };
    assert_eq!(dav(&c.admin, "PUT", "/dav/jobs/probe.txt"), 201);
    assert_eq!(dav(&worker, "PUT", "/dav/jobs/probe.txt"), 403, "a worker writes only where a lease of its own says");
    assert_eq!(dav(&worker, "GET", "/dav/jobs/probe.txt"), 403);
    assert_eq!(dav(&c.admin, "GET", "/dav/jobs/probe.txt"), 200);
    assert_eq!(dav(&submit, "GET", "/dav/jobs/probe.txt"), 403, "not a job of its pipeline");
    assert_eq!(dav(&submit, "PUT", "/dav/jobs/probe.txt"), 403);
    assert_eq!(dav(&submit, "DELETE", "/dav/jobs/probe.txt"), 403);
    assert_eq!(dav("drk_admin_forged", "GET", "/dav/jobs/probe.txt"), 401);

    // Each pipeline sees, cancels and retries only its own jobs; admin sees all.
    let (_, t) = c.call("POST", "/api/v1/tokens", Some(&c.admin), Some(json!({"role": "submit", "label": "other pipeline"})));
    let other_pipeline = t["token"].as_str().unwrap().to_string();
    let body = json!({"source_url": "https://media.example.com/a.mp4", "idempotency_key": "k1"});
    let (status, a_job) = c.call("POST", "/api/v1/jobs", Some(&submit), Some(body.clone()));
    assert_eq!((status, a_job["pipeline"].as_str()), (201, Some("pipeline")), "{a_job}");
    let a_id = a_job["id"].as_str().unwrap();
    let (status, b_job) = c.call("POST", "/api/v1/jobs", Some(&other_pipeline), Some(body));
    assert_eq!(status, 201, "the same key in another pipeline is another job");
    assert_ne!(b_job["id"], a_job["id"]);
    for (method, path) in [
        ("GET", format!("/api/v1/jobs/{a_id}")),
        ("POST", format!("/api/v1/jobs/{a_id}/cancel")),
        ("POST", format!("/api/v1/jobs/{a_id}/retry")),
    ] {
        assert_eq!(c.call(method, &path, Some(&other_pipeline), None).0, 404, "{method} {path}");
    }
    let (_, listed) = c.call("GET", "/api/v1/jobs", Some(&other_pipeline), None);
    assert_eq!(listed["jobs"].as_array().unwrap().iter().map(|j| j["id"].clone()).collect::<Vec<_>>(), [b_job["id"].clone()]);
    assert_eq!(c.call("GET", &format!("/api/v1/jobs/{a_id}"), Some(&submit), None).0, 200);
    let (_, all) = c.call("GET", "/api/v1/jobs", Some(&c.admin), None);
    assert_eq!(all["jobs"].as_array().unwrap().len(), 2);
    // Admins list and revoke pipelines' tokens; a revoked token stops at once.
    let (status, tokens) = c.call("GET", "/api/v1/tokens", Some(&c.admin), None);
    assert_eq!(status, 200);
    let other_id = tokens["tokens"].as_array().unwrap().iter().find(|t| t["pipeline"] == "other pipeline").unwrap()["id"].clone();
    assert!(!tokens.to_string().contains(&other_pipeline), "tokens are never shown again");
    assert_eq!(c.call("GET", "/api/v1/tokens", Some(&submit), None).0, 403);
    assert_eq!(c.call("POST", &format!("/api/v1/tokens/{}/revoke", other_id.as_str().unwrap()), Some(&c.admin), None).0, 204);
    assert_eq!(c.call("GET", "/api/v1/jobs", Some(&other_pipeline), None).0, 401);
    assert_eq!(dav(&worker, "GET", "/dav/jobs/../../admin-token"), 403);
    assert_eq!(dav(&worker, "GET", "/dav/jobs/%2e%2e/%2e%2e/admin-token"), 403);
    assert_eq!(dav(&c.admin, "GET", "/dav/uploads/"), 403);

    // A worker reaches its leases' sources and staging directories, and nothing else.
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "320x180", 1);
    let (_, mine) = c.upload(&dir.s("clip.mp4"), &[]);
    let (_, other) = c.upload(&dir.s("clip.mp4"), &[]);
    let (mine, other) = (mine["id"].as_str().unwrap(), other["id"].as_str().unwrap());
    c.wait_for(mine, |j| j["tasks"].as_array().is_some_and(|t| !t.is_empty()));
    let (status, lease) = c.call(
        "POST",
        "/api/v1/workers/lease",
        Some(&worker),
        Some(json!({"version": 1, "free_slots": 1, "wait_seconds": 10, "max_tasks": 1})),
    );
    assert_eq!((status, lease["job_id"].as_str()), (200, Some(mine)), "{lease}");
    let staging = format!("/dav/{}", lease["output_dir"].as_str().unwrap());
    let epoch = lease["epoch"].as_i64().unwrap();
    assert_eq!(dav(&worker, "MKCOL", "/dav/jobs/"), 405, "parents may be made (they exist)");
    assert_eq!(dav(&worker, "MKCOL", &format!("/dav/jobs/{mine}/")), 405);
    assert_eq!(dav(&worker, "MKCOL", &format!("/dav/jobs/{mine}/.staging/")), 201);
    assert_eq!(dav(&worker, "MKCOL", &format!("{staging}/")), 201);
    assert_eq!(dav(&worker, "PUT", &format!("{staging}/.f.part")), 201);
    assert_eq!(dav(&worker, "GET", &format!("{staging}/.f.part")), 200);
    assert_eq!(dav(&worker, "GET", &format!("/dav/jobs/{mine}/source")), 200);
    for (method, path) in [
        ("GET", format!("/dav/jobs/{other}/source")),
        ("PUT", format!("/dav/jobs/{other}/.staging/240p.e1/x")),
        ("PUT", staging.replace(&format!(".e{epoch}"), &format!(".e{}", epoch + 1)) + "/x"),
        ("PUT", format!("/dav/jobs/{mine}/240p/rendition.json")),
        ("DELETE", format!("/dav/jobs/{mine}/source")),
        ("PUT", format!("/dav/jobs/{mine}/master.m3u8")),
        ("PROPFIND", format!("{staging}/")),
        ("DELETE", format!("/dav/jobs/{mine}/")),
    ] {
        assert_eq!(dav(&worker, method, &path), 403, "worker {method} {path}");
    }
    // Once the lease is gone, so is the access.
    let (status, _) = c.call("POST", &format!("/api/v1/jobs/{mine}/cancel"), Some(&c.admin), None);
    assert_eq!(status, 200);
    assert_eq!(dav(&worker, "PUT", &format!("{staging}/.g.part")), 403);
    assert_eq!(dav(&worker, "GET", &format!("/dav/jobs/{mine}/source")), 403);
}

#[test]
fn outputs_can_live_on_an_external_webdav_server() {
    let nginx = Nginx::start();
    let c = Coordinator::start_with(&["--storage-url", &nginx.url, "--storage-authorization", Nginx::AUTHORIZATION]);
    let join = c.join_token(1);
    let _w = c.worker("w", &join);
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "640x360", 4);
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    let job = c.wait_ended(id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");

    // Outputs are nginx URLs, and play from there.
    let master = job["outputs"]["master_playlist"].as_str().unwrap();
    assert_eq!(master, format!("{}/jobs/{id}/master.m3u8", nginx.url));
    let probe = ffprobe(&["-headers", &format!("Authorization: {}\r\n", Nginx::AUTHORIZATION), "-show_format", master]);
    assert!((probe["format"]["duration"].as_str().unwrap().parse::<f64>().unwrap() - 4.0).abs() < 0.2, "{probe}");
    let manifest: Value = serde_json::from_slice(&nginx.fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap();
    let mut files: Vec<Value> = manifest["thumbnails"]["files"].as_array().unwrap().clone();
    for r in manifest["renditions"].as_array().unwrap().iter().chain(manifest["audio"]["tracks"].as_array().unwrap()) {
        files.extend(r["files"].as_array().unwrap().iter().cloned());
    }
    assert!(files.len() > 15);
    for f in &files {
        let url = f["url"].as_str().unwrap();
        assert!(url.starts_with(&nginx.url), "{url}");
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(nginx.fetch(url))), f["sha256"].as_str().unwrap(), "{f}");
    }

    // Nothing half-written or staged is left on the store, and nothing stored locally.
    let stored = files_under(&nginx.root);
    assert!(stored.iter().all(|p| !p.contains(".staging") && !p.contains(".part")), "{stored:#?}");
    assert!(stored.iter().any(|p| p.ends_with(&format!("jobs/{id}/source"))));
    assert!(files_under(&c.data.path("storage")).iter().all(|p| p.ends_with('/')), "only empty directories locally");
    // The coordinator does not serve storage it does not hold, and the store wants its credential.
    assert_eq!(c.call("GET", &format!("/dav/jobs/{id}/master.m3u8"), Some(&c.admin), None).0, 404);
    let anonymous = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", master]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");
}

#[test]
fn a_coordinator_whose_output_is_closed_keeps_serving() {
    let data = Dir::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(drake_bin())
        .args(["coordinator", "--data", &data.s(""), "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // like a terminal that went away
    let started = Instant::now();
    let health = loop {
        let out = Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/healthz")]).output().unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(child.try_wait().unwrap().is_none(), "the coordinator died when its stdout closed");
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(health.contains("\"ok\":true"), "{health}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_worker_whose_stderr_closed_waits_out_a_coordinator_restart() {
    let mut c = Coordinator::start();
    let join = c.join_token(1);
    let mut w = c.worker_with_stderr("w", &join, Stdio::piped());
    drop(w.child.stderr.take()); // a log reader that went away: every line now hits a closed pipe
    let registered = Instant::now();
    while c.call("GET", "/api/v1/workers", Some(&c.admin), None).1["workers"].as_array().is_none_or(|ws| ws.is_empty()) {
        assert!(registered.elapsed() < Duration::from_secs(10), "the worker registers");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The coordinator goes away mid long-poll: the worker logs each failed lease and backs off.
    let _ = c.child.kill();
    let _ = c.child.wait();
    std::thread::sleep(Duration::from_secs(4));
    assert!(w.child.try_wait().unwrap().is_none(), "the worker died logging into a closed pipe");
    c.restart();
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "320x240", 2);
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{job}");
    let job = c.wait_ended(job["id"].as_str().unwrap(), Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "the same worker carries on: {job}");
    assert!(job["tasks"].as_array().unwrap().iter().all(|t| t["worker"].as_str().is_some()));
}

#[test]
fn weak_secrets_are_refused_at_start() {
    let start = |data: &Dir, env: Option<&str>| {
        let mut cmd = Command::new(drake_bin());
        cmd.args(["coordinator", "--data", data.tmp.path().to_str().unwrap(), "--listen", "127.0.0.1:0"]).env_remove("DRAKE_ADMIN_TOKEN");
        if let Some(v) = env {
            cmd.env("DRAKE_ADMIN_TOKEN", v);
        }
        let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap().wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // An empty admin-token file is not an empty admin token.
    let data = Dir::new();
    std::fs::write(data.path("admin-token"), "\n").unwrap();
    let (code, err) = start(&data, None);
    assert_ne!(code, Some(0));
    assert!(err.contains("admin-token") && err.contains("24 to 256"), "{err}");
    // Nor is an empty DRAKE_ADMIN_TOKEN.
    let (code, err) = start(&Dir::new(), Some("  "));
    assert_ne!(code, Some(0));
    assert!(err.contains("DRAKE_ADMIN_TOKEN"), "{err}");
    // A webhook secret that cannot sign.
    let data = Dir::new();
    std::fs::write(data.path("webhook-secret"), "whsec_").unwrap();
    let (code, err) = start(&data, None);
    assert_ne!(code, Some(0));
    assert!(err.contains("webhook-secret"), "{err}");
}

/// A worker started again with its issued credential (it does not register again,
/// as after an in-place upgrade) says what it now is with its first lease: its
/// encoders, its encoder build (which a rendition's chunks stay with) and its
/// version replace those recorded. What a worker says it is has bounds.
#[test]
fn a_worker_started_with_its_issued_credential_says_what_it_now_is() {
    let c = Coordinator::start();
    let register = |caps: Value| {
        let reg = json!({"version": proto::WIRE_VERSION, "name": "m1", "drake_version": "0.0.1", "slots": 1, "capabilities": caps});
        c.call("POST", "/api/v1/workers/register", Some(&c.join_token(1)), Some(reg))
    };
    for (caps, what) in [
        (json!({"encoders": ["libx264"], "cores": 2, "encoder_build": "b".repeat(201)}), "a long build"),
        (json!({"encoders": ["libx264"], "cores": 2, "encoder_build": ""}), "an empty build"),
        (json!({"encoders": ["libx264"], "cores": 2, "tags": ["t".repeat(101)]}), "a long tag"),
        (json!({"encoders": vec!["libx264"; 501], "cores": 2}), "too many encoders"),
    ] {
        assert_eq!(register(caps).0, 400, "{what}");
    }
    let (status, reg) = register(json!({"encoders": ["libx264"], "cores": 2}));
    assert_eq!(status, 201, "{reg}");
    let id = reg["worker_id"].as_str().unwrap().to_string();
    let listed = || {
        let (_, workers) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
        workers["workers"].as_array().unwrap().iter().find(|w| w["id"] == id.as_str()).unwrap().clone()
    };
    let before = listed();
    assert_eq!((&before["drake_version"], &before["capabilities"]["encoder_build"]), (&json!("0.0.1"), &Value::Null), "{before}");

    let _w = c.worker("m1", reg["token"].as_str().unwrap());
    let started = Instant::now();
    let now = loop {
        let w = listed();
        if w["drake_version"] != "0.0.1" {
            break w;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never said what it is: {w}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(now["drake_version"], env!("CARGO_PKG_VERSION"), "{now}");
    let build = now["capabilities"]["encoder_build"].as_str().unwrap_or_default();
    assert!(build.starts_with(&format!("drake {}, libavcodec ", env!("CARGO_PKG_VERSION"))) && build.contains("libx264 core "), "{now}");
    assert!(now["capabilities"]["encoders"].as_array().unwrap().contains(&json!("aac")), "its encoders too: {now}");
}

#[test]
fn every_size_and_count_a_stranger_sends_is_bounded() {
    let mut c = Coordinator::start_with(&["--max-upload-bytes", "100000"]);
    let dir = Dir::new();
    let curl_status = |args: &[&str]| -> u16 {
        let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
    };
    let auth = format!("Authorization: Bearer {}", c.admin);
    let jobs = format!("{}/api/v1/jobs", c.url);
    // JSON at most 1 MiB, refused at once.
    std::fs::write(dir.path("big.json"), format!("{{\"source_url\": \"https://media.example.com/{}\"}}", "a".repeat(2 << 20))).unwrap();
    let big = format!("@{}", dir.s("big.json"));
    assert_eq!(curl_status(&["-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &big, &jobs]), 413);
    // Uploads by --max-upload-bytes; text fields before they are read.
    std::fs::write(dir.path("big.mp4"), vec![7u8; 300_000]).unwrap();
    assert_eq!(curl_status(&["-H", &auth, "-F", &format!("file=@{}", dir.s("big.mp4")), &jobs]), 413);
    // Refused part way through, the client, still sending, reads the refusal rather than a
    // reset: the server reads on past its refusal for a while. Without that, about one in
    // sixty of these (a body under curl's 1 MiB `Expect: 100-continue` threshold) saw a reset
    // on a busy machine.
    std::fs::write(dir.path("big.mp4"), vec![7u8; 1_000_000]).unwrap();
    let file = format!("file=@{}", dir.s("big.mp4"));
    let answers: Vec<u16> = (0..40).map(|_| curl_status(&["-H", &auth, "-F", &file, &jobs])).collect();
    assert!(answers.iter().all(|&a| a == 413), "{answers:?}");
    // Every route reads on so: a worker's call and a store write, refused before a
    // byte of their bodies was read.
    let body = format!("@{}", dir.s("big.mp4"));
    for (method, path) in [("POST", "/api/v1/workers/lease"), ("PUT", "/dav/jobs/x/out.bin")] {
        let url = format!("{}{path}", c.url);
        let answers: Vec<u16> = (0..20).map(|_| curl_status(&["-X", method, "--data-binary", &body, &url])).collect();
        assert!(answers.iter().all(|&a| a == 401), "{method} {path}: {answers:?}");
    }
    std::fs::write(dir.path("small.mp4"), vec![7u8; 1000]).unwrap();
    let long_field = format!("callback_url=https://x.example/{}", "b".repeat(20_000));
    assert_eq!(curl_status(&["-H", &auth, "-F", &long_field, "-F", &format!("file=@{}", dir.s("small.mp4")), &jobs]), 400);
    // Event streams per token.
    let events = format!("{}/api/v1/events", c.url);
    let mut open: Vec<std::process::Child> =
        (0..16).map(|_| Command::new("curl").args(["-sN", "-H", &auth, &events]).stdout(Stdio::null()).spawn().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let exited: Vec<_> = open.iter_mut().filter_map(|p| p.try_wait().unwrap()).collect();
    assert!(exited.is_empty(), "streams ended: {exited:?}");
    let started = Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(10) {
        status = curl_status(&["-H", &auth, "--max-time", "2", &events]);
        if status == 429 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status, 429, "the 17th stream of one token");
    for mut p in open.drain(..) {
        let _ = p.kill();
        let _ = p.wait();
    }
    let (_, listed) = c.call("GET", "/api/v1/jobs", Some(&c.admin), None);
    assert_eq!(listed["jobs"], json!([]), "nothing refused was recorded");
    let spool = c.data.path("storage/uploads");
    assert!(std::fs::read_dir(&spool).map_or(true, |d| d.count() == 0), "no partial upload left");
    // A partial upload left by a crash is removed at start.
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("01a2-stale"), b"half an upload").unwrap();
    c.restart();
    assert!(!spool.join("01a2-stale").exists());

    // A full spool disk refuses uploads with 507 and loses nothing.
    let full = Coordinator::start_with(&["--min-free-disk-bytes", "1000000000000000000"]);
    let (status, e) = full.upload(&dir.s("small.mp4"), &[]);
    assert_eq!((status, e["code"].as_str()), (507, Some("insufficient_storage")), "{e}");
    let (_, listed) = full.call("GET", "/api/v1/jobs", Some(&full.admin), None);
    assert_eq!(listed["jobs"], json!([]));
}

#[test]
fn a_job_that_requires_a_tag_runs_only_on_a_worker_with_it() {
    let c = Coordinator::start();
    let join = c.join_token(2);
    let _plain = c.worker_with_stderr("plain", &join, Stdio::null());
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "320x240", 2);
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[("requires_tags", "gpu")]);
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["requires_tags"], json!(["gpu"]));
    let id = job["id"].as_str().unwrap();
    // The reconciler's capable-worker check (every tenth second) says why it waits:
    // its first task, the audio, needs no encoder but the tag.
    c.wait_for(id, |j| j["waiting_for"].as_str().is_some_and(|w| w == "a capable worker: no live worker has the tags gpu"));
    assert!(
        c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&c.admin), None).1["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "queued")
    );
    // A bad tag is refused at submit.
    assert_eq!(c.upload(&dir.s("clip.mp4"), &[("requires_tags", "GPU!")]).0, 400);
    let scratch = c.data.path("scratch-gpu");
    let _gpu = Worker {
        child: Command::new(drake_bin())
            .args(["worker", "--coordinator", &c.url, "--name", "gpu", "--tags", "gpu,ssd", "--scratch", scratch.to_str().unwrap()])
            .env("DRAKE_TOKEN", &join)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        name: "gpu".into(),
        scratch,
    };
    let job = c.wait_ended(id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, workers) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
    let gpu = workers["workers"].as_array().unwrap().iter().find(|w| w["name"] == "gpu").unwrap()["id"].clone();
    assert!(job["tasks"].as_array().unwrap().iter().all(|t| t["worker"] == gpu), "{job}");
}

/// A worker whose scratch disk is full takes no task (it would fail every one with
/// ENOSPC and spend the jobs' attempts), stays live, and takes work again once
/// there is room.
#[test]
fn a_worker_with_a_full_scratch_disk_takes_no_task_until_there_is_room() {
    let c = Coordinator::start();
    let scratch = c.data.path("scratch-w1");
    let Some(disk) = SpoolDisk::mount(&scratch, 16) else {
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        return;
    };
    let ballast = disk.fill_to(2 << 20);
    let log = c.data.path("w1.log");
    let mut worker = Command::new(drake_bin())
        .args(["worker", "--coordinator", &c.url, "--name", "w1", "--scratch", scratch.to_str().unwrap()])
        .args(["--min-free-scratch-bytes", &(8u64 << 20).to_string()])
        .env("DRAKE_TOKEN", c.join_token(1))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "320x240", 2);
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let planned = c.wait_for(&id, |j| !j["tasks"].as_array().unwrap().is_empty());
    let stderr = || std::fs::read_to_string(&log).unwrap();
    let since = Instant::now();
    while !stderr().contains("taking no tasks") {
        assert!(since.elapsed() < Duration::from_secs(10), "{}", stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let (_, now) = c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&c.admin), None);
    assert!(now["tasks"].as_array().unwrap().iter().all(|t| t["state"] == "queued" && t["attempts"] == 0), "{planned}\n{now}");
    let (_, workers) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
    let w = &workers["workers"][0];
    assert_eq!((w["state"].as_str(), w["free_slots"].as_i64()), (Some("paused"), Some(0)), "live, with no slot free: {workers}");
    assert!(w["paused"].as_str().is_some_and(|why| why.contains("less than the 8388608 it keeps")), "{workers}");
    assert!(stderr().contains("less than the 8388608 it keeps"), "{}", stderr());

    std::fs::remove_file(ballast).unwrap();
    let ended = c.wait_ended(&id, Duration::from_secs(60));
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert!(stderr().contains("has room again"), "{}", stderr());
    let (_, workers) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
    assert_eq!((workers["workers"][0]["state"].as_str(), &workers["workers"][0]["paused"]), (Some("idle"), &Value::Null), "{workers}");
    let _ = worker.kill();
    let _ = worker.wait();
}
