//! What the coordinator's chores do: probe and plan a new job, finalize a job
//! whose tasks all succeeded, deliver webhooks. Each chore first claims the work
//! its job owes (see `queue::owed`), so a duplicate or stale chore does nothing,
//! and records its outcome in the same claim. None of it decodes media: probing
//! runs `drake probe` as a child process.

use crate::lifecycle;
use crate::queue::{Chore, ChoreClaim, ChunkSpan, NewTask, TaskKind};
use crate::state::{AppState, now_ms};
use crate::storage::StoreError;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use proto::profile::Profile;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The jobs whose chore runs in this process now, each with how many runs of
/// it (a stale duplicate may run beside the current one). A run is entered
/// before its claim and left after its outcome is recorded, on every path: an
/// error, a panic, or its future dropped (an apalis worker that died under it).
/// So a chore claimed by this coordinator whose job is not here has lost its run
/// without recording an outcome, and the reconciler makes it due again at once
/// (`Queue::rearm_lost_chores`) rather than after the claim's timeout.
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<HashMap<String, usize>>>);

/// One run of a job's chore, in [`Running`] while it lives.
pub struct RunningChore {
    running: Running,
    job: String,
}

impl Running {
    pub fn enter(&self, job: &str) -> RunningChore {
        *self.lock().entry(job.to_string()).or_default() += 1;
        RunningChore { running: self.clone(), job: job.to_string() }
    }

