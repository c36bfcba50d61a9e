//! Resumable uploads (tus 1.0) against a real coordinator: clients no one here
//! wrote (PyPI `tuspy`, npm `tus-js-client`) killed midway through 200 MB and
//! resumed, `drake submit` cut by a coordinator crash, a coordinator restarted
//! between two PATCHes, checksums, idempotency, expiry, CORS, the spool limit, and
//! parts that live only in external storage.

mod common;

use common::farm::*;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// A real video of about `mb` MB (10 s, 640x360) that the farm can transcode.
fn video(dir: &Dir, name: &str, mb: u64) -> String {
    let path = dir.s(name);
    let rate = format!("{}k", mb * 8 * 1000 / 10);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x360:r=25:d=10",
        "-f",
        "lavfi",
        "-i",
        "sine=d=10",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-b:v",
        &rate,
        "-minrate",
        &rate,
        "-maxrate",
        &rate,
        "-bufsize",
        &rate,
        "-x264-params",
        "nal-hrd=cbr:filler=1",
        "-c:a",
        "aac",
        &path,
    ]);
    path
}

/// About 200 MB of uncompressed 640x360 video with sound, `seconds` long: big
/// for an upload, cheap to make and to transcode.
fn raw_video(dir: &Dir, name: &str, seconds: u32) -> String {
    let path = dir.s(name);
    let d = seconds.to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=s=640x360:r=25:d={d}"),
        "-f",
        "lavfi",
        "-i",
        &format!("sine=d={d}"),
        "-c:v",
        "rawvideo",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "pcm_s16le",
        &path,
    ]);
    path
}

/// Runs a client script (`python3` with tuspy, or `node` with tus-js-client) with
/// the coordinator's endpoint and token and then `args`.
fn client(program: &str, script: &str, c: &Coordinator, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(program);
    if program == "python3" {
        cmd.args(["-c", script]).env("PYTHONPATH", pip_package("tuspy", "1.1.0"));
    } else {
        cmd.args(["-e", script, "--"]).env("TUS_JS_CLIENT", npm_package("tus-js-client", "4.3.1"));
    }
    cmd.args([&format!("{}/api/v1/uploads/", c.url), &c.admin]).args(args).output().unwrap()
}

const TUSPY: &str = r#"
import os, sys
from tusclient import client
endpoint, token, path, mode = sys.argv[1:5]
c = client.TusClient(endpoint, headers={"Authorization": "Bearer " + token})
if mode == "start":
    u = c.uploader(path, chunk_size=5 * 1024 * 1024, metadata={"filename": "big.mkv", "profile": "web"})
    u.upload_chunk()
    u.upload_chunk()
    print(u.url, u.offset, flush=True)
    os._exit(9)  # killed midway: no goodbye to the server
else:
    u = c.uploader(path, url=sys.argv[5], chunk_size=5 * 1024 * 1024)
    print("resumed at", u.offset, flush=True)
    u.upload()
    print(u.offset, flush=True)
"#;

const TUS_JS_CLIENT: &str = r#"
const tus = require(process.env.TUS_JS_CLIENT);
const fs = require("fs");
const [endpoint, token, path, mode, url] = process.argv.slice(1);
let chunks = 0;
const upload = new tus.Upload(fs.createReadStream(path), {
  endpoint,
  uploadUrl: mode === "resume" ? url : undefined,
  headers: { Authorization: "Bearer " + token },
  chunkSize: 5 * 1024 * 1024,
  metadata: { filename: "big.mkv", profile: "web" },
  retryDelays: null,
  onBeforeRequest(req) {
    if (mode === "damaged" && req.getMethod() === "PATCH") req.setHeader("Upload-Checksum", "sha256 " + "A".repeat(43) + "=");
  },
  onAfterResponse(req, res) {
    if (mode === "resume" && req.getMethod() === "HEAD") console.log("resumed at", res.getHeader("Upload-Offset"));
  },
  onChunkComplete(_chunk, accepted) {
    if (mode === "start" && ++chunks === 2) {
      console.log(upload.url, accepted);
      process.exit(9); // killed midway: no goodbye to the server
    }
  },
  onError(e) {
    const res = e.originalResponse;
    console.log("error", res ? res.getStatus() : 0, upload.url);
    process.exit(1);
  },
  onSuccess() {
    console.log("done", upload.url);
  },
});
upload.start();
"#;

