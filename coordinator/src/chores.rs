//! The coordinator's own background work: probe and plan a new job, finalize a
//! job whose tasks all succeeded, deliver webhooks, and reap lapsed leases.
//! None of it decodes media: probing runs `drake probe` as a child process.

use crate::state::{AppState, now_ms};
use crate::queue::{Job, NewTask, TaskKind};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use proto::profile::Profile;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::time::Duration;

/// Probes the source in a child `drake probe` (so a libav crash cannot take the
/// coordinator down), plans the renditions and queues one task per rendition,
/// lowest rung first, plus the thumbnails task. An unreadable source fails the job
/// with the engine's reason. Errs only on infrastructure trouble, which apalis retries.
pub async fn probe_and_plan(st: AppState, job: String) -> Result<(), String> {
    let Some(j) = st.queue.job(&job).await.map_err(|e| e.to_string())? else { return Ok(()) };
    if j.state != "queued" || !j.tasks.is_empty() {
        return Ok(()); // canceled meanwhile, or planned by an earlier attempt
    }
    let profile = match Profile::load(&j.profile) {
        Ok(p) => p,
        Err(e) => return fail_and_report(&st, &job, &format!("bad input: {e}")).await,
    };
    // Uploads are in storage; URLs are read by libav directly.
    let source = j.source;
    let (target, authorization) =
        if source.starts_with("http://") || source.starts_with("https://") { (source, None) } else { st.storage.probe_target(&source) };
    let mut probe = tokio::process::Command::new(st.drake_exe.as_ref());
    probe.arg("probe").arg(&target).kill_on_drop(true);
    if let Some(a) = authorization {
        probe.env(proto::HTTP_AUTHORIZATION_ENV, a);
    }
    let child = probe.output();
    let out = match tokio::time::timeout(Duration::from_secs(120), child).await {
        Err(_) => return fail_and_report(&st, &job, "probing timed out after 120 s").await,
        Ok(Err(e)) => return Err(format!("cannot run drake probe: {e}")),
        Ok(Ok(out)) => out,
    };
    if out.status.code() == Some(proto::exit::BAD_INPUT)
        || (out.status.code().is_some() && !out.status.success() && out.status.code() != Some(proto::exit::INTERNAL))
    {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return fail_and_report(&st, &job, stderr.lines().last().unwrap_or("probe failed").trim_start_matches("drake: ")).await;
    }
    if !out.status.success() {
        // Internal trouble (or a crash): let apalis try again.
        return Err(format!("drake probe failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()));
    }
    let probe: proto::probe::Probe = serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable probe output: {e}"))?;
    let plan = match proto::plan::plan(&probe, &profile) {
        Ok(p) => p,
        Err(e) => return fail_and_report(&st, &job, &format!("bad input: {e}")).await,
    };
    let encoder = profile.video.codec.encoder().to_string();
    let mut tasks: Vec<NewTask> = plan
        .renditions
        .iter()
        .map(|r| NewTask {
            kind: TaskKind::Transcode,
            rendition: Some(r.name.clone()),
            requires: r.video.as_ref().map(|_| encoder.clone()),
        })
        .collect();
    // The lowest rung runs first, so the job is playable early; then the longest
    // tasks first (highest rung down), which keeps workers busy to the end instead of
    // leaving the biggest encode alone on one machine at the tail.
    if tasks.len() > 2 {
        tasks[1..].reverse();
    }
    if probe.main_video().is_some() {
        tasks.push(NewTask { kind: TaskKind::Thumbnails, rendition: None, requires: None });
    }
    let now = now_ms();
    st.queue.set_probe(&job, &json!(probe), now).await.map_err(|e| e.to_string())?;
    st.queue.add_tasks(&job, &tasks, now).await.map_err(|e| e.to_string())?;
    st.work_ready.notify_waiters();
    st.emit("job", json!({"job_id": job, "state": "queued", "tasks": tasks.len()}));
    Ok(())
}

async fn fail_and_report(st: &AppState, job: &str, reason: &str) -> Result<(), String> {
    st.queue.fail_job(job, reason, now_ms()).await.map_err(|e| e.to_string())?;
    if let Ok(Some(j)) = st.queue.job(job).await {
        st.emit("job", json!({"job_id": job, "state": j.state, "error": j.error}));
        job_ended(st, &j).await;
    }
    Ok(())
}

/// After a task ended: finalize a job whose tasks all succeeded, report one that failed.
pub async fn after_task(st: &AppState, job: &str) {
    let Ok(Some(j)) = st.queue.job(job).await else {
        return;
    };
    match j.state.as_str() {
        "finalizing" => {
            if let Err(e) = st.chores.finalize(&j.id).await {
                proto::log!("coordinator: queueing finalize of job {}: {e}", j.id);
            }
        }
        "failed" => {
            st.emit("job", json!({"job_id": j.id, "state": j.state, "error": j.error}));
            job_ended(st, &j).await;
        }
        _ => st.emit("job", json!({"job_id": j.id, "state": j.state})),
    }
}

/// The finalize chore: write the outputs, then report the job's end either way.
pub async fn run_finalize(st: &AppState, job: &str) -> Result<(), String> {
    if let Err(e) = finalize(st, job).await {
        st.queue.fail_job_finalizing(job, &format!("finalize failed: {e}"), now_ms()).await.map_err(|e| e.to_string())?;
    }
    if let Ok(Some(j)) = st.queue.job(job).await {
        st.emit("job", json!({"job_id": job, "state": j.state, "outputs": j.outputs, "error": j.error}));
        job_ended(st, &j).await;
    }
    Ok(())
}

/// Writes `master.m3u8` and `manifest.json` from the published renditions.
pub async fn finalize(st: &AppState, job_id: &str) -> Result<(), String> {
    let job = st.queue.job(job_id).await.map_err(|e| e.to_string())?.ok_or("job vanished")?;
    let results = st.queue.task_results(job_id).await.map_err(|e| e.to_string())?;
    let job_dir = format!("jobs/{job_id}");
    let url = |dir: &str, path: &str| st.storage.url(&format!("{dir}/{path}"));
    let mut renditions = Vec::new();
    let mut thumbnails = Value::Null;
    for (kind, _, result) in &results {
        let dir = result["dir"].as_str().ok_or("task result without dir")?;
        let files: Vec<Value> = result["files"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|f| json!({"url": url(dir, f["path"].as_str().unwrap_or("")), "size": f["size"], "sha256": f["sha256"]}))
            .collect();
        let mut entry = result["report"].clone();
        // rendition.json's `files` maps roles to paths; the manifest's `files` lists
        // every published file, so the roles move to `file_roles`.
        entry["file_roles"] = entry["files"].take();
        entry["files"] = json!(files);
        entry["dir"] = json!(dir);
        match kind {
            TaskKind::Transcode => renditions.push(entry),
            TaskKind::Thumbnails => thumbnails = entry,
        }
    }
    if renditions.is_empty() {
        return Err("no rendition was published".into());
    }
    renditions.sort_by_key(|r| r["peak_bitrate"].as_u64().unwrap_or(0));
    let master = master_playlist(&st.storage, &job_dir, &renditions).await?;
    let outputs = json!({"master_playlist": url(&job_dir, "master.m3u8"), "manifest": url(&job_dir, "manifest.json")});
    let manifest = json!({
        "version": proto::WIRE_VERSION,
        "job": {"id": job.id, "profile": job.profile, "source": job.source, "created_at": job.created_at},
        "probe": job.probe,
        "master_playlist": outputs["master_playlist"],
        "thumbnails": thumbnails,
        "renditions": renditions,
    });
    let store_error = |e: crate::storage::StoreError| format!("storage: {e}");
    st.storage.write(&format!("{job_dir}/master.m3u8"), master.into_bytes()).await.map_err(store_error)?;
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    st.storage.write(&format!("{job_dir}/manifest.json"), manifest).await.map_err(store_error)?;
    st.storage.remove_staging(job_id).await.map_err(store_error)?;
    st.queue.finish_job(job_id, &outputs, now_ms()).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The multivariant playlist: one `EXT-X-STREAM-INF` and one `EXT-X-I-FRAME-STREAM-INF`
/// per rendition, lowest bandwidth first. Paths are relative to the job directory.
async fn master_playlist(store: &crate::storage::Store, job_dir: &str, renditions: &[Value]) -> Result<String, String> {
    let mut m = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let mut iframes = String::new();
    for r in renditions {
        let dir = r["dir"].as_str().unwrap_or_default();
        let name = dir.rsplit('/').next().unwrap_or_default();
        let codecs = r["codecs"].as_str().unwrap_or_default();
        let _ =
            write!(m, "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{codecs}\"", r["peak_bitrate"], r["average_bitrate"]);
        if r["video"].is_object() {
            let _ = write!(m, ",RESOLUTION={}x{},FRAME-RATE={:.3}", r["width"], r["height"], r["frame_rate"].as_f64().unwrap_or(0.0));
        }
        let _ = write!(m, "\n{name}/{}\n", r["file_roles"]["hls_playlist"].as_str().unwrap_or("playlist.m3u8"));
        if r["video"].is_object() {
            let iframe_path = r["file_roles"]["iframe_playlist"].as_str().unwrap_or("iframes.m3u8");
            let text = store
                .read(&format!("{job_dir}/{name}/{iframe_path}"), 16 << 20)
                .await
                .map_err(|e| format!("reading {name}/{iframe_path}: {e}"))?;
            let text = String::from_utf8_lossy(&text);
            let video_codec = codecs.split(',').next().unwrap_or_default();
            let _ = writeln!(
                iframes,
                "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={},CODECS=\"{video_codec}\",RESOLUTION={}x{},URI=\"{name}/{iframe_path}\"",
                iframe_bandwidth(&text),
                r["width"],
                r["height"]
            );
        }
    }
    m.push_str(&iframes);
    Ok(m)
}

/// Peak bitrate of an I-frame playlist: the largest keyframe range over its duration.
fn iframe_bandwidth(playlist: &str) -> u64 {
    let mut peak = 0u64;
    let mut duration = 0.0f64;
    for line in playlist.lines() {
        if let Some(d) = line.strip_prefix("#EXTINF:") {
            duration = d.trim_end_matches(',').parse().unwrap_or(0.0);
        } else if let Some(r) = line.strip_prefix("#EXT-X-BYTERANGE:") {
            let len: u64 = r.split('@').next().and_then(|l| l.parse().ok()).unwrap_or(0);
            if duration > 0.0 {
                peak = peak.max((len as f64 * 8.0 / duration) as u64);
            }
        }
    }
    peak
}

/// A job reached an end state: queue its webhook, if it has a callback.
pub async fn job_ended(st: &AppState, job: &Job) {
    let Some(url) = &job.callback_url else { return };
    let payload = json!({
        "type": format!("job.{}", job.state),
        "timestamp": proto::time::rfc3339(now_ms() / 1000),
        "data": {"job_id": job.id, "state": job.state, "error": job.error, "outputs": job.outputs},
    });
    let queued = match st.queue.enqueue_webhook(&job.id, url, &payload.to_string(), now_ms()).await {
        Ok(id) => st.chores.deliver_webhook(&id, 0, None).await,
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = queued {
        proto::log!("coordinator: queueing the webhook of job {}: {e}", job.id);
    }
}

/// Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key, "id.timestamp.body")),
/// where the key is the base64 part of the `whsec_` secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap_or_default();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Delivery attempts per webhook before giving up.
pub const WEBHOOK_ATTEMPTS: i64 = 8;

/// Makes one attempt at a webhook delivery (the `DeliverWebhook` chore) and, if it
/// fails, schedules the next attempt after a backoff. Deliveries are at least once:
/// receivers deduplicate by `webhook-id`.
pub async fn deliver_webhook(st: &AppState, id: &str) -> Result<(), String> {
    let Some(d) = st.queue.owed_webhook(id).await.map_err(|e| e.to_string())? else {
        return Ok(()); // delivered or given up already (a duplicate chore)
    };
    let ts = now_ms() / 1000;
    let outcome = webhook_client()
        .post(&d.url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sign(&st.webhook_secret, &d.id, ts, &d.payload))
        .body(d.payload.clone())
        .send()
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| if r.status().is_success() { Ok(()) } else { Err(format!("HTTP {}", r.status())) });
    let retry = st.queue.webhook_attempted(&d.id, outcome, WEBHOOK_ATTEMPTS, now_ms()).await.map_err(|e| e.to_string())?;
    if let Some(r) = retry {
        st.chores.deliver_webhook(&d.id, r.attempts, Some(r.at)).await?;
    }
    Ok(())
}

/// Reschedules every delivery still owed, for a coordinator that stopped between
/// recording a delivery and queueing its chore. Queued chores are not duplicated.
pub async fn resume_webhooks(st: &AppState) {
    match st.queue.owed_webhooks().await {
        Ok(owed) => {
            for (d, due) in owed {
                if let Err(e) = st.chores.deliver_webhook(&d.id, d.attempts, Some(due)).await {
                    proto::log!("coordinator: rescheduling webhook {}: {e}", d.id);
                }
            }
        }
        Err(e) => proto::log!("coordinator: listing owed webhooks: {e}"),
    }
}

/// One client for all deliveries (connection reuse); a receiver gets 10 s to answer.
fn webhook_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a default reqwest client builds"))
}

/// Requeues (or fails) tasks whose heartbeats stopped, then reports what changed.
pub async fn reap(st: &AppState) {
    match st.queue.reap(now_ms()).await {
        Ok(jobs) if !jobs.is_empty() => {
            st.work_ready.notify_waiters();
            for job in jobs {
                after_task(st, &job).await;
            }
        }
        Ok(_) => {}
        Err(e) => proto::log!("coordinator: lease reaper: {e}"),
    }
}

/// A fresh Standard Webhooks secret.
pub fn new_webhook_secret() -> String {
    let key = storage_random_bytes();
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

fn storage_random_bytes() -> [u8; 24] {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    b
}