    /// Whether a chore of `job` runs in this process now.
    pub fn contains(&self, job: &str) -> bool {
        self.lock().contains_key(job)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RunningChore {
    fn drop(&mut self) {
        let mut runs = self.running.lock();
        if let Some(n) = runs.get_mut(&self.job) {
            *n -= 1;
            if *n == 0 {
                runs.remove(&self.job);
            }
        }
    }
}

/// How a chore attempt ended, other than in success.
enum Outcome {
    /// Bad input: the job fails at once with this reason.
    Rejected(String),
    /// Trouble that another attempt may not have (after a backoff), at a step
    /// ("fetching URL"; `None`: the chore's own name).
    Failed(Option<String>, String),
    /// A condition of the farm that passes, at a step: a disk it writes to is full,
    /// or the store cannot be reached. The attempt is tried again once it may have
    /// passed, and counts only after a long wait (see `Queue::chore_waits`).
    Waits(Option<String>, String),
}

impl From<String> for Outcome {
    fn from(error: String) -> Outcome {
        Outcome::Failed(None, error)
    }
}

impl From<&str> for Outcome {
    fn from(error: &str) -> Outcome {
        Outcome::Failed(None, error.into())
    }
}

impl Outcome {
    fn failed(error: impl ToString) -> Outcome {
        Outcome::Failed(None, error.to_string())
    }

    /// Storage trouble at `step`: waiting while a disk is full or the store is
    /// unreachable, so that a brief outage and a crash never add up to the
    /// attempts that fail a finished job.
    fn storage(step: Option<String>, e: StoreError) -> Outcome {
        if e.is_out_of_space() || e.is_unreachable() {
            Outcome::Waits(step, format!("storage: {e}"))
        } else {
            Outcome::Failed(step, format!("storage: {e}"))
        }
    }
}

/// The probe-and-plan chore pushed with `seq`: claims the job's owed probe, probes
/// the source in a child `drake probe` (so a libav crash cannot take the
/// coordinator down), plans the renditions and queues their tasks in the claim:
/// one task per rendition, lowest rung first, plus the thumbnails task; or, for a
/// source the profile cuts in time chunks, the tasks of [`chunked_tasks`]. An unreadable
/// source fails the job with the engine's reason; other trouble is retried after a
/// backoff, and the last attempt fails the job with its reason.
pub async fn probe_and_plan(st: &AppState, job: &str, seq: i64) -> Result<(), String> {
    let _running = st.chores_running.enter(job);
    let Some(claim) = st.queue.claim_chore(job, Chore::Probe, seq, &st.instance, now_ms()).await.map_err(|e| e.to_string())? else {
        return Ok(()); // not owed any more (canceled, retried), or a duplicate
    };
    if crate::fault::lose(crate::fault::LOSE_PROBE) {
        return Ok(());
    }
    let outcome = match probe_and_plan_tasks(st, job).await {
        Ok((stored, probe, tasks)) => {
            if st.queue.plan_job(job, claim, stored.as_deref(), &probe, &tasks, now_ms()).await.map_err(|e| e.to_string())? {
                st.wake_workers();
            }
            Ok(())
        }
        Err(o) => Err(o),
    };
    finish_attempt(st, job, Chore::Probe, claim, outcome).await
}

/// Records a chore attempt's failure on its claim and reports the change.
async fn finish_attempt(st: &AppState, job: &str, chore: Chore, claim: ChoreClaim, outcome: Result<(), Outcome>) -> Result<(), String> {
    let now = now_ms();
    match outcome {
        Ok(()) => {}
        Err(Outcome::Rejected(reason)) => {
            st.queue.chore_rejected(job, chore, claim, &reason, now).await.map_err(|e| e.to_string())?;
        }
        Err(Outcome::Failed(step, error)) => {
            proto::log!("coordinator: job {job}: {} attempt {} failed: {error}", chore.as_str(), claim.attempt);
            st.queue.chore_failed(job, chore, claim, step.as_deref(), &error, now).await.map_err(|e| e.to_string())?;
        }
        Err(Outcome::Waits(step, error)) => {
            proto::log!("coordinator: job {job}: {} waits for the farm: {error}", chore.as_str());
            st.queue.chore_waits(job, chore, claim, step.as_deref(), &error, now).await.map_err(|e| e.to_string())?;
        }
    }
    lifecycle::kick(st, job).await;
    Ok(())
}

/// Copies a URL source into storage (`jobs/ID/source`), unless an earlier attempt
/// did; a partial copy from an earlier attempt is resumed by `Range`.
async fn ingest(st: &AppState, job: &str, url: &str) -> Result<String, Outcome> {
    let stored = crate::storage::source_path(job);
    if st.storage.size(&stored).await.map_err(|e| Outcome::storage(None, e))?.is_some() {
        return Ok(stored);
    }
    let spool = st.storage.spool_dir();
    tokio::fs::create_dir_all(&spool).await.map_err(|e| Outcome::storage(None, e.into()))?;
    let part = spool.join(format!("ingest-{job}.part"));
    let limits = crate::fetch::IngestLimits {
        max_bytes: st.limits.max_upload_bytes,
        total: Duration::from_secs(st.limits.ingest_timeout_seconds),
        stall: Duration::from_secs(60),
    };
    match crate::fetch::ingest(&st.network, url, &part, limits).await {
        Ok(_) => {}
        Err(e @ (crate::fetch::FetchError::Refused(_) | crate::fetch::FetchError::TooLarge(_))) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Outcome::Rejected(format!("bad input: fetching {url}: {e}")));
        }
        // The partial copy stays for the next attempt to resume.
        Err(e @ crate::fetch::FetchError::NoSpace(_)) => return Err(Outcome::Waits(Some(format!("fetching {url}")), e.to_string())),
        Err(e) => return Err(Outcome::Failed(Some(format!("fetching {url}")), e.to_string())),
    }
    st.storage.import(&part, &stored).await.map_err(|e| Outcome::storage(Some(format!("storing {url}")), e))?;
    Ok(stored)
}

