//! Helpers shared by the integration tests: run the real `drake` binary, make
//! media with the ffmpeg CLI, read outputs back with ffprobe.

#![allow(dead_code)]

pub mod farm;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn drake_bin() -> &'static str {
    env!("CARGO_BIN_EXE_drake")
}

pub fn drake(args: &[&str]) -> Output {
    Command::new(drake_bin()).args(args).output().expect("drake runs")
}

/// Runs drake and returns stdout, failing the test with stderr on a non-zero exit.
pub fn drake_ok(args: &[&str]) -> String {
    let out = drake(args);
    assert!(out.status.success(), "drake {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs the ffmpeg CLI (tests only; the product never does).
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg").args(["-hide_banner", "-loglevel", "error", "-y"]).args(args).output().expect("ffmpeg is installed");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A test pattern with a tone: `size` (e.g. `640x360`) at 30 fps for `seconds`,
/// H.264 and AAC in MP4, written to `path`.
pub fn test_clip(path: &str, size: &str, seconds: u32) {
    let (video, audio) = (format!("testsrc2=s={size}:r=30:d={seconds}"), format!("sine=d={seconds}"));
    ffmpeg(&["-f", "lavfi", "-i", &video, "-f", "lavfi", "-i", &audio, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", path]);
}

/// Declares the HEVC video of the MP4 at `src` Dolby Vision `profile` with base
/// layer `compatibility`, as an encoder's `dvcC` box does, writing it to `dst`.
/// No encoder here writes one. The box goes at the end of the `hvc1` sample entry;
/// the file's `moov` must follow its `mdat` (ffmpeg's default), so that no chunk
/// offset moves.
pub fn with_dolby_vision(src: &str, dst: &str, profile: u16, compatibility: u8) {
    let mut mp4 = std::fs::read(src).unwrap();
    let size_at = |d: &[u8], at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap()) as usize;
    // The boxes in `d[start..end]`: (offset, size, type).
    let children = |d: &[u8], start: usize, end: usize| {
        let mut found = Vec::new();
        let mut at = start;
        while at + 8 <= end {
            let size = size_at(d, at);
            assert!(size >= 8, "a box of {size} bytes at {at}");
            found.push((at, size, d[at + 4..at + 8].to_vec()));
            at += size;
        }
        found
    };
    let top = children(&mp4, 0, mp4.len());
    let position = |name: &[u8]| top.iter().position(|b| b.2 == name).unwrap();
    assert!(position(b"moov") > position(b"mdat"), "{src}: moov before mdat");
    let (moov, moov_size, _) = top[position(b"moov")].clone();
    // moov > trak > mdia > minf > stbl > stsd (8 bytes of version, flags and count) > hvc1.
    let (ancestors, entry) = children(&mp4, moov + 8, moov + moov_size)
        .into_iter()
        .filter(|b| b.2 == b"trak")
        .find_map(|trak| {
            let mut chain = vec![moov, trak.0];
            let (mut start, mut end) = (trak.0 + 8, trak.0 + trak.1);
            for name in [&b"mdia"[..], b"minf", b"stbl", b"stsd"] {
                let b = children(&mp4, start, end).into_iter().find(|b| b.2 == name)?;
                chain.push(b.0);
                (start, end) = (b.0 + 8 + if name == b"stsd" { 8 } else { 0 }, b.0 + b.1);
            }
            children(&mp4, start, end).into_iter().find(|b| b.2 == b"hvc1" || b.2 == b"hev1").map(|e| (chain, e))
        })
        .expect("an HEVC track");
    // The configuration record: version 1.0, then profile (7 bits), level (6), and
    // RPU, EL and BL present; then the base layer's compatibility id (4 bits).
    let flags: u16 = (profile << 9) | (6 << 3) | 0b101;
    let mut record = vec![1, 0];
    record.extend(flags.to_be_bytes());
    record.push(compatibility << 4);
    record.resize(24, 0);
    let mut dvcc = ((8 + record.len()) as u32).to_be_bytes().to_vec();
    dvcc.extend(if profile > 7 { b"dvvC" } else { b"dvcC" });
    dvcc.extend(record);
    mp4.splice(entry.0 + entry.1..entry.0 + entry.1, dvcc.iter().copied());
    for at in ancestors.into_iter().chain([entry.0]) {
        let grown = (size_at(&mp4, at) + dvcc.len()) as u32;
        mp4[at..at + 4].copy_from_slice(&grown.to_be_bytes());
    }
    std::fs::write(dst, mp4).unwrap();
}

pub fn ffprobe(args: &[&str]) -> Value {
    let out = Command::new("ffprobe").args(["-v", "error", "-of", "json"]).args(args).output().expect("ffprobe is installed");
    assert!(out.status.success(), "ffprobe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

/// Video packets of a file: (pts_time, pos, size, is_key).
pub fn video_packets(path: &Path) -> Vec<(f64, u64, u64, bool)> {
    let v = ffprobe(&["-select_streams", "v:0", "-show_entries", "packet=pts_time,pos,size,flags", path.to_str().unwrap()]);
    v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_str().unwrap_or("0").to_string();
            (
                f("pts_time").parse().unwrap_or(0.0),
                f("pos").parse().unwrap_or(0),
                f("size").parse().unwrap_or(0),
                f("flags").starts_with('K'),
            )
        })
        .collect()
}

pub fn streams(path: &Path) -> Vec<Value> {
    ffprobe(&["-show_streams", "-show_format", path.to_str().unwrap()])["streams"].as_array().unwrap().clone()
}

pub fn format_duration(path: &Path) -> f64 {
    ffprobe(&["-show_format", path.to_str().unwrap()])["format"]["duration"].as_str().unwrap().parse().unwrap()
}

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir { tmp: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

/// Transcodes one rendition and returns its directory and parsed rendition.json.
/// A directory served over plain HTTP (`python3 -m http.server`) on a free port
/// of 127.0.0.1, stopped when dropped.
pub struct StaticSite {
    pub url: String,
    server: std::process::Child,
}

impl StaticSite {
    pub fn serve(dir: &Dir) -> StaticSite {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory", &dir.s("")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "python3 -m http.server did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        StaticSite { url: format!("http://127.0.0.1:{port}"), server }
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub fn transcode(input: &str, profile: &str, rendition: &str, out: &Path) -> Value {
    drake_ok(&["transcode", input, "--profile", profile, "--rendition", rendition, "--out", out.to_str().unwrap()]);
    serde_json::from_slice(&std::fs::read(out.join("rendition.json")).unwrap()).unwrap()
}

/// Decodes the first frame of a video to 8-bit grey: (width, height, pixels).
pub fn first_frame_grey(path: &Path) -> (u32, u32, Vec<u8>) {
    let s = &streams(path)[0];
    let (w, h) = (s["width"].as_u64().unwrap() as u32, s["height"].as_u64().unwrap() as u32);
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", path.to_str().unwrap(), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), (w * h) as usize);
    (w, h, out.stdout)
}

/// Decodes the audio of a file to interleaved stereo f32 at 48 kHz.
pub fn audio_samples(path: &Path, channels: u32) -> Vec<f32> {
    let ac = channels.to_string();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", path.to_str().unwrap(), "-f", "f32le", "-ac", &ac, "-ar", "48000", "-"])
        .output()
        .unwrap();
    out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

pub fn rms(samples: impl Iterator<Item = f32>) -> f64 {
    let (mut s, mut n) = (0f64, 0usize);
    for x in samples {
        s += (x as f64) * (x as f64);
        n += 1;
    }
    (s / n.max(1) as f64).sqrt()
}

/// A minimal HTTP/1.1 file server on loopback that honours `Range`, counting the
/// range requests it answers. Serves `root/<name>`; anything else is a 404.
pub struct RangeServer {
    pub url: String,
    pub range_requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// How a [`RangeServer`] answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Serve,
    /// Serves the head and this many bytes of the body, then closes.
    CutAfter(u64),
    /// Answers with this status and no body.
    Status(u16),
    /// Serves the whole file, as a server that does not know range requests.
    Whole,
}

impl RangeServer {
    pub fn start(root: PathBuf) -> RangeServer {
        RangeServer::answering(root, |_| Answer::Serve)
    }

    /// A server that answers the `n`th request (from 1, over all connections) as
    /// `answer(n)` says.
    pub fn answering(root: PathBuf, answer: impl Fn(usize) -> Answer + Send + Sync + 'static) -> RangeServer {
        use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ranges = counter.clone();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let root = root.clone();
                let ranges = ranges.clone();
                let (requests, answer) = (requests.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut request = String::new();
                        if reader.read_line(&mut request).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut range = None;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                                let (a, b) = v.trim().split_once('-').unwrap();
                                range = Some((a.parse::<u64>().unwrap_or(0), b.parse::<u64>().ok()));
                            }
                        }
                        let answered = answer(requests.fetch_add(1, Ordering::SeqCst) + 1);
                        let cut = match answered {
                            Answer::Serve | Answer::Whole => None,
                            Answer::CutAfter(bytes) => Some(bytes),
                            Answer::Status(code) => {
                                let _ = write!(conn, "HTTP/1.1 {code} Trouble\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                                return;
                            }
                        };
                        let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                        let file = root.join(&path);
                        let opened = if path.contains("..") || path.is_empty() { None } else { std::fs::File::open(&file).ok() };
                        let Some(mut f) = opened else {
                            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                            continue;
                        };
                        let len = f.metadata().unwrap().len();
                        let (status, start, end) = match range.filter(|_| answered != Answer::Whole) {
                            Some((a, b)) => {
                                ranges.fetch_add(1, Ordering::SeqCst);
                                ("206 Partial Content", a, b.unwrap_or(len - 1).min(len - 1))
                            }
                            None => ("200 OK", 0, len - 1),
                        };
                        let ranged = if answered == Answer::Whole {
                            String::new()
                        } else {
                            format!("Accept-Ranges: bytes\r\nContent-Range: bytes {start}-{end}/{len}\r\n")
                        };
                        let head =
                            format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n{ranged}Content-Type: video/mp4\r\n\r\n", end + 1 - start);
                        if conn.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        f.seek(SeekFrom::Start(start)).unwrap();
                        let body = cut.unwrap_or(u64::MAX).min(end + 1 - start);
                        if std::io::copy(&mut f.take(body), &mut conn).is_err() || cut.is_some() {
                            return;
                        }
                    }
                });
            }
        });
        RangeServer { url, range_requests: counter }
    }
}

/// PSNR (ffmpeg's `psnr` filter, "average") of frames `from..to` of `encoded`
/// against the same frames of `source` scaled to its size.
pub fn seam_psnr(encoded: &Path, source: &str, around: (u64, u64)) -> f64 {
    ffmpeg_quality(encoded, source, "psnr", Some(around)).0["average"]
}

/// ffmpeg's own `psnr` or `ssim` filter (`filter`) on `encoded` against `source`
/// scaled to its size (bicubic, as the engine scales), over frames `from..to` of
/// both or all of them: the summary's values by name (psnr: `y`, `average`...;
/// ssim: `Y`, `All`...) and the same for every frame, from the filter's stats file.
pub fn ffmpeg_quality(
    encoded: &Path,
    source: &str,
    filter: &str,
    frames: Option<(u64, u64)>,
) -> (std::collections::BTreeMap<String, f64>, Vec<std::collections::BTreeMap<String, f64>>) {
    let s = &streams(encoded)[0];
    let (w, h) = (s["width"].as_u64().unwrap(), s["height"].as_u64().unwrap());
    let trim = frames.map_or(String::new(), |(from, to)| format!("trim=start_frame={from}:end_frame={to},setpts=PTS-STARTPTS,"));
    let stats = encoded.with_extension(format!("{filter}.log"));
    let graph = format!(
        "[0:v]{trim}null[a];[1:v]{trim}scale={w}:{h}:flags=bicubic,format=yuv420p[b];[a][b]{filter}=stats_file={}",
        stats.display()
    );
    let o = Command::new("ffmpeg")
        .args(["-hide_banner", "-i", encoded.to_str().unwrap(), "-i", source, "-lavfi", &graph, "-f", "null", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let values = |line: &str| -> std::collections::BTreeMap<String, f64> {
        line.split_whitespace()
            .filter_map(|kv| kv.split_once(':'))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()?)))
            .collect()
    };
    let tag = format!("{} ", filter.to_uppercase());
    let summary = err.lines().find_map(|l| l.split_once(&tag).map(|(_, rest)| values(rest)));
    let summary = summary.unwrap_or_else(|| panic!("no {filter} summary in {err}"));
    let per_frame = std::fs::read_to_string(&stats).unwrap().lines().map(values).collect();
    (summary, per_frame)
}

