//! Helpers shared by the integration tests: run the real `drake` binary, make
//! media with the ffmpeg CLI, read outputs back with ffprobe.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn drake_bin() -> &'static str {
    env!("CARGO_BIN_EXE_drake")
}

pub fn drake(args: &[&str]) -> Output {
    Command::new(drake_bin())
        .args(args)
        .output()
        .expect("drake runs")
}

/// Runs drake and returns stdout, failing the test with stderr on a non-zero exit.
pub fn drake_ok(args: &[&str]) -> String {
    let out = drake(args);
    assert!(
        out.status.success(),
        "drake {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs the ffmpeg CLI (tests only; the product never does).
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is installed");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ffprobe(args: &[&str]) -> Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .output()
        .expect("ffprobe is installed");
    assert!(
        out.status.success(),
        "ffprobe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

/// Video packets of a file: (pts_time, pos, size, is_key).
pub fn video_packets(path: &Path) -> Vec<(f64, u64, u64, bool)> {
    let v = ffprobe(&[
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts_time,pos,size,flags",
        path.to_str().unwrap(),
    ]);
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
    ffprobe(&["-show_streams", "-show_format", path.to_str().unwrap()])["streams"]
        .as_array()
        .unwrap()
        .clone()
}

pub fn format_duration(path: &Path) -> f64 {
    ffprobe(&["-show_format", path.to_str().unwrap()])["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

/// Transcodes one rendition and returns its directory and parsed rendition.json.
pub fn transcode(input: &str, profile: &str, rendition: &str, out: &Path) -> Value {
    drake_ok(&[
        "transcode",
        input,
        "--profile",
        profile,
        "--rendition",
        rendition,
        "--out",
        out.to_str().unwrap(),
    ]);
    serde_json::from_slice(&std::fs::read(out.join("rendition.json")).unwrap()).unwrap()
}

/// Decodes the first frame of a video to 8-bit grey: (width, height, pixels).
pub fn first_frame_grey(path: &Path) -> (u32, u32, Vec<u8>) {
    let s = &streams(path)[0];
    let (w, h) = (
        s["width"].as_u64().unwrap() as u32,
        s["height"].as_u64().unwrap() as u32,
    );
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), (w * h) as usize);
    (w, h, out.stdout)
}

/// Decodes the audio of a file to interleaved stereo f32 at 48 kHz.
pub fn audio_samples(path: &Path, channels: u32) -> Vec<f32> {
    let ac = channels.to_string();
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-f",
            "f32le",
            "-ac",
            &ac,
            "-ar",
            "48000",
            "-",
        ])
        .output()
        .unwrap();
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn rms(samples: impl Iterator<Item = f32>) -> f64 {
    let (mut s, mut n) = (0f64, 0usize);
    for x in samples {
        s += (x as f64) * (x as f64);
        n += 1;
    }
    (s / n.max(1) as f64).sqrt()
}