/// The job's stored source (for a URL source, the copy ingested now), its probe,
/// and its tasks.
async fn probe_and_plan_tasks(st: &AppState, job: &str) -> Result<(Option<String>, Value, Vec<NewTask>), Outcome> {
    let j = st.queue.job(job).await.map_err(Outcome::failed)?.ok_or_else(|| Outcome::failed("job vanished"))?;
    let profile = Profile::load(&j.profile).map_err(|e| Outcome::Rejected(format!("bad input: {e}")))?;
    let stored =
        if j.source.starts_with("http://") || j.source.starts_with("https://") { Some(ingest(st, job, &j.source).await?) } else { None };
    let spool = st.storage.spool_dir();
    let (target, copy) =
        st.storage.local_copy(stored.as_deref().unwrap_or(&j.source), &spool).await.map_err(|e| Outcome::storage(None, e))?;
    let rel = stored.as_deref().unwrap_or(&j.source);
    let cut = |probe: &proto::probe::Probe| {
        proto::plan::plan(probe, &profile).ok().and_then(|plan| proto::plan::chunks(&plan, probe, &profile.chunking)).is_some()
    };
    let probed = match probe_file(st, &target).await {
        Ok(p) if p.timeline_joins > 0 || p.duration_by_reading || (p.seeks_by_reading && cut(&p)) => {
            remux_source(st, job, &target, rel).await
        }
        other => other,
    };
    if copy {
        let _ = tokio::fs::remove_file(&target).await;
    }
    let probe = probed?;
    let plan = proto::plan::plan(&probe, &profile).map_err(|e| Outcome::Rejected(format!("bad input: {e}")))?;
    // A malformed caption file fails the job now, before anything is encoded.
    crate::sidecars::check(st, job, &j.captions).await.map_err(|e| match e {
        crate::sidecars::SidecarError::BadInput(why) => Outcome::Rejected(why),
        crate::sidecars::SidecarError::Failed(why) => Outcome::failed(why),
    })?;
    let encoder = profile.video.codec.encoder().to_string();
    let tasks = match proto::plan::chunks(&plan, &probe, &profile.chunking) {
        Some(cut) => chunked_tasks(&plan, &cut, &encoder),
        // An audio-only source's cover art is its poster, as a video's frames are.
        None => whole_tasks(&plan, probe.main_video().is_some() || probe.cover_art().is_some(), &encoder),
    };
    Ok((stored, json!(probe), tasks))
}

/// `drake probe` of a local file, in a child process.
async fn probe_file(st: &AppState, path: &std::path::Path) -> Result<proto::probe::Probe, Outcome> {
    let out = drake_child(st, "probe", &[path.as_os_str()], path).await?;
    serde_json::from_slice(&out).map_err(|e| Outcome::failed(format!("unreadable probe output: {e}")))
}

/// A source the chunks cannot read as it is, remuxed: `drake remux` copies its
/// packets into Matroska with cues, and that copy, probed again, replaces the
/// stored source `rel`. Recordings joined end to end (timestamps that start over)
/// are made one timeline, the parts one after another; a container whose seeks
/// read through everything before their target (`Probe::seeks_by_reading`) gets
/// an index, so each chunk fetches only its part; one that does not say how long
/// it is (`Probe::duration_by_reading`) says so, to the tasks that read it over HTTP.
async fn remux_source(st: &AppState, job: &str, target: &std::path::Path, rel: &str) -> Result<proto::probe::Probe, Outcome> {
    let spool = st.storage.spool_dir();
    let out = spool.join(format!("remux-{job}.mkv"));
    // The remux writes about the source's size into the spool: it waits for that
    // room beyond the uploads' reserve, as an upload would, rather than failing
    // its writes on a disk that fills.
    let size = tokio::fs::metadata(target).await.map_err(|e| Outcome::failed(format!("{}: {e}", target.display())))?.len();
    let short = crate::gate::spool_short_of(&spool, size, st.limits.min_free_disk_bytes).map_err(Outcome::failed)?;
    if let Some(why) = short {
        return Err(Outcome::Waits(Some("remuxing the source".into()), format!("{why}, and the remux writes {size} bytes")));
    }
    let remuxed = async {
        let remuxed = drake_child(st, "remux", &[target.as_os_str(), "--out".as_ref(), out.as_os_str()], target).await?;
        let parts = serde_json::from_slice::<Value>(&remuxed).ok().and_then(|r| r["parts"].as_u64()).map(|n| n as u32);
        let mut probe = probe_file(st, &out).await?;
        if probe.timeline_joins > 0 {
            return Err(Outcome::Rejected("bad input: the source's timestamps start over even after a remux".into()));
        }
        probe.remuxed_parts = parts;
        st.storage.import(&out, rel).await.map_err(|e| Outcome::storage(Some("storing the remuxed source".into()), e))?;
        Ok(probe)
    }
    .await;
    if remuxed.is_err() {
        let _ = tokio::fs::remove_file(&out).await;
    }
    remuxed
}