/// The most video bits in any 2 s window of `mp4` that starts in the 2 s before
/// `seam` (seconds), so that every window across the seam is counted.
pub fn window_peak(mp4: &Path, seam: f64) -> f64 {
    let packets = video_packets(mp4);
    let bits = |from: f64| packets.iter().filter(|p| p.0 >= from && p.0 < from + 2.0).map(|p| p.2 as f64 * 8.0).sum::<f64>();
    packets.iter().filter(|p| p.0 >= seam - 2.0 && p.0 <= seam).map(|p| bits(p.0)).fold(0.0, f64::max)
}

/// A rendition directory's HLS playlist has no discontinuity, and every segment
/// starts on a keyframe: its first video packet (read with `init.mp4` before it,
/// written to `scratch`) is one.
pub fn check_segments(dir: &Path, scratch: &Path) {
    let playlist = std::fs::read_to_string(dir.join("playlist.m3u8")).unwrap();
    assert!(!playlist.contains("DISCONTINUITY"), "{playlist}");
    for seg in playlist.lines().filter(|l| l.ends_with(".m4s")) {
        let both = [dir.join("init.mp4"), dir.join(seg)].iter().map(|p| std::fs::read(p).unwrap()).collect::<Vec<_>>().concat();
        std::fs::write(scratch, both).unwrap();
        assert!(video_packets(scratch).first().is_some_and(|p| p.3), "{}: {seg} starts on a keyframe", dir.display());
    }
}