fn upload_of(c: &Coordinator, url: &str) -> Value {
    let path = url.split_once("/api/").map(|(_, p)| format!("/api/{p}")).unwrap();
    c.call("GET", &path, Some(&c.admin), None).1
}

/// A 200 MB file sent by a client killed midway, then resumed by a new client
/// from the stored URL: (upload URL, the job it made).
fn killed_and_resumed(c: &Coordinator, program: &str, script: &str, file: &str, size: u64) -> (String, String) {
    let out = client(program, script, c, &[file, "start"]);
    assert_eq!(out.status.code(), Some(9), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (url, offset) =
        stdout.trim().split_once(" ").unwrap_or_else(|| panic!("{program}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(offset, (10 << 20).to_string(), "{program}: two 5 MiB chunks");
    let u = upload_of(c, url);
    assert_eq!((u["offset"].as_u64(), u["length"].as_u64(), &u["job_id"]), (Some(10 << 20), Some(size), &Value::Null), "{u}");

    let out = client(program, script, c, &[file, "resume", url]);
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.starts_with(&format!("resumed at {}", 10 << 20)), "{program}: {stdout}");
    let u = upload_of(c, url);
    assert_eq!(u["offset"].as_u64(), Some(size), "{u}");
    (url.to_string(), u["job_id"].as_str().expect("the completed upload names its job").to_string())
}

#[test]
fn tuspy_and_tus_js_client_killed_midway_resume_with_new_clients_and_their_jobs_succeed() {
    let c = Coordinator::start();
    let _w = c.worker("w1", &c.join_token(1));
    let dir = Dir::new();
    let file = raw_video(&dir, "big.mkv", 23);
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 200_000_000, "{size}");

    let (_, by_python) = killed_and_resumed(&c, "python3", TUSPY, &file, size);
    let (_, by_node) = killed_and_resumed(&c, "node", TUS_JS_CLIENT, &file, size);
    assert_ne!(by_python, by_node);
    for job in [&by_python, &by_node] {
        let job = c.wait_ended(job, Duration::from_secs(300));
        assert_eq!(job["state"], "succeeded", "{job}");
        assert!((job["probe"]["duration"].as_f64().unwrap() - 23.0).abs() < 0.1, "{}", job["probe"]);
        assert_eq!(job["probe"]["size_bytes"].as_u64(), Some(size));
    }
    assert!(!c.data.path("storage/tus").read_dir().is_ok_and(|mut d| d.next().is_some()), "the parts are gone");

    // tus-js-client with a damaged chunk: 460, and nothing appended.
    let out = client("node", TUS_JS_CLIENT, &c, &[&file, "damaged"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let url = stdout.trim().strip_prefix("error 460 ").unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(upload_of(&c, url)["offset"].as_u64(), Some(0));
}

/// A tus request of the admin's with curl: (status, headers lowercased).
fn tus(c: &Coordinator, method: &str, path: &str, headers: &[&str], body: Option<&str>) -> (u16, String) {
    tus_at(&c.url, &c.admin, method, path, headers, body)
}

/// A 1 MB clip, whole, and cut in two files `a` and `b` in `dir`: its bytes and
/// where `b` starts.
fn clip_in_halves(dir: &Dir) -> (Vec<u8>, usize) {
    let bytes = std::fs::read(video(dir, "clip.mp4", 1)).unwrap();
    let half = bytes.len() / 2;
    std::fs::write(dir.path("a"), &bytes[..half]).unwrap();
    std::fs::write(dir.path("b"), &bytes[half..]).unwrap();
    (bytes, half)
}

fn location(headers: &str) -> String {
    header(headers, "location").trim().to_string()
}

#[test]
fn an_upload_resumes_across_a_restart_checks_checksums_and_expires() {
    let mut c = Coordinator::start_with(&["--upload-expiry-seconds", "3"]);
    let dir = Dir::new();
    let (bytes, half) = clip_in_halves(&dir);
    let meta = |k: &str, v: &str| {
        use base64::Engine;
        format!("{k} {}", base64::engine::general_purpose::STANDARD.encode(v))
    };

    // OPTIONS tells what the server speaks, without a token.
    let options = String::from_utf8_lossy(
        &Command::new("curl").args(["-s", "-D", "-", "-X", "OPTIONS", &format!("{}/api/v1/uploads/", c.url)]).output().unwrap().stdout,
    )
    .to_lowercase();
    assert!(options.contains("tus-version: 1.0.0") && options.contains("tus-checksum-algorithm: sha1,sha256"), "{options}");
    assert!(
        options.contains("tus-extension: creation,creation-with-upload,creation-defer-length,termination,expiration,checksum"),
        "{options}"
    );

    // A bad profile is refused at creation, before any byte.
    let (status, _) =
        tus(&c, "POST", "/api/v1/uploads/", &["Upload-Length: 10", &format!("Upload-Metadata: {}", meta("profile", "nope"))], None);
    assert_eq!(status, 400);
    // Over the limit: 413 at creation.
    assert_eq!(tus(&c, "POST", "/api/v1/uploads/", &["Upload-Length: 999999999999999"], None).0, 413);
    // Without a token: 401, with the tus header.
    let anonymous = String::from_utf8_lossy(
        &Command::new("curl")
            .args(["-s", "-D", "-", "-X", "POST", "-H", "Upload-Length: 5", &format!("{}/api/v1/uploads/", c.url)])
            .output()
            .unwrap()
            .stdout,
    )
    .to_lowercase();
    assert!(anonymous.starts_with("http/1.1 401") && anonymous.contains("tus-resumable: 1.0.0"), "{anonymous}");

    // Created with its first half (creation-with-upload), deferred length.
    let (status, h) = tus(
        &c,
        "POST",
        "/api/v1/uploads/",
        &["Upload-Defer-Length: 1", &format!("Upload-Metadata: {},{}", meta("filename", "clip.mp4"), meta("profile", "web"))],
        Some(&dir.s("a")),
    );
    assert_eq!(status, 201, "{h}");
    assert_eq!(header(&h, "upload-offset").trim(), half.to_string());
    let at = location(&h);

    // A damaged part (other bytes) with a checksum that does not match: 460, nothing appended.
    let junk: Vec<u8> = bytes[half..].iter().map(|b| !b).collect();
    std::fs::write(dir.path("junk"), junk).unwrap();
    let (status, h) = tus(
        &c,
        "PATCH",
        &at,
        &[
            &format!("Upload-Offset: {half}"),
            &format!("Upload-Length: {}", bytes.len()),
            "Upload-Checksum: sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ],
        Some(&dir.s("junk")),
    );
    assert_eq!(status, 460, "{h}");
    // A wrong offset: 409.
    assert_eq!(tus(&c, "PATCH", &at, &["Upload-Offset: 0"], Some(&dir.s("b"))).0, 409);
    // While one PATCH is still sending (a stalled client), another of the same upload is 423 Locked.
    let mut stalled = start_patch(&c, &at, half as u64, (bytes.len() - half) as u64);
    std::io::Write::write_all(&mut stalled, &[0u8; 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tus(&c, "PATCH", &at, &[&format!("Upload-Offset: {half}")], Some(&dir.s("b"))).0, 423);
    drop(stalled);

    // The coordinator restarts between the two PATCHes; the upload goes on.
    c.restart();
    let (status, h) = tus(&c, "HEAD", &at, &[], None);
    assert_eq!((status, header(&h, "upload-offset").trim()), (200, half.to_string().as_str()), "{h}");
    use sha2::Digest;
    let sum = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes[half..]))
    };
    let (status, h) = tus(
        &c,
        "PATCH",
        &at,
        &[&format!("Upload-Offset: {half}"), &format!("Upload-Length: {}", bytes.len()), &format!("Upload-Checksum: sha256 {sum}")],
        Some(&dir.s("b")),
    );
    assert_eq!(status, 204, "{h}");
    assert_eq!(header(&h, "upload-offset").trim(), bytes.len().to_string());
    let job = header(&h, "drake-job").trim().to_string();
    let stored = std::fs::read(c.data.path(&format!("storage/jobs/{job}/source"))).unwrap();
    assert!(stored == bytes, "the job's source is the uploaded file, byte for byte");
    assert_eq!(c.call("GET", &format!("/api/v1/jobs/{job}"), Some(&c.admin), None).1["profile"], "web");

    // Another token does not see the upload.
    let (_, t) = c.call("POST", "/api/v1/tokens", Some(&c.admin), Some(serde_json::json!({"role": "submit", "label": "other"})));
    let other = t["token"].as_str().unwrap();
    assert_eq!(call_at(&c.url, "GET", &at, Some(other), None).0, 404);

    // An unfinished upload expires: its HEAD answers 410 or 404, and its parts are gone.
    let (_, h) = tus(&c, "POST", "/api/v1/uploads/", &[&format!("Upload-Length: {}", bytes.len())], None);
    let stale = location(&h);
    assert_eq!(tus(&c, "PATCH", &stale, &["Upload-Offset: 0"], Some(&dir.s("a"))).0, 204);
    let id = stale.rsplit('/').next().unwrap().to_string();
    assert!(c.data.path(&format!("storage/tus/{id}")).exists());
    std::thread::sleep(Duration::from_secs(5));
    let status = tus(&c, "HEAD", &stale, &[], None).0;
    assert!(status == 404 || status == 410, "{status}");
    assert!(!c.data.path(&format!("storage/tus/{id}")).exists(), "the expired upload's parts are removed");

    // A completed upload whose idempotency key already made a job returns that job.
    std::fs::write(dir.path("whole"), &bytes).unwrap();
    let keyed = [format!("Upload-Length: {}", bytes.len()), format!("Upload-Metadata: {}", meta("idempotency_key", "clip-1"))];
    let keyed: Vec<&str> = keyed.iter().map(String::as_str).collect();
    let made: Vec<String> = (0..2)
        .map(|_| {
            let (status, h) = tus(&c, "POST", "/api/v1/uploads/", &keyed, Some(&dir.s("whole")));
            assert_eq!(status, 201, "{h}");
            header(&h, "drake-job").to_string()
        })
        .collect();
    assert!(!made[0].is_empty() && made[0] == made[1], "{made:?}");

    // Termination removes an unfinished upload.
    let (_, h) = tus(&c, "POST", "/api/v1/uploads/", &["Upload-Length: 100"], None);
    let doomed = location(&h);
    assert_eq!(tus(&c, "DELETE", &doomed, &[], None).0, 204);
    assert_eq!(tus(&c, "HEAD", &doomed, &[], None).0, 404);
}

#[test]
fn with_external_storage_the_parts_never_touch_the_coordinators_disk() {
    let nginx = Nginx::start();
    let c = Coordinator::start_with(&["--storage-url", &nginx.url, "--storage-authorization", Nginx::AUTHORIZATION]);
    let dir = Dir::new();
    let (bytes, half) = clip_in_halves(&dir);
    let (status, h) = tus(&c, "POST", "/api/v1/uploads/", &[&format!("Upload-Length: {}", bytes.len())], Some(&dir.s("a")));
    assert_eq!(status, 201, "{h}");
    let at = location(&h);
    let id = at.rsplit('/').next().unwrap().to_string();
    let parts: Vec<_> = std::fs::read_dir(nginx.root.join(format!("tus/{id}"))).unwrap().collect();
    assert_eq!(parts.len(), 1, "the first part is on the store");
    assert!(!c.data.path("storage/tus").exists(), "and not on the coordinator");
    let (status, h) = tus(&c, "PATCH", &at, &[&format!("Upload-Offset: {half}")], Some(&dir.s("b")));
    assert_eq!(status, 204, "{h}");
    let job = header(&h, "drake-job").trim().to_string();
    assert!(std::fs::read(nginx.root.join(format!("jobs/{job}/source"))).unwrap() == bytes);
    assert!(!nginx.root.join(format!("tus/{id}")).exists(), "the parts are removed once joined");
}

/// A farm outgrows its local store for a WebDAV one while an upload is under
/// way. Its first bytes were written in place into one file (a row per PATCH,
/// each naming that file), and a PATCH cut short left bytes past its offset
/// there. Finished on WebDAV, the upload reads that file once, up to its offset,
/// then the part stored on WebDAV.
#[test]
fn an_upload_begun_on_a_local_store_is_finished_after_the_store_moves_to_webdav() {
    let mut c = Coordinator::start();
    let dir = Dir::new();
    let (bytes, half) = clip_in_halves(&dir);
    let quarter = half / 2;
    std::fs::write(dir.path("a1"), &bytes[..quarter]).unwrap();
    std::fs::write(dir.path("a2"), &bytes[quarter..half]).unwrap();
    let (status, h) = tus(&c, "POST", "/api/v1/uploads/", &[&format!("Upload-Length: {}", bytes.len())], Some(&dir.s("a1")));
    assert_eq!(status, 201, "{h}");
    let at = location(&h);
    let id = at.rsplit('/').next().unwrap().to_string();
    assert_eq!(tus(&c, "PATCH", &at, &[&format!("Upload-Offset: {quarter}")], Some(&dir.s("a2"))).0, 204);
    let _ = c.child.kill();
    let _ = c.child.wait();
    let data = c.data.path(&format!("storage/tus/{id}/data"));
    let mut written = std::fs::read(&data).unwrap();
    assert_eq!(written.len(), half, "both PATCHes are in one file");
    written.extend([0xee; 5000]);
    std::fs::write(&data, written).unwrap();

    // The operator moves the store to nginx, and the coordinator to it.
    let nginx = Nginx::start();
    let moved = Command::new("cp").arg("-a").arg(c.data.path("storage/tus")).arg(&nginx.root).status().unwrap();
    assert!(moved.success());
    std::fs::remove_dir_all(c.data.path("storage/tus")).unwrap();
    c.args.extend(["--storage-url", &nginx.url, "--storage-authorization", Nginx::AUTHORIZATION].map(String::from));
    c.restart();

    let (status, h) = tus(&c, "HEAD", &at, &[], None);
    assert_eq!((status, header(&h, "upload-offset").trim()), (200, half.to_string().as_str()), "{h}");
    let (status, h) = tus(&c, "PATCH", &at, &[&format!("Upload-Offset: {half}")], Some(&dir.s("b")));
    assert_eq!(status, 204, "{h}");
    let job = header(&h, "drake-job").trim().to_string();
    let source = std::fs::read(nginx.root.join(format!("jobs/{job}/source"))).unwrap();
    assert!(
        source.len() == bytes.len() && source == bytes,
        "the source is the upload, byte for byte ({} of {})",
        source.len(),
        bytes.len()
    );
    assert!(!nginx.root.join(format!("tus/{id}")).exists(), "the parts are removed once joined");
}

/// The response head of a curl request with exactly these arguments, lowercased.
fn curl_head(args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new("curl").args(["-s", "-o", "/dev/null", "-D", "-"]).args(args).output().unwrap().stdout)
        .to_lowercase()
}

#[test]
fn browsers_from_allowed_origins_get_cors_and_unfinished_uploads_share_a_spool_limit() {
    let c = Coordinator::start_with(&["--cors-origin", "https://up.example.com", "--max-spool-bytes", "3000000"]);
    let endpoint = format!("{}/api/v1/uploads/", c.url);

    // A preflight from the allowed origin is answered, and names tus's headers.
    let pre = curl_head(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://up.example.com",
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: authorization, tus-resumable, upload-length, upload-metadata",
        &endpoint,
    ]);
    assert!(pre.starts_with("http/1.1 204"), "{pre}");
    assert_eq!(header(&pre, "access-control-allow-origin"), "https://up.example.com", "{pre}");
    for h in ["authorization", "tus-resumable", "upload-length", "upload-metadata", "upload-offset", "upload-checksum"] {
        assert!(header(&pre, "access-control-allow-headers").contains(h), "{h}: {pre}");
    }
    assert!(header(&pre, "access-control-allow-methods").contains("patch"), "{pre}");
    assert_eq!(header(&pre, "access-control-allow-credentials"), "", "a bearer token, never cookies");
    // The answer itself lets the page read Location and Upload-Offset.
    let auth = format!("Authorization: Bearer {}", c.admin);
    let created = curl_head(&[
        "-X",
        "POST",
        "-H",
        "Origin: https://up.example.com",
        "-H",
        &auth,
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        "Upload-Length: 2000000",
        &endpoint,
    ]);
    assert!(created.starts_with("http/1.1 201"), "{created}");
    assert_eq!(header(&created, "access-control-allow-origin"), "https://up.example.com");
    let exposed = header(&created, "access-control-expose-headers");
    assert!(exposed.contains("location") && exposed.contains("upload-offset") && exposed.contains("drake-job"), "{created}");
    let first = location(&created);

    // Another origin gets no CORS header: its browser keeps the answer from the page.
    let foreign =
        curl_head(&["-X", "OPTIONS", "-H", "Origin: https://evil.example.net", "-H", "Access-Control-Request-Method: POST", &endpoint]);
    assert!(!foreign.contains("access-control-allow"), "{foreign}");
    assert!(foreign.contains("tus-version: 1.0.0"), "a plain OPTIONS for it is tus discovery: {foreign}");

    // 2 MB are reserved of the 3 MB spool: a second 2 MB upload is refused, until the first is gone.
    let second = ["-X", "POST", "-H", &auth, "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Length: 2000000", &endpoint];
    let refused = curl_head(&second);
    assert!(refused.starts_with("http/1.1 507"), "{refused}");
    assert_eq!(tus(&c, "DELETE", &first, &[], None).0, 204);
    assert!(curl_head(&second).starts_with("http/1.1 201"), "the spool is free again");
}