/// Runs `drake COMMAND ARGS` (an engine command reading `source`) within
/// [`probe_time_limit`], for its standard output. Its last line of stderr is the
/// failure: bad input rejects the job, a full disk (the remux's spool) waits for
/// room, anything else is retried.
async fn drake_child(st: &AppState, command: &str, args: &[&std::ffi::OsStr], source: &std::path::Path) -> Result<Vec<u8>, Outcome> {
    let mut child = tokio::process::Command::new(st.drake_exe.as_ref());
    child.arg(command).args(args).kill_on_drop(true);
    let bytes = tokio::fs::metadata(source).await.map(|m| m.len()).unwrap_or(0);
    let limit = probe_time_limit(bytes);
    let out = match tokio::time::timeout(limit, child.output()).await {
        Err(_) => return Err(Outcome::failed(format!("drake {command} timed out after {} s", limit.as_secs()))),
        Ok(Err(e)) => return Err(Outcome::failed(format!("cannot run drake {command}: {e}"))),
        Ok(Ok(out)) => out,
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("failed").trim_start_matches("drake: ").to_string();
    match out.status.code() {
        Some(0) => Ok(out.stdout),
        Some(proto::exit::NO_SPACE) => Err(Outcome::Waits(Some(format!("drake {command}")), last)),
        Some(proto::exit::INTERNAL | proto::exit::UNREACHABLE) | None => Err(Outcome::failed(last)),
        Some(_) => Err(Outcome::Rejected(last)),
    }
}

/// How long `drake probe` or `drake remux` may take on a source of `bytes`. The
/// probe reads all the packets of a source without a duration or a keyframe index
/// (MPEG-TS, Matroska), undecoded, at about 1 GB/s from the page cache and a few
/// hundred MB/s from a cold disk; the remux also writes them (1 GB in 6 s here).
/// 20 s per GiB leaves room for a disk that reads 50 MB/s.
fn probe_time_limit(bytes: u64) -> Duration {
    const BASE_S: u64 = 120;
    const PER_GIB_S: u64 = 20;
    Duration::from_secs(BASE_S + PER_GIB_S * bytes.div_ceil(1 << 30))
}

/// A job encoded whole, in lease order: its audio (every track, once), which the
/// renditions' MP4s mux; one transcode task per rendition; the thumbnails, when
/// the source has `pictures` (a video, or an audio-only source's cover art).
fn whole_tasks(plan: &proto::plan::Plan, pictures: bool, encoder: &str) -> Vec<NewTask> {
    let mut renditions: Vec<NewTask> =
        plan.renditions.iter().map(|r| NewTask::transcode(&r.name, r.video.as_ref().map(|_| encoder.to_string()))).collect();
    // The lowest rung runs first, so the job is playable early; then the longest
    // tasks first (highest rung down), which keeps workers busy to the end instead of
    // leaving the biggest encode alone on one machine at the tail.
    if renditions.len() > 2 {
        renditions[1..].reverse();
    }
    let mut tasks: Vec<NewTask> = audio_task(plan).into_iter().collect();
    tasks.extend(renditions);
    if pictures {
        tasks.push(NewTask::thumbnails());
    }
    tasks
}

/// The job's audio task, when its audio is apart from its video (every source
/// with both; an audio-only source's one rendition is its audio); for a video
/// without audio but with text subtitles, the task that extracts them.
fn audio_task(plan: &proto::plan::Plan) -> Option<NewTask> {
    if !plan.audio_tracks.is_empty() {
        Some(NewTask::audio(&plan.renditions[0].name))
    } else {
        (!plan.subtitle_tracks.is_empty()).then(NewTask::subtitles)
    }
}

/// A job cut in time chunks, in lease order: the audio (whole, once), which every
/// join needs; the lowest rung's chunks and its join (which waits for them and the
/// audio), so it is playable first; the thumbnails; the other rungs' chunks, highest
/// rung first, the longest tasks first so that the end of the job is short ones
/// spread over the farm; then their joins, which never hold a chunk back. A lease
/// may take the same chunk of several rungs from one decode (see
/// `Queue::lease_bundle`).
fn chunked_tasks(plan: &proto::plan::Plan, cut: &proto::plan::ChunkPlan, encoder: &str) -> Vec<NewTask> {
    let span = |i: usize| {
        let c = &cut.chunks[i];
        ChunkSpan { index: c.index, first_frame: c.start_frame, frames: (i + 1 < cut.chunks.len()).then_some(c.frames) }
    };
    let chunks = |r: &proto::plan::PlannedRendition| -> Vec<NewTask> {
        (0..cut.chunks.len()).map(|i| NewTask::chunk(&r.name, span(i), Some(encoder.to_string())).with_pixels(r.width, r.height)).collect()
    };
    let rungs = &plan.renditions;
    let mut tasks: Vec<NewTask> = audio_task(plan).into_iter().collect();
    tasks.extend(chunks(&rungs[0]));
    tasks.push(NewTask::join(&rungs[0].name));
    tasks.push(NewTask::thumbnails());
    for r in rungs[1..].iter().rev() {
        tasks.extend(chunks(r));
    }
    tasks.extend(rungs[1..].iter().map(|r| NewTask::join(&r.name)));
    tasks
}

/// The finalize chore pushed with `seq`: claims the job's owed finalize, checks
/// every published file on the store against its task's report (size and sha256),
/// writes `master.m3u8` and `manifest.json`, and ends the job `succeeded` in the
/// claim. A file missing or changed sends its task back to the queue; storage
/// trouble is retried after a backoff.
pub async fn finalize(st: &AppState, job: &str, seq: i64) -> Result<(), String> {
    let _running = st.chores_running.enter(job);
    let Some(claim) = st.queue.claim_chore(job, Chore::Finalize, seq, &st.instance, now_ms()).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let outcome = match write_outputs(st, job).await {
        Ok(Written::Outputs(outputs)) => {
            crate::fault::point(crate::fault::AFTER_OUTPUTS);
            st.queue.finish_job(job, claim, &outputs, now_ms()).await.map_err(|e| e.to_string())?;
            Ok(())
        }
        Ok(Written::Broken { task, why }) => {
            proto::log!("coordinator: job {job}: finalize: {why}; running its task again");
            st.queue.reopen_task(job, claim, &task, &why, now_ms()).await.map_err(|e| e.to_string())?;
            st.wake_workers();
            Ok(())
        }
        Err(o) => Err(o),
    };
    finish_attempt(st, job, Chore::Finalize, claim, outcome).await
}

enum Written {
    /// The job's output paths.
    Outputs(Value),
    /// A task's published outputs are missing or changed on the store.
    Broken { task: String, why: String },
}

/// Verifies the published renditions, then writes `master.m3u8` and `manifest.json`.
async fn write_outputs(st: &AppState, job_id: &str) -> Result<Written, Outcome> {
    let job = st.queue.job(job_id).await.map_err(|e| e.to_string())?.ok_or("job vanished")?;
    let results = st.queue.task_results(job_id).await.map_err(|e| e.to_string())?;
    let job_dir = format!("jobs/{job_id}");
    let url = |dir: &str, path: &str| st.storage.url(&format!("{dir}/{path}"));
    let store_error = |e: StoreError| Outcome::storage(None, e);
    let mut renditions = Vec::new();
    let mut thumbnails = Value::Null;
    let mut audio = Value::Null;
    for (task, kind, _, result) in &results {
        if kind.is_part() {
            // Chunks are published only through their joins.
            continue;
        }
        let dir = result["dir"].as_str().ok_or("task result without dir")?;
        let mut listed = result["files"].as_array().cloned().unwrap_or_default();
        // The audio packets are the renditions' input, never published (the job's end removes them).
        listed.retain(|f| !(*kind == TaskKind::Audio && f["path"] == crate::storage::AUDIO_PACKETS));
        for f in &listed {
            let path = f["path"].as_str().unwrap_or_default();
            let stored = st.storage.checksum(&format!("{dir}/{path}")).await.map_err(store_error)?;
            let expected = (f["size"].as_u64().unwrap_or(0), f["sha256"].as_str().unwrap_or_default());
            match stored {
                Some((size, sha)) if size == expected.0 && sha == expected.1 => {}
                Some((size, _)) => {
                    let why = format!("{dir}/{path} on the store is not what was published ({size} bytes, expected {})", expected.0);
                    return Ok(Written::Broken { task: task.clone(), why });
                }
                None => return Ok(Written::Broken { task: task.clone(), why: format!("{dir}/{path} is missing from the store") }),
            }
        }
        let files: Vec<Value> = listed
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
            TaskKind::Thumbnails => thumbnails = entry,
            TaskKind::Audio => audio = audio_entry(entry, &|path| url(dir, path)),
            _ => renditions.push(entry),
        }
    }
    if renditions.is_empty() {
        return Err("no rendition was published".into());
    }
    renditions.sort_by_key(|r| r["peak_bitrate"].as_u64().unwrap_or(0));
    let (subtitles, skipped_subtitles) = subtitles(st, &job, &renditions, &audio).await?;
    let master = master_playlist(&st.storage, &job_dir, &renditions, &audio, &subtitles).await?;
    let dash = crate::dash::mpd(&renditions, &audio, &subtitles);
    let mut outputs = json!({"master_playlist": url(&job_dir, "master.m3u8"), "manifest": url(&job_dir, "manifest.json")});
    if dash.is_some() {
        outputs["dash_manifest"] = json!(url(&job_dir, DASH_MANIFEST));
    }
    let manifest = json!({
        "version": proto::WIRE_VERSION,
        "job": {"id": job.id, "profile": job.profile, "source": job.source, "created_at": job.created_at},
        "probe": job.probe,
        "master_playlist": outputs["master_playlist"],
        "dash_manifest": outputs["dash_manifest"],
        "thumbnails": thumbnails,
        // A source without audio: its subtitles' task reports no tracks.
        "audio": if audio["tracks"].as_array().is_some_and(|t| !t.is_empty()) { audio.clone() } else { Value::Null },
        "subtitles": subtitles,
        "skipped_subtitles": skipped_subtitles,
        "renditions": renditions,
        "chunking": chunking(&job),
    });
    st.storage.write(&format!("{job_dir}/master.m3u8"), master.into_bytes()).await.map_err(store_error)?;
    if let Some(mpd) = dash {
        st.storage.write(&format!("{job_dir}/{DASH_MANIFEST}"), mpd.into_bytes()).await.map_err(store_error)?;
    }
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    st.storage.write(&format!("{job_dir}/manifest.json"), manifest).await.map_err(store_error)?;
    st.storage.remove_staging(job_id).await.map_err(store_error)?;
    Ok(Written::Outputs(outputs))
}