/// An npm package installed once (per machine) for the tests to judge outputs
/// with, under `target/npm`: its directory for `require`.
pub fn npm_package(name: &str, version: &str) -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    // A prefix of its own: npm prunes what another install into the same prefix left.
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/npm/{name}@{version}"));
    let dir = prefix.join("node_modules").join(name);
    let installed = std::fs::read_to_string(dir.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|p| p["version"] == version);
    if !installed {
        std::fs::create_dir_all(&prefix).unwrap();
        let o = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix", prefix.to_str().unwrap(), &format!("{name}@{version}")])
            .output()
            .unwrap();
        assert!(o.status.success(), "npm install {name}@{version}: {}", String::from_utf8_lossy(&o.stderr));
    }
    dir
}

/// A PyPI package installed (once per version) into a directory of its own under
/// `target/pip/`: the directory to put on `PYTHONPATH`.
pub fn pip_package(name: &str, version: &str) -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/pip/{name}-{version}"));
    let marker = dir.join(".installed");
    if !marker.exists() {
        // Into its own directory, never the system's (Debian marks its Python as
        // externally managed; this install touches nothing of it).
        let o = Command::new("python3")
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                dir.to_str().unwrap(),
                &format!("{name}=={version}"),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "pip install {name}=={version}: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(&marker, "").unwrap();
    }
    dir
}

