//! A long source through the farm cut in time chunks, against the same source
//! encoded whole: the same outputs, frame for frame, with seams that play and seek.
//! A chunk whose attempt fails is retried alone, and a chunk with the wrong frame
//! count is rejected before any join sees it.

mod common;

use common::farm::*;
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The web ladder, cut in 60 s chunks from 60 s up (`chunky`), in 6 s chunks
/// (`short`), or never (`whole`).
fn profiles(dir: &Dir) -> String {
    let web = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles/web.toml")).unwrap();
    #[rustfmt::skip]
    let profiles = [("chunky", "min_duration_s = 60\nchunk_s = 60"), ("short", "min_duration_s = 0\nchunk_s = 6"),
                    ("whole", "min_duration_s = 86400")];
    for (name, chunking) in profiles {
        let text = web.replace("name = \"web\"", &format!("name = \"{name}\""));
        std::fs::write(dir.path(&format!("{name}.toml")), format!("{text}\n[chunking]\n{chunking}\n")).unwrap();
    }
    dir.s("")
}

/// A coordinator with these profiles, storing on an external WebDAV server (nginx).
fn on_external_storage(dir: &Dir) -> (Nginx, Coordinator) {
    let profiles_dir = profiles(dir);
    let nginx = Nginx::start();
    let storage = ["--storage-url", &nginx.url, "--storage-authorization", Nginx::AUTHORIZATION];
    let c = Coordinator::start_env(&storage, "", &[("DRAKE_PROFILES_DIR", &profiles_dir)]);
    (nginx, c)
}