/// The job's subtitles, each with its directory: the source's own (extracted by
/// the audio task) then its caption files, published now; and the ones it does
/// not publish, with why (the source's, from the plan made again from the job's
/// probe and profile, and those the audio task could not read; caption files,
/// when the source has no video).
async fn subtitles(st: &AppState, job: &crate::queue::Job, renditions: &[Value], audio: &Value) -> Result<(Vec<Value>, Value), String> {
    let mut subtitles = audio["subtitles"].as_array().cloned().unwrap_or_default();
    for t in &mut subtitles {
        t["dir"] = audio["dir"].clone();
    }
    let probe = job.probe.as_ref().and_then(|p| serde_json::from_value::<proto::probe::Probe>(p.clone()).ok());
    let plan = probe.as_ref().zip(Profile::load(&job.profile).ok()).and_then(|(probe, profile)| proto::plan::plan(probe, &profile).ok());
    let mut skipped = json!(plan.map(|p| p.skipped_subtitles).unwrap_or_default());
    // Tracks the plan kept that the task could not read (over the cue limit).
    if let (Some(list), Some(unread)) = (skipped.as_array_mut(), audio["skipped_subtitles"].as_array()) {
        list.extend(unread.iter().cloned());
    }
    if renditions.iter().any(|r| r["video"].is_object()) {
        let taken: Vec<String> = subtitles.iter().filter_map(|t| t["label"].as_str().map(str::to_string)).collect();
        let duration = probe.map_or(0.0, |p| p.duration);
        let published = crate::sidecars::publish(&st.storage, &job.id, &job.captions, duration, &taken).await.map_err(|e| match e {
            crate::sidecars::SidecarError::BadInput(why) | crate::sidecars::SidecarError::Failed(why) => why,
        })?;
        subtitles.extend(published);
    } else if let Some(list) = skipped.as_array_mut() {
        for c in &job.captions {
            list.push(json!({"sidecar": c.file, "language": c.language, "reason": "the source has no video to caption"}));
        }
    }
    Ok((subtitles, skipped))
}