/// Parses every playlist with npm `hls-parser` in strict mode, which throws on
/// what RFC 8216 forbids: (name, text) pairs; panics with the parser's complaint.
pub fn hls_parser_strict(playlists: &[(String, String)]) {
    let parser = npm_package("hls-parser", "0.16.1");
    let script = r#"
        const HLS = require(process.env.HLS_PARSER);
        HLS.setOptions({strictMode: true});
        const playlists = JSON.parse(require('fs').readFileSync(0, 'utf8'));
        for (const [name, text] of playlists) {
            try { HLS.parse(text); } catch (e) { console.error(`${name}: ${e.message}`); process.exit(1); }
        }
    "#;
    let mut child = Command::new("node")
        .args(["-e", script])
        .env("HLS_PARSER", &parser)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(playlists).unwrap().as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "hls-parser (strict): {}", String::from_utf8_lossy(&o.stderr));
}

/// Checks an RFC 6381 `CODECS` list against what ffprobe reports for `mp4`'s
/// tracks: `avc1.PPCCLL` against the H.264 profile and level, `mp4a.40.2` against
/// AAC-LC, `vp09.PP.LL.DD` against the VP9 profile.
pub fn check_codecs(codecs: &str, mp4: &Path) {
    let streams = streams(mp4);
    let of = |kind: &str| streams.iter().find(|s| s["codec_type"] == kind);
    let list: Vec<&str> = codecs.split(',').collect();
    assert_eq!(list.len(), streams.len(), "{codecs} for {} tracks", streams.len());
    for c in list {
        if let Some(hex) = c.strip_prefix("avc1.") {
            let v = of("video").expect("a video track");
            let byte = |i: usize| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            let profile = match v["profile"].as_str().unwrap() {
                "Constrained Baseline" | "Baseline" => 66,
                "Main" => 77,
                "High" => 100,
                other => panic!("profile {other}"),
            };
            assert_eq!(
                (v["codec_name"].as_str(), byte(0), i64::from(byte(2))),
                (Some("h264"), profile, v["level"].as_i64().unwrap()),
                "{c}"
            );
        } else if let Some(rest) = c.strip_prefix("vp09.") {
            let v = of("video").expect("a video track");
            let profile: u32 = rest.split('.').next().unwrap().parse().unwrap();
            assert_eq!(
                (v["codec_name"].as_str(), format!("Profile {profile}")),
                (Some("vp9"), v["profile"].as_str().unwrap().to_string()),
                "{c}"
            );
        } else {
            assert_eq!(c, "mp4a.40.2", "an AAC-LC codecs string");
            let a = of("audio").expect("an audio track");
            assert_eq!((a["codec_name"].as_str(), a["profile"].as_str()), (Some("aac"), Some("LC")), "{c}");
        }
    }
}