#[test]
fn a_long_source_cut_in_chunks_comes_out_as_its_whole_encode_does() {
    let dir = Dir::new();
    let profiles_dir = profiles(&dir);
    let c = Coordinator::start_env(&["--lease-ttl-seconds", "6"], "", &[("DRAKE_PROFILES_DIR", &profiles_dir)]);
    // About 4 minutes, stereo, at 29.97 fps (chunk starts fall between frames),
    // with source keyframes far apart (each chunk seeks well before its start).
    let src = dir.s("long.mp4");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=640x360:r=30000/1001:d=241", "-f", "lavfi", "-i", "sine=f=440:d=241:sample_rate=48000",
             "-ac", "2", "-c:v", "libx264", "-preset", "ultrafast", "-g", "300", "-c:a", "aac", "-shortest", &src]);

    let (status, chunked) = c.upload(&src, &[("profile", "chunky")]);
    assert_eq!(status, 201, "{chunked}");
    let chunked_id = chunked["id"].as_str().unwrap().to_string();
    let planned = c.wait_for(&chunked_id, |j| !j["tasks"].as_array().unwrap().is_empty());
    let kinds = |j: &Value, kind: &str| j["tasks"].as_array().unwrap().iter().filter(|t| t["kind"] == kind).count();
    // 240p and 360p, 4 chunks each; the audio once; a join per rung; the thumbnails.
    assert_eq!((kinds(&planned, "chunk"), kinds(&planned, "audio"), kinds(&planned, "join")), (8, 1, 2), "{planned}");
    assert_eq!(planned["chunks"], json!({"count": 4, "done": 0}));

    // A worker of our own, on the wire: one chunk attempt fails, another reports a
    // wrong frame count; both run again, alone, on the real workers.
    let fake = FakeWorker::register(&c);
    let (failed, rejected) = (fake.lease_chunk(), fake.lease_chunk());
    let fail = json!({"epoch": failed["epoch"], "error": "injected failure", "retryable": true});
    assert_eq!(fake.post(&failed, "fail", fail).0, 204);
    let (status, body) = fake.complete_with_frames(&rejected, 7);
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("7 frames"), "{body}");

    let (status, whole) = c.upload(&src, &[("profile", "whole")]);
    assert_eq!(status, 201, "{whole}");
    let whole_id = whole["id"].as_str().unwrap().to_string();
    let join = c.join_token(2);
    let (_w1, _w2) = (c.worker("w1", &join), c.worker("w2", &join));
    let chunked = c.wait_ended(&chunked_id, Duration::from_secs(900));
    assert_eq!(chunked["state"], "succeeded", "{chunked}");
    let whole = c.wait_ended(&whole_id, Duration::from_secs(900));
    assert_eq!(whole["state"], "succeeded", "{whole}");

    // The chunk that failed and the one rejected ran again; no other chunk did.
    let tasks = chunked["tasks"].as_array().unwrap();
    for t in tasks.iter().filter(|t| t["kind"] == "chunk") {
        let again = t["id"] == failed["task_id"] || t["id"] == rejected["task_id"];
        assert_eq!(t["attempts"], if again { 2 } else { 1 }, "{t}");
    }
    assert_eq!(chunked["chunks"], json!({"count": 4, "done": 4}));
    let workers: std::collections::BTreeSet<&str> =
        tasks.iter().filter(|t| t["kind"] == "chunk").map(|t| t["worker"].as_str().unwrap()).collect();
    assert_eq!(workers.len(), 2, "chunks spread over both workers: {chunked}");

    let (mc, mw) = (manifest(&c, &chunked), manifest(&c, &whole));
    assert_eq!(mc["chunking"]["chunks"], 4, "{}", mc["chunking"]);
    assert_eq!(mc["chunking"]["tasks"].as_array().unwrap().len(), 8);
    assert!(mc["chunking"]["tasks"].as_array().unwrap().iter().all(|t| t["worker"].is_string()));
    assert_eq!(mw["chunking"], Value::Null);
    let renditions = |m: &Value| m["renditions"].as_array().unwrap().clone();
    assert_eq!(renditions(&mc).len(), 2);
    let frame = 1001.0 / 30000.0;
    for (rc, rw) in renditions(&mc).iter().zip(&renditions(&mw)) {
        let name = rc["name"].as_str().unwrap();
        assert_eq!(rw["name"], name);
        let names = |r: &Value| {
            let mut n: Vec<String> =
                r["files"].as_array().unwrap().iter().map(|f| f["url"].as_str().unwrap().rsplit('/').next().unwrap().into()).collect();
            n.sort();
            n
        };
        assert_eq!(names(rc), names(rw), "{name}: the same files as a whole encode");
        for key in ["frame_count", "keyframe_times", "segment_count", "codecs", "width", "height"] {
            assert_eq!(rc[key], rw[key], "{name}: {key}");
        }
        let (dc, dw) = (rc["duration"].as_f64().unwrap(), rw["duration"].as_f64().unwrap());
        assert!((dc - dw).abs() <= frame, "{name}: durations {dc} vs {dw}");

        let (local_c, local_w) = (download(&c, rc, &dir.path(&format!("c-{name}"))), download(&c, rw, &dir.path(&format!("w-{name}"))));
        let progressive = rc["file_roles"]["progressive"].as_str().unwrap();
        let audio_samples = |d: &Path| {
            let a = streams(&d.join(progressive)).into_iter().find(|s| s["codec_type"] == "audio").unwrap();
            a["duration_ts"].as_u64().unwrap()
        };
        let (ac, aw) = (audio_samples(&local_c), audio_samples(&local_w));
        assert!(ac.abs_diff(aw) <= 1024, "{name}: audio samples {ac} vs {aw}");
        assert_eq!(streams(&local_c.join(progressive)).iter().find(|s| s["codec_type"] == "audio").unwrap()["channels"], 2);
        check_segments(&local_c, &dir.path("seg.mp4"));
        // At each seam, x264's rate control restarted: PSNR against the source over
        // the frames around it is within 0.5 dB of the whole encode's, and no 2 s
        // window across it holds more than the VBV allows (maxrate for 2 s plus the buffer).
        let (maxrate, bufsize) = if name == "240p" { (400_000.0, 800_000.0) } else { (800_000.0, 1_600_000.0) };
        let (mc, mw) = (local_c.join(progressive), local_w.join(progressive));
        for seam_frame in [1799u64, 3597, 5395] {
            let around = (seam_frame - 15, seam_frame + 15);
            let (pc, pw) = (seam_psnr(&mc, &src, around), seam_psnr(&mw, &src, around));
            let seam = seam_frame as f64 * frame;
            let (bc, bw) = (window_peak(&mc, seam), window_peak(&mw, seam));
            eprintln!(
                "{name} seam at frame {seam_frame}: PSNR {pc:.2} dB chunked, {pw:.2} whole; peak 2 s {:.0} kbit chunked, {:.0} whole",
                bc / 1e3,
                bw / 1e3
            );
            assert!((pc - pw).abs() <= 0.5, "{name} seam at frame {seam_frame}: PSNR {pc:.2} vs {pw:.2} dB");
            assert!(bc <= 2.0 * maxrate + bufsize, "{name} seam at frame {seam_frame}: {bc} bits in 2 s");
        }
        // A seek to just after each seam decodes cleanly.
        for seam in [60.0, 120.0, 180.0] {
            let at = format!("{:.3}", seam + 0.05);
            let mp4 = local_c.join(progressive);
            let o = Command::new("ffmpeg")
                .args(["-v", "error", "-ss", &at, "-i", mp4.to_str().unwrap(), "-frames:v", "30", "-f", "null", "-"])
                .output()
                .unwrap();
            assert!(o.status.success() && o.stderr.is_empty(), "{name} at {at}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }

    // ffprobe plays it through the master playlist, over HTTP.
    let master = chunked["outputs"]["master_playlist"].as_str().unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", c.admin);
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-headers", &auth, "-show_entries", "format=duration", "-of", "json", &format!("{}{master}", c.url)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let duration: f64 = serde_json::from_slice::<Value>(&o.stdout).unwrap()["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 241.0).abs() < 0.1, "{duration}");
    // The dashboard's job page says how the job was split, and who did each chunk.
    let page = dashboard_page(&c, &format!("/jobs/{chunked_id}"));
    assert!(page.contains("Cut in 4 time chunks") && page.contains(": 4 done."), "{page}");
    for chunk in ["240p #0", "240p #3", "360p #0", "240p join"] {
        assert!(page.contains(chunk), "{chunk} in {page}");
    }
    assert!(page.contains("<td>w1</td>") && page.contains("<td>w2</td>"), "{page}");
    // The parts are gone once the job succeeded: only what an unchunked job has is left.
    let job_dir = c.data.path(&format!("storage/jobs/{chunked_id}"));
    assert!(!job_dir.join(".chunks").exists() && !job_dir.join(".staging").exists(), "{:?}", files_under(&job_dir));
}