/// The job's DASH MPD, over the same segments as its HLS.
const DASH_MANIFEST: &str = "manifest.mpd";

/// How a chunked job was split, for its manifest: every chunk task with its
/// rendition, its frames and the worker that made it; `null` for a job encoded whole.
fn chunking(job: &crate::queue::Job) -> Value {
    let chunks: Vec<Value> = job
        .tasks
        .iter()
        .filter(|t| t.kind == TaskKind::Chunk)
        .map(|t| json!({"rendition": t.rendition, "chunk": t.chunk, "worker": t.worker, "attempts": t.attempts}))
        .collect();
    match job.chunks {
        Some(c) if !chunks.is_empty() => json!({"chunks": c.count, "tasks": chunks}),
        _ => Value::Null,
    }
}

/// The manifest's `audio`: the audio task's report with every track's own files
/// (`url` gives a file's URL) beside it.
fn audio_entry(mut entry: Value, url: &dyn Fn(&str) -> String) -> Value {
    let files = entry["files"].as_array().cloned().unwrap_or_default();
    if let Some(tracks) = entry["tracks"].as_array_mut() {
        for t in tracks {
            let prefix = format!("{}.", t["name"].as_str().unwrap_or_default());
            let own: Vec<Value> = files
                .iter()
                .filter(|f| f["url"].as_str().is_some_and(|u| u.rsplit('/').next().is_some_and(|n| n.starts_with(&prefix))))
                .cloned()
                .collect();
            t["playlist"] = json!(url(t["files"]["hls_playlist"].as_str().unwrap_or_default()));
            t["file_roles"] = t["files"].take();
            t["files"] = json!(own);
        }
    }
    if let Some(subtitles) = entry["subtitles"].as_array_mut() {
        for t in subtitles {
            t["playlist"] = json!(url(t["files"]["hls_playlist"].as_str().unwrap_or_default()));
            t["vtt"] = json!(url(t["files"]["vtt"].as_str().unwrap_or_default()));
            t["file_roles"] = t["files"].take();
        }
    }
    entry
}

