//! Caption files sent with a job (sidecars). An upload's are stored with its
//! source at submit; a URL's are fetched when the job is probed, under the same
//! network policy as a URL source. The probe reads every one strictly, so a
//! malformed file fails the job as bad input (with its line) before any encode;
//! the finalize publishes each as a single-file WebVTT rendition
//! (`captions/cN.vtt` and `captions/cN.m3u8`) beside the source's own subtitles.

use crate::state::AppState;
use crate::storage::Store;
use proto::captions::{self, Sidecar};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The published directory of a job's caption files, inside its own directory.
pub const DIR: &str = "captions";

/// Where caption file `i` of a job is stored as it was sent.
pub fn stored_path(job: &str, i: usize) -> String {
    format!("jobs/{job}/source-caption-{i}")
}

/// Why a job's caption files could not be read.
#[derive(Debug)]
pub enum SidecarError {
    /// The file is malformed, too large, or its URL refused: the job fails.
    BadInput(String),
    /// Trouble another attempt may not have (the network, the store).
    Failed(String),
}

/// Makes sure every caption file of the job is stored (fetching URL ones not
/// fetched yet) and reads each strictly. Returns the cue count of each.
pub async fn check(st: &AppState, job: &str, sidecars: &[Sidecar]) -> Result<Vec<usize>, SidecarError> {
    let mut counts = Vec::new();
    for (i, s) in sidecars.iter().enumerate() {
        let stored = stored_path(job, i);
        if let Some(url) = &s.url
            && st.storage.size(&stored).await.map_err(|e| SidecarError::Failed(format!("storage: {e}")))?.is_none()
        {
            fetch(st, job, i, url).await?;
        }
        counts.push(read(&st.storage, &stored, i, s).await?.len());
    }
    Ok(counts)
}

/// Copies caption file `i` from `url` into the store.
async fn fetch(st: &AppState, job: &str, i: usize, url: &str) -> Result<(), SidecarError> {
    let spool = st.storage.spool_dir();
    tokio::fs::create_dir_all(&spool).await.map_err(|e| SidecarError::Failed(e.to_string()))?;
    let part = spool.join(format!("caption-{job}-{i}.part"));
    let limits = crate::fetch::IngestLimits {
        max_bytes: captions::MAX_CAPTION_BYTES as u64,
        total: Duration::from_secs(120),
        stall: Duration::from_secs(30),
    };
    let fetched = crate::fetch::ingest(&st.network, url, &part, limits).await;
    let result = match fetched {
        Ok(_) => st
            .storage
            .import(&part, &stored_path(job, i))
            .await
            .map_err(|e| SidecarError::Failed(format!("storing caption file {}: {e}", i + 1))),
        Err(e @ (crate::fetch::FetchError::Refused(_) | crate::fetch::FetchError::TooLarge(_))) => {
            Err(SidecarError::BadInput(format!("bad input: fetching caption file {} ({url}): {e}", i + 1)))
        }
        Err(e) => Err(SidecarError::Failed(format!("fetching caption file {} ({url}): {e}", i + 1))),
    };
    let _ = tokio::fs::remove_file(&part).await;
    result
}

/// Reads stored caption file `i` into its cues.
async fn read(store: &Store, stored: &str, i: usize, s: &Sidecar) -> Result<Vec<captions::Cue>, SidecarError> {
    let bytes = store
        .read(stored, captions::MAX_CAPTION_BYTES as u64)
        .await
        .map_err(|e| SidecarError::Failed(format!("reading caption file {}: {e}", i + 1)))?;
    let format = captions::Format::detect(&s.file, &String::from_utf8_lossy(&bytes[..bytes.len().min(16)]));
    captions::parse(&bytes, format)
        .map_err(|e| SidecarError::BadInput(format!("bad input: caption file {} ({}, {}): {e}", i + 1, s.language, s.file)))
}

/// Publishes the job's caption files as WebVTT renditions spanning `duration`
/// seconds and returns their manifest entries, labels made unique against
/// `taken` (the source's own subtitles).
pub async fn publish(store: &Store, job: &str, sidecars: &[Sidecar], duration: f64, taken: &[String]) -> Result<Vec<Value>, SidecarError> {
    let dir = format!("jobs/{job}/{DIR}");
    let mut labels: Vec<String> = taken.to_vec();
    let mut entries = Vec::new();
    for (i, s) in sidecars.iter().enumerate() {
        let cues = read(store, &stored_path(job, i), i, s).await?;
        let name = format!("c{i}");
        let (vtt, playlist) = (format!("{name}.vtt"), format!("{name}.m3u8"));
        let mut files = Vec::new();
        for (path, text) in [(&vtt, captions::to_hls_webvtt(&cues)), (&playlist, captions::single_file_playlist(&vtt, duration))] {
            let bytes = text.into_bytes();
            let (size, sha256) = (bytes.len(), hex::encode(Sha256::digest(&bytes)));
            let rel = format!("{dir}/{path}");
            store.write(&rel, bytes).await.map_err(|e| SidecarError::Failed(format!("storage: {e}")))?;
            files.push(json!({"url": store.url(&rel), "size": size, "sha256": sha256}));
        }
        let mut label = s.label.clone();
        let mut n = 2;
        while labels.contains(&label) {
            label = format!("{} ({n})", s.label);
            n += 1;
        }
        labels.push(label.clone());
        entries.push(json!({
            "name": name,
            "sidecar": s.file,
            "url": s.url,
            "language": s.language,
            "label": label,
            "default": false,
            "forced": false,
            "hearing_impaired": false,
            "cues": cues.len(),
            "dir": dir,
            "playlist": store.url(&format!("{dir}/{playlist}")),
            "vtt": store.url(&format!("{dir}/{vtt}")),
            "file_roles": {"vtt": vtt, "hls_playlist": playlist},
            "files": files,
        }));
    }
    Ok(entries)
}