/// MPEG-TS recordings joined end to end (a recorder's parts, concatenated): their
/// timestamps start over at the join. The coordinator's probe finds the join and
/// makes the source one timeline (`drake remux`, into Matroska) before it plans,
/// and stores it in place of the upload, here on an external WebDAV server: the
/// chunks seek in one timeline, and the job holds both parts, in order.
#[test]
fn recordings_joined_end_to_end_are_made_one_timeline_and_cut_in_chunks() {
    let dir = Dir::new();
    let (nginx, c) = on_external_storage(&dir);
    joined_recordings(&dir, "320x240", 25, 12, &["-g", "50"]);
    let (status, job) = c.upload(&dir.s("joined.ts"), &[("profile", "short")]);
    assert_eq!(status, 201, "{job}");
    let join = c.join_token(1);
    let _w = c.worker("w1", &join);
    let job = c.wait_ended(job["id"].as_str().unwrap(), Duration::from_secs(300));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["chunks"], json!({"count": 4, "done": 4}), "{job}");

    assert_eq!(
        (job["probe"]["container"].as_str(), job["probe"]["remuxed_parts"].as_u64()),
        (Some("matroska,webm"), Some(2)),
        "{}",
        job["probe"]
    );
    let job_dir = nginx.root.join(format!("jobs/{}", job["id"].as_str().unwrap()));
    let stored = std::fs::read(job_dir.join("source")).unwrap();
    assert_eq!(stored[..4], [0x1a, 0x45, 0xdf, 0xa3], "the stored source is Matroska (EBML)");
    let mp4 = job_dir.join("240p/240p.mp4");
    let video = streams(&mp4).into_iter().find(|s| s["codec_type"] == "video").unwrap();
    // 24 s at 25 fps, held to the audio's end (its last AAC frame ends after the video).
    let frames: u64 = video["nb_frames"].as_str().unwrap().parse().unwrap();
    assert!((600..=602).contains(&frames), "{video}");
    let audio = mono_48k(&mp4);
    let (first, second) = (tone_hz(&audio[48000..10 * 48000]), tone_hz(&audio[14 * 48000..23 * 48000]));
    assert!((first - 440.0).abs() <= 10.0 && (second - 880.0).abs() <= 10.0, "tones {first} and {second} Hz");
}