/// The HLS group every video rendition's audio comes from.
const AUDIO_GROUP: &str = "audio";
/// The HLS group of the job's subtitles.
const SUBTITLES_GROUP: &str = "subs";

/// The multivariant playlist: the job's audio tracks as one `EXT-X-MEDIA` group
/// (the source's default track `DEFAULT=YES`, every track selectable), its text
/// subtitles as another (`DEFAULT`, `FORCED` from the source's dispositions), then one
/// `EXT-X-STREAM-INF` (its bandwidth and codecs with the group's largest track)
/// and one `EXT-X-I-FRAME-STREAM-INF` per rendition, lowest bandwidth first.
/// Paths are relative to the job directory.
async fn master_playlist(
    store: &crate::storage::Store,
    job_dir: &str,
    renditions: &[Value],
    audio: &Value,
    subtitles: &[Value],
) -> Result<String, String> {
    let mut m = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let tracks = audio["tracks"].as_array().map(Vec::as_slice).unwrap_or_default();
    let audio_dir = audio["dir"].as_str().and_then(|d| d.rsplit('/').next()).unwrap_or(crate::storage::AUDIO_DIR);
    for t in tracks {
        let _ = write!(m, "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{AUDIO_GROUP}\",NAME=\"{}\"", t["label"].as_str().unwrap_or_default());
        if let Some(lang) = t["language"].as_str() {
            let _ = write!(m, ",LANGUAGE=\"{lang}\"");
        }
        let default = if t["default"] == true { "YES" } else { "NO" };
        let _ = writeln!(
            m,
            ",DEFAULT={default},AUTOSELECT=YES,CHANNELS=\"{}\",URI=\"{audio_dir}/{}\"",
            t["audio"]["channels"],
            t["file_roles"]["hls_playlist"].as_str().unwrap_or_default()
        );
    }
    for t in subtitles {
        let _ =
            write!(m, "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"{SUBTITLES_GROUP}\",NAME=\"{}\"", t["label"].as_str().unwrap_or_default());
        if let Some(lang) = t["language"].as_str() {
            let _ = write!(m, ",LANGUAGE=\"{lang}\"");
        }
        let yes = |v: &Value| if *v == true { "YES" } else { "NO" };
        // DEFAULT=YES needs AUTOSELECT=YES; a forced track is only ever auto-selected.
        let _ = write!(m, ",DEFAULT={},AUTOSELECT=YES,FORCED={}", yes(&t["default"]), yes(&t["forced"]));
        if t["hearing_impaired"] == true {
            m.push_str(
                ",CHARACTERISTICS=\"public.accessibility.transcribes-spoken-dialog,public.accessibility.describes-music-and-sound\"",
            );
        }
        let dir = t["dir"].as_str().and_then(|d| d.rsplit('/').next()).unwrap_or(audio_dir);
        let _ = writeln!(m, ",URI=\"{dir}/{}\"", t["file_roles"]["hls_playlist"].as_str().unwrap_or_default());
    }
    let subtitles_group = if subtitles.is_empty() { String::new() } else { format!(",SUBTITLES=\"{SUBTITLES_GROUP}\"") };
    let most = |key: &str| tracks.iter().filter_map(|t| t[key].as_u64()).max();
    let mut iframes = String::new();
    for r in renditions {
        let dir = r["dir"].as_str().unwrap_or_default();
        let name = dir.rsplit('/').next().unwrap_or_default();
        let codecs = r["codecs"].as_str().unwrap_or_default();
        let with_audio = r["video"].is_object() && !tracks.is_empty();
        let (peak, average) = (r["peak_bitrate"].as_u64().unwrap_or(0), r["average_bitrate"].as_u64().unwrap_or(0));
        let _ = if with_audio {
            let codecs = format!("{codecs},{}", tracks[0]["codecs"].as_str().unwrap_or("mp4a.40.2"));
            let (peak, average) = (peak + most("peak_bitrate").unwrap_or(0), average + most("average_bitrate").unwrap_or(0));
            write!(m, "#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average},CODECS=\"{codecs}\",AUDIO=\"{AUDIO_GROUP}\"")
        } else {
            write!(m, "#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average},CODECS=\"{codecs}\"")
        };
        if r["video"].is_object() {
            let _ = write!(m, ",RESOLUTION={}x{},FRAME-RATE={:.3}", r["width"], r["height"], r["frame_rate"].as_f64().unwrap_or(0.0));
            m.push_str(&subtitles_group);
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
    crate::fault::point(crate::fault::BEFORE_DELIVERY);
    let ts = now_ms() / 1000;
    let signature = sign(&st.webhook_secret, &d.id, ts, &d.payload);
    // A receiver gets 10 s to answer; the address is checked like a source's.
    let outcome = st
        .network
        .send(&d.url, Duration::from_secs(10), |client, url| {
            client
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", &d.id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", &signature)
                .body(d.payload.clone())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| if r.status().is_success() { Ok(()) } else { Err(format!("HTTP {}", r.status())) });
    let retry = st.queue.webhook_attempted(&d.id, outcome, WEBHOOK_ATTEMPTS, now_ms()).await.map_err(|e| e.to_string())?;
    if let Some(r) = retry {
        st.chores.deliver_webhook(&d.id, r.attempts, d.pushes, Some(r.at)).await?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bigger_source_may_take_longer_to_probe() {
        assert_eq!(probe_time_limit(0), Duration::from_secs(120));
        assert_eq!(probe_time_limit(1), Duration::from_secs(140));
        // The largest upload the coordinator takes by default, read through at 41 MB/s.
        assert_eq!(probe_time_limit(20 << 30), Duration::from_secs(520));
    }
}