/// A file's first audio track, decoded to mono 16-bit samples at 48 kHz.
pub fn mono_48k(path: &Path) -> Vec<i16> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i", path.to_str().unwrap(), "-map", "0:a:0", "-ac", "1", "-ar", "48000", "-f", "s16le", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// The frequency of a pure tone in 48 kHz samples, from its zero crossings.
pub fn tone_hz(samples: &[i16]) -> f64 {
    let crossings = samples.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 * 48000.0 / samples.len() as f64
}

/// `joined.ts` in `dir`: two MPEG-TS recordings of `seconds` each (a test picture
/// of `size` at `fps`, a 440 Hz then an 880 Hz tone) joined end to end, as `cat`
/// joins a recorder's parts: the second's timestamps start over.
pub fn joined_recordings(dir: &Dir, size: &str, fps: u32, seconds: u32, video: &[&str]) {
    let mut joined = Vec::new();
    for (name, hz) in [("a.ts", 440), ("b.ts", 880)] {
        let (picture, tone) = (format!("testsrc2=s={size}:r={fps}:d={seconds}"), format!("sine=f={hz}:d={seconds}"));
        let mut args = vec!["-f", "lavfi", "-i", &picture, "-f", "lavfi", "-i", &tone, "-c:v", "libx264", "-preset", "ultrafast"];
        args.extend(video);
        let path = dir.s(name);
        args.extend(["-c:a", "aac", "-f", "mpegts", &path]);
        ffmpeg(&args);
        joined.extend(std::fs::read(&path).unwrap());
    }
    std::fs::write(dir.path("joined.ts"), joined).unwrap();
}

/// `parent`'s child processes (a worker's engines): each one's pid and arguments.
pub fn children_of(parent: u32) -> Vec<(u32, Vec<String>)> {
    let pids = std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
    pids.filter(|pid| {
        // "pid (comm) state ppid ...": the name may hold spaces, so read after its ')'.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()) == Some(parent)
    })
    .map(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        (pid, cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
    })
    .collect()
}