/// A dashboard page, signed in with the admin token.
fn dashboard_page(c: &Coordinator, path: &str) -> String {
    let login = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--data", &format!("token={}", c.admin), &format!("{}/login", c.url)])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&login.stdout).to_ascii_lowercase();
    let cookie = head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).expect("a session cookie");
    let cookie = format!("Cookie: {}", cookie.split(';').next().unwrap());
    let page = Command::new("curl").args(["-sf", "-H", &cookie, &format!("{}{path}", c.url)]).output().unwrap();
    assert!(page.status.success(), "GET {path}");
    String::from_utf8(page.stdout).unwrap()
}

/// A job's manifest.
fn manifest(c: &Coordinator, job: &Value) -> Value {
    serde_json::from_slice(&c.fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap()
}

/// Every file of a manifest's rendition, into `to`.
fn download(c: &Coordinator, rendition: &Value, to: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in rendition["files"].as_array().unwrap() {
        let url = f["url"].as_str().unwrap();
        std::fs::write(to.join(url.rsplit('/').next().unwrap()), c.fetch(url)).unwrap();
    }
    to.to_path_buf()
}

/// A worker that speaks the protocol from the test, to fail or fake its chunks.
struct FakeWorker<'a> {
    c: &'a Coordinator,
    token: String,
}

impl<'a> FakeWorker<'a> {
    fn register(c: &'a Coordinator) -> FakeWorker<'a> {
        FakeWorker::register_as(c, "fake", None)
    }

    /// Registers as `name`, of encoder build `build` (none: an older worker's).
    fn register_as(c: &'a Coordinator, name: &str, build: Option<&str>) -> FakeWorker<'a> {
        let join = c.join_token(1);
        let req = json!({"version": proto::WIRE_VERSION, "name": name, "drake_version": "0", "slots": 1,
                         "capabilities": {"encoders": ["libx264", "aac"], "cores": 1, "encoder_build": build}});
        let (status, reg) = c.call("POST", "/api/v1/workers/register", Some(&join), Some(req));
        assert_eq!(status, 201, "{reg}");
        FakeWorker { c, token: reg["token"].as_str().unwrap().to_string() }
    }

    /// One lease request, waiting up to a second: the task, if one was granted.
    fn lease_once(&self) -> Option<Value> {
        self.lease_announcing(None)
    }

    /// One lease request, as the first after a start, which says what the worker
    /// can now do (`build`: its encoder build).
    fn lease_announcing(&self, build: Option<&str>) -> Option<Value> {
        let mut req = json!({"version": proto::WIRE_VERSION, "free_slots": 1, "wait_seconds": 1, "max_tasks": 1});
        if let Some(build) = build {
            req["capabilities"] = json!({"encoders": ["libx264", "aac"], "cores": 1, "encoder_build": build});
            req["drake_version"] = json!(build.split(", ").next().unwrap().trim_start_matches("drake "));
        }
        let (status, lease) = self.c.call("POST", "/api/v1/workers/lease", Some(&self.token), Some(req));
        assert!(status == 200 || status == 204, "{status} {lease}");
        (status == 200).then_some(lease)
    }

    /// Leases until it holds a chunk; whatever else it is given goes back at once.
    fn lease_chunk(&self) -> Value {
        for _ in 0..10 {
            let req = json!({"version": proto::WIRE_VERSION, "free_slots": 1, "wait_seconds": 5, "max_tasks": 1});
            let (status, lease) = self.c.call("POST", "/api/v1/workers/lease", Some(&self.token), Some(req));
            assert_eq!(status, 200, "{lease}");
            if lease["kind"] == "chunk" {
                assert!(lease["companions"].is_null(), "one task per lease: {lease}");
                return lease;
            }
            let fail = json!({"epoch": lease["epoch"], "error": "not this one", "retryable": true});
            assert_eq!(self.post(&lease, "fail", fail).0, 204);
        }
        panic!("no chunk was leased");
    }

    fn post(&self, lease: &Value, what: &str, body: Value) -> (u16, Value) {
        self.c.call("POST", &format!("/api/v1/tasks/{}/{what}", lease["task_id"].as_str().unwrap()), Some(&self.token), Some(body))
    }

    /// Publishes a chunk.json that claims `frames` frames and completes with it.
    fn complete_with_frames(&self, lease: &Value, frames: u64) -> (u16, Value) {
        let first = lease["chunk"]["first_frame"].as_u64().unwrap();
        self.complete_with(lease, frames, &[first], "00")
    }

    /// Publishes the chunk.json of a good chunk of `frames` frames at 25 fps,
    /// encoded with codec headers hashed `headers`, and completes with it.
    fn complete_good(&self, lease: &Value, frames: u64, headers: &str) -> (u16, Value) {
        let first = lease["chunk"]["first_frame"].as_u64().unwrap();
        let keyframes: Vec<u64> = proto::chunk::grid_keyframes(first..first + frames, (25, 1), 2.0);
        self.complete_with(lease, frames, &keyframes, headers)
    }

    fn complete_with(&self, lease: &Value, frames: u64, keyframes: &[u64], headers: &str) -> (u16, Value) {
        let chunk = &lease["chunk"];
        let report = json!({"version": 1, "index": chunk["index"], "rendition": lease["rendition"], "frames": frames,
                            "first_pts": chunk["first_frame"], "first_key": true, "keyframes": keyframes,
                            "dts_increasing": true, "extradata_sha256": headers, "bytes": 100});
        let body = report.to_string();
        let dir = lease["output_dir"].as_str().unwrap();
        let job = lease["job_id"].as_str().unwrap();
        for (method, path) in
            [("MKCOL", format!("jobs/{job}/.staging/")), ("MKCOL", format!("{dir}/")), ("PUT", format!("{dir}/chunk.json"))]
        {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "-H", &format!("Authorization: Bearer {}", self.token)])
                .args(if method == "PUT" { vec!["--data-binary", body.as_str()] } else { vec![] })
                .arg(format!("{}/dav/{path}", self.c.url))
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(code.starts_with('2') || code == "405", "{method} {path}: {code}");
        }
        use sha2::Digest;
        let file = json!({"path": "chunk.json", "size": body.len(), "sha256": hex::encode(sha2::Sha256::digest(body.as_bytes()))});
        self.post(lease, "complete", json!({"epoch": lease["epoch"], "report": report, "files": [file]}))
    }
}