#[test]
fn drake_submit_resumes_an_upload_cut_by_a_coordinator_crash_from_the_servers_offset() {
    let mut c = Coordinator::start_faulty(&[], "tus-after-second-part");
    let dir = Dir::new();
    let file = video(&dir, "big.mp4", 4);
    let size = std::fs::metadata(&file).unwrap().len();
    let state = Dir::new();
    let submit = |c: &Coordinator, extra: &[&str]| {
        Command::new(drake_bin())
            .args(["submit", &file, "--coordinator", &c.url, "--token", &c.admin])
            .args(["--tus-threshold", "1000000", "--chunk-size", "1048576", "--retries", "0"])
            .args(extra)
            .env("DRAKE_STATE_DIR", state.tmp.path())
            .output()
            .unwrap()
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let out = submit(&c, &["--resume"]);
    assert!(!out.status.success() && stderr(&out).contains("no upload of"), "nothing to resume yet: {}", stderr(&out));

    // The coordinator records the second chunk and dies before answering it.
    let out = submit(&c, &[]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("run the same command again, or add --resume"), "{}", stderr(&out));
    c.wait_exit(Duration::from_secs(10));
    assert_eq!(state.path("uploads").read_dir().unwrap().count(), 1, "the upload's URL is recorded");

    c.restart();
    let _w = c.worker("w1", &c.join_token(1));
    let out = submit(&c, &["--resume", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("resuming the upload at {} of {size} bytes", 2 << 20)), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let job = stdout.lines().find_map(|l| l.strip_prefix("job ")).expect("the job is named").to_string();
    assert!(stdout.contains("succeeded: master playlist"), "{stdout}");
    let job = c.call("GET", &format!("/api/v1/jobs/{job}"), Some(&c.admin), None).1;
    assert_eq!(job["probe"]["size_bytes"].as_u64(), Some(size));
    assert!((job["probe"]["duration"].as_f64().unwrap() - 10.0).abs() < 0.1, "{}", job["probe"]);
    let left: Vec<_> = state.path("uploads").read_dir().unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a finished upload's record is removed: {left:?}");
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A PATCH of `len` bytes at `offset` over a plain socket, its head sent: the body is the caller's to send.
fn start_patch(c: &Coordinator, at: &str, offset: u64, len: u64) -> std::net::TcpStream {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(c.url.trim_start_matches("http://")).unwrap();
    write!(
        conn,
        "PATCH {at} HTTP/1.1\r\nHost: drake\r\nAuthorization: Bearer {}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        c.admin
    )
    .unwrap();
    conn
}

/// PATCHes `len` zero bytes at `offset` over a plain socket, streaming: the answer's head.
fn patch_zeros(c: &Coordinator, at: &str, offset: u64, len: u64) -> String {
    use std::io::{Read, Write};
    let mut conn = start_patch(c, at, offset, len);
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        conn.write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer.to_lowercase()
}

#[test]
fn a_2_gib_upload_streams_through_the_coordinator_in_bounded_memory() {
    let c = Coordinator::start();
    let pid = c.child.id();
    std::thread::sleep(Duration::from_secs(1));
    let idle = memory_kib(pid, "VmRSS");
    const PART: u64 = 512 << 20;
    let (status, h) = tus(&c, "POST", "/api/v1/uploads/", &[&format!("Upload-Length: {}", 4 * PART)], None);
    assert_eq!(status, 201, "{h}");
    let at = location(&h);
    let mut last = String::new();
    for i in 0..4 {
        last = patch_zeros(&c, &at, i * PART, PART);
        assert!(last.starts_with("http/1.1 204"), "{last}");
    }
    let peak = memory_kib(pid, "VmHWM");
    eprintln!(
        "coordinator memory: idle RSS {} MiB, peak {} MiB (+{} MiB) through a 2 GiB tus upload and its join",
        idle / 1024,
        peak / 1024,
        peak.saturating_sub(idle) / 1024
    );
    assert!(peak.saturating_sub(idle) < 100 * 1024, "peak {peak} KiB, idle {idle} KiB");
    // Two gibibytes of zeros are no video: the job fails with its reason, and the farm goes on.
    let job = c.wait_ended(header(&last, "drake-job"), Duration::from_secs(120));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(!job["error"].as_str().unwrap_or_default().is_empty(), "{job}");
}