/// A farm upgraded under a chunked job, its workers on the wire. A rendition's
/// chunks go to the encoder build that made its first accepted chunk while a
/// worker of it is live. Once the last one restarts upgraded (with its issued
/// credential: its first lease says what it now is), a chunk of the new build
/// (whose codec headers differ) has the accepted ones made again, so the join gets
/// one build's chunks, and no attempt is spent on the mismatch.
#[test]
fn a_renditions_chunks_are_made_by_one_encoder_build_across_an_upgrade() {
    let dir = Dir::new();
    let profiles_dir = profiles(&dir);
    let c = Coordinator::start_env(&[], "", &[("DRAKE_PROFILES_DIR", &profiles_dir)]);
    // 180 s at 25 fps, 240p, no audio: three chunks of 1500 frames, of one rung.
    let src = dir.s("long.mp4");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=426x240:r=25:d=180", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "35",
             "-g", "250", &src]);
    let (status, job) = c.upload(&src, &[("profile", "chunky")]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let planned = c.wait_for(&id, |j| !j["tasks"].as_array().unwrap().is_empty());
    let chunk_states = |j: &Value| -> Vec<(String, i64)> {
        let tasks = j["tasks"].as_array().unwrap().iter().filter(|t| t["kind"] == "chunk");
        tasks.map(|t| (t["state"].as_str().unwrap().to_string(), t["attempts"].as_i64().unwrap())).collect()
    };
    assert_eq!(chunk_states(&planned).len(), 3, "{planned}");

    let (build_163, build_164) =
        ("drake 0.1.0, libavcodec 59.37.100, libx264 core 163", "drake 0.2.0, libavcodec 59.37.100, libx264 core 164");
    let old = FakeWorker::register_as(&c, "old", Some(build_163));
    let new = FakeWorker::register_as(&c, "new", Some(build_164));
    let (_, workers) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
    assert!(workers.to_string().contains("libx264 core 163"), "the build is listed: {workers}");
    let c0 = old.lease_chunk();
    assert_eq!(c0["chunk"]["index"], 0);
    let (status, body) = old.complete_good(&c0, 1500, "aa");
    assert!((200..300).contains(&status), "{status} {body}");
    // old is live: new takes none of the rendition's chunks (the thumbnails, maybe).
    for _ in 0..3 {
        if let Some(l) = new.lease_once() {
            assert_ne!(l["kind"], "chunk", "a chunk went to another build while old is live: {l}");
            assert_eq!(new.post(&l, "fail", json!({"epoch": l["epoch"], "error": "not this one", "retryable": true})).0, 204);
        }
    }
    let c1 = old.lease_chunk();
    assert_eq!(c1["chunk"]["index"], 1);
    let (status, body) = old.complete_good(&c1, 1500, "aa");
    assert!((200..300).contains(&status), "{status} {body}");

    // old's machine is upgraded and its worker started again: no live worker has
    // the pinned build any more, so it takes the last chunk, whose headers differ;
    // the two chunks it made before are queued again, afresh, and the new one is
    // accepted.
    let c2 = old.lease_announcing(Some(build_164)).expect("the last chunk");
    assert_eq!((&c2["kind"], &c2["chunk"]["index"]), (&json!("chunk"), &json!(2)), "{c2}");
    let (_, workers) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
    assert!(!workers.to_string().contains("libx264 core 163"), "the upgrade is listed: {workers}");
    assert!(workers.to_string().contains(r#""drake_version":"0.2.0""#), "{workers}");
    let (status, body) = old.complete_good(&c2, 1500, "bb");
    assert!((200..300).contains(&status), "the new build's chunk was rejected: {status} {body}");
    let j = c.wait_for(&id, |j| chunk_states(j)[2].0 == "succeeded");
    assert_eq!(chunk_states(&j), [("queued".into(), 0), ("queued".into(), 0), ("succeeded".into(), 1)], "{j}");
    assert_eq!(j["chunks"], json!({"count": 3, "done": 1}));
    let mut again: Vec<u64> = [&new, &old]
        .map(|w| {
            let l = w.lease_chunk();
            let (status, body) = w.complete_good(&l, 1500, "bb");
            assert!((200..300).contains(&status), "{status} {body}");
            l["chunk"]["index"].as_u64().unwrap()
        })
        .into();
    again.sort();
    assert_eq!(again, [0, 1]);
    let j = c.wait_for(&id, |j| j["chunks"]["done"] == 3);
    assert_eq!(chunk_states(&j), [("succeeded".into(), 1), ("succeeded".into(), 1), ("succeeded".into(), 1)], "{j}");
    let (status, _) = c.call("POST", &format!("/api/v1/jobs/{id}/cancel"), Some(&c.admin), None);
    assert_eq!(status, 200);
}

/// On external storage (nginx): each chunk reads only its part of the source, with
/// range requests, and the chunks and audio live out of the published tree until
/// the job succeeded.
#[test]
fn chunks_read_only_their_part_of_the_source_from_external_storage() {
    let job = chunks_read_only_their_part("long.mp4", &[]);
    assert_eq!(job["probe"].get("remuxed_parts"), None, "{}", job["probe"]);
}

/// A Matroska written as a stream, without cues (as a browser's MediaRecorder or
/// a live recorder writes it): a seek in it reads everything before its target,
/// so the coordinator remuxes it, with cues, before it cuts it.
#[test]
fn a_matroska_without_cues_is_remuxed_so_that_chunks_read_only_their_part() {
    let job = chunks_read_only_their_part("long.mkv", &["-f", "matroska", "-live", "1"]);
    assert_eq!(job["probe"]["remuxed_parts"], 1, "{}", job["probe"]);
}

/// A 200 s source (lossless, so that it is large next to libav's read-ahead on
/// each open), made by ffmpeg into `name` with `format`, through a farm storing on
/// nginx in 3 chunks; what each chunk read of it is checked. Returns the job.
fn chunks_read_only_their_part(name: &str, format: &[&str]) -> Value {
    let dir = Dir::new();
    let (nginx, c) = on_external_storage(&dir);
    let src = dir.s(name);
    #[rustfmt::skip]
    let mut args = vec!["-f", "lavfi", "-i", "testsrc2=s=426x240:r=25:d=200", "-f", "lavfi", "-i", "sine=d=200",
                        "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-g", "250", "-c:a", "aac"];
    args.extend(format);
    args.push(&src);
    ffmpeg(&args);
    let (status, job) = c.upload(&src, &[("profile", "chunky")]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let join = c.join_token(2);
    let (_w1, _w2) = (c.worker("w1", &join), c.worker("w2", &join));
    let job = c.wait_ended(&id, Duration::from_secs(600));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["chunks"], json!({"count": 3, "done": 3}));

    // What was read of the stored source: a whole copy for the coordinator's probe;
    // the audio and the thumbnails read it once over HTTP, each chunk its part. The
    // worker names the task that read in its User-Agent.
    let job_dir = nginx.root.join(format!("jobs/{id}"));
    let size = std::fs::metadata(job_dir.join("source")).unwrap().len();
    let source = format!("/media/jobs/{id}/source");
    let log = nginx.access_log();
    let reads = |status: &str, kind: &str| -> Vec<u64> {
        let prefix = format!("GET {source} {status} ");
        let agent = format!(" ({kind} ");
        let reads = log.lines().filter_map(|l| l.strip_prefix(&prefix)).filter(|l| kind.is_empty() || l.contains(&agent));
        reads.map(|l| l.split(' ').next().unwrap().parse().unwrap()).collect()
    };
    // The coordinator's copy for its probe is of the upload (before a remux).
    assert_eq!(reads("200", "").len(), 1, "{log}");
    // The audio reads it all; the thumbnails may seek over stretches between the
    // frames they want. Each seek costs what nginx had already sent into the socket
    // (4 MB here, 8% of this source).
    for (kind, least) in [("audio", size), ("thumbnails", 1)] {
        let read = reads("206", kind).iter().sum::<u64>();
        assert!((least..size + size / 4).contains(&read), "the {kind} read {read} bytes of {size}:\n{log}");
    }
    let ranges = reads("206", "chunk");
    let read = ranges.iter().sum::<u64>() as f64 / size as f64;
    eprintln!("{name}: 3 chunks read {read:.2} times the source's {size} bytes, in {} range requests", ranges.len());
    assert!(read < 2.0, "3 chunks read {read:.2} times the source:\n{log}");
    assert!(!job_dir.join(".chunks").exists() && !job_dir.join(".staging").exists(), "{:?}", files_under(&job_dir));
    assert!(job_dir.join("240p/playlist.m3u8").is_file());
    job
}

/// A source that is remuxed before it is cut, on a farm whose spool is a small disk
/// of its own (as root: a tmpfs) without room for the remux beside the source's
/// copy: the job waits for space, saying so, and goes on once there is room.
#[test]
fn a_remux_waits_for_room_on_the_spool_disk() {
    let dir = Dir::new();
    let profiles_dir = profiles(&dir);
    let nginx = Nginx::start();
    #[rustfmt::skip]
    let args = ["--storage-url", &nginx.url, "--storage-authorization", Nginx::AUTHORIZATION, "--min-free-disk-bytes", "65536"];
    let c = Coordinator::start_env(&args, "", &[("DRAKE_PROFILES_DIR", &profiles_dir)]);
    let Some(spool) = SpoolDisk::mount(&c.data.path("storage/uploads"), 32) else {
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        return;
    };
    // 100 s without cues: cut in 2 chunks, so remuxed first.
    let src = dir.s("rec.mkv");
    #[rustfmt::skip]
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=426x240:r=25:d=100", "-f", "lavfi", "-i", "sine=d=100", "-c:v", "libx264",
             "-preset", "ultrafast", "-crf", "30", "-g", "50", "-c:a", "aac", "-f", "matroska", "-live", "1", &src]);
    let size = std::fs::metadata(&src).unwrap().len();
    // Room for the upload, and then for the copy the probe reads, but not for the
    // remux beside that copy.
    let ballast = spool.fill_to(size * 3 / 2);
    let (status, job) = c.upload(&src, &[("profile", "chunky")]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let planned = |j: &Value| !j["tasks"].as_array().unwrap().is_empty() || j["state"] != "queued";
    let waiting = c.wait_for(&id, |j| j["waiting_for"].as_str().is_some_and(|w| w.contains("waiting for the farm")) || planned(j));
    let why = waiting["waiting_for"].as_str().unwrap_or_default();
    assert!(why.contains("the remux writes"), "{waiting}");
    std::fs::remove_file(ballast).unwrap();

    let join = c.join_token(2);
    let (_w1, _w2) = (c.worker("w1", &join), c.worker("w2", &join));
    let job = c.wait_ended(&id, Duration::from_secs(300));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!((job["probe"]["remuxed_parts"].as_u64(), &job["chunks"]), (Some(1), &json!({"count": 2, "done": 2})), "{job}");
}
