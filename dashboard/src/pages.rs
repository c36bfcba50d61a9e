//! The pages, as HTML fragments (the part inside `<main>`). Each page is rendered
//! whole on first load and its fragment is refetched by the live script.

use crate::html::{action, ago, bar, bytes, duration, esc, timestamp};
use coordinator::queue::{Job, Task, TaskKind};
use coordinator::registry::WorkerView;
use coordinator::sessions::JoinTokenView;
use coordinator::stats::Overview;
use proto::probe::{Probe, StreamInfo, VideoStream};
use serde_json::Value;
use std::fmt::Write as _;

pub const JOBS_PER_PAGE: i64 = 50;
pub const JOB_STATES: [&str; 6] = ["queued", "running", "finalizing", "succeeded", "failed", "canceled"];

fn counts_table(title: &str, counts: &[(String, i64)]) -> String {
    let mut t = format!("<section class=\"card\"><h2>{}</h2><table class=\"counts\">", esc(title));
    if counts.is_empty() {
        t.push_str("<tr><td class=\"muted\">none yet</td></tr>");
    }
    for (state, n) in counts {
        let _ = write!(
            t,
            "<tr><td><span class=\"pill state-{s}\">{s}</span></td><td class=\"num\" data-count=\"{s}\">{n}</td></tr>",
            s = esc(state)
        );
    }
    t.push_str("</table></section>");
    t
}

/// An SVG bar chart of the last hour's throughput, one bar per minute.
fn throughput_chart(per_minute: &[f64]) -> String {
    let (w, h) = (600.0, 120.0);
    let max = per_minute.iter().cloned().fold(0.0, f64::max).max(0.001);
    let bw = w / per_minute.len().max(1) as f64;
    let mut bars = String::new();
    for (i, v) in per_minute.iter().enumerate() {
        let bh = (v / max * (h - 10.0)).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let _ = write!(
            bars,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{} min ago: {v:.2}x</title></rect>",
            i as f64 * bw + 1.0,
            h - bh,
            (bw - 2.0).max(1.0),
            per_minute.len() - i
        );
    }
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"media seconds encoded per wall second, last hour\">{bars}</svg>\
<div class=\"axis\"><span>60 min ago</span><span>peak {max:.2}x</span><span>now</span></div>"
    )
}

pub fn overview(o: &Overview) -> String {
    let mut s = String::from("<h1>Overview</h1><div class=\"grid\">");
    s.push_str(&counts_table("Jobs by state", &o.jobs_by_state));
    s.push_str(&counts_table("Tasks by state", &o.tasks_by_state));
    let opt = |v: Option<f64>| v.map_or("–".to_string(), duration);
    let _ = write!(
        s,
        "<section class=\"card\"><h2>Last hour</h2><table class=\"counts\">\
<tr><td>Throughput (media s per wall s)</td><td class=\"num\" id=\"throughput\">{:.2}</td></tr>\
<tr><td>Failed task attempts</td><td class=\"num\" id=\"failed-attempts\">{}</td></tr>\
<tr><td>Failed jobs</td><td class=\"num\" id=\"failed-jobs\">{}</td></tr>\
<tr><td>Average queue wait</td><td class=\"num\">{}</td></tr>\
<tr><td>Median time to first playable</td><td class=\"num\">{}</td></tr>\
<tr><td>Median time to done</td><td class=\"num\">{}</td></tr></table></section></div>",
        o.throughput,
        o.failed_attempts,
        o.failed_jobs,
        opt(o.avg_queue_wait_ms),
        opt(o.median_first_playable_ms.map(|v| v as f64)),
        opt(o.median_done_ms.map(|v| v as f64)),
    );
    let _ =
        write!(s, "<section class=\"card wide\"><h2>Throughput, last hour</h2>{}</section>", throughput_chart(&o.throughput_per_minute));
    let running: i64 = o.tasks_by_state.iter().filter(|(s, _)| s == "running" || s == "leased").map(|(_, n)| n).sum();
    let _ = write!(s, "<section class=\"card wide\"><h2>Running tasks ({running})</h2>");
    if (o.running.len() as i64) < running {
        let _ = write!(s, "<p class=\"muted\">The {} that started first:</p>", o.running.len());
    }
    if o.running.is_empty() {
        s.push_str("<p class=\"muted\">Nothing is running.</p>");
    }
    for t in &o.running {
        let label = &t.name;
        let _ = write!(
            s,
            "<div class=\"running\"><a href=\"/jobs/{j}\">{short}</a> <span class=\"muted\">on {w}</span>{b}</div>",
            j = esc(&t.job_id),
            short = esc(short_id(&t.job_id)),
            w = esc(t.worker.as_deref().unwrap_or("?")),
            b = bar(&t.task_id, label, t.progress, "running"),
        );
    }
    s.push_str("</section>");
    s
}

pub fn short_id(id: &str) -> &str {
    id.get(id.len().saturating_sub(12)..).unwrap_or(id)
}

/// A video stream's colour description as its probe has it (", bt2020 arib-std-b67
/// bt2020nc"), or nothing where the stream gives none.
fn colours(v: &VideoStream) -> String {
    let named: Vec<&str> = [&v.color_primaries, &v.color_transfer, &v.color_space].into_iter().flatten().map(String::as_str).collect();
    if named.is_empty() { String::new() } else { format!(", {}", named.join(" ")) }
}

fn task_label(t: &Task) -> String {
    let rendition = t.rendition.as_deref().unwrap_or("?");
    match (t.kind, t.chunk) {
        (TaskKind::Thumbnails, _) => "thumbs".into(),
        (TaskKind::Audio, _) if t.rendition.is_none() => "subtitles".into(),
        (TaskKind::Audio, _) => "audio".into(),
        (TaskKind::Join, _) => format!("{rendition} join"),
        (TaskKind::Chunk, Some(c)) => format!("{rendition} #{c}"),
        _ => rendition.to_string(),
    }
}

fn job_duration(j: &Job) -> Option<f64> {
    j.probe.as_ref().and_then(|p| p["duration"].as_f64())
}

pub fn jobs(list: &[Job], state: Option<&str>, page: i64, total: i64, now: i64) -> String {
    let mut s = String::from(
        "<h1>Jobs</h1><form class=\"filters\" method=\"get\" action=\"/jobs\"><label>State <select name=\"state\" id=\"state-filter\"><option value=\"\">all</option>",
    );
    for st in JOB_STATES {
        let sel = if Some(st) == state { " selected" } else { "" };
        let _ = write!(s, "<option{sel}>{st}</option>");
    }
    let pages = ((total + JOBS_PER_PAGE - 1) / JOBS_PER_PAGE).max(1);
    let _ = write!(
        s,
        "</select></label><button>Filter</button><span class=\"muted\">{total} jobs · page {} of {pages}</span></form>",
        page + 1
    );
    s.push_str(
        "<table class=\"jobs\"><thead><tr><th>Job</th><th>State</th><th>Created</th><th>Length</th><th>Renditions</th></tr></thead><tbody>",
    );
    if list.is_empty() {
        s.push_str("<tr><td colspan=\"5\" class=\"muted\">No jobs.</td></tr>");
    }
    for j in list {
        let mut bars = String::new();
        // A chunked job's chunks are counted, not drawn one by one.
        if let Some(c) = j.chunks {
            let _ = write!(bars, "<span class=\"muted small\">{} of {} chunks done</span>", c.done, c.count);
        }
        for t in j.tasks.iter().filter(|t| t.kind != TaskKind::Chunk) {
            bars.push_str(&bar(&t.id, &task_label(t), t.progress, &t.state));
        }
        let _ = write!(
            s,
            "<tr data-job=\"{id}\"><td><a href=\"/jobs/{id}\">{short}</a><div class=\"muted small\">{profile}</div></td>\
<td><span class=\"pill state-{state}\" data-job-state>{state}</span></td><td title=\"{created}\">{ago}</td><td>{len}</td><td class=\"bars\">{bars}</td></tr>",
            id = esc(&j.id),
            short = esc(short_id(&j.id)),
            profile = esc(&j.profile),
            state = esc(&j.state),
            created = timestamp(j.created_at),
            ago = ago(now, j.created_at),
            len = job_duration(j).map_or("–".into(), |d| format!("{d:.1} s")),
        );
    }
    s.push_str("</tbody></table><nav class=\"pager\">");
    let q = state.map_or(String::new(), |st| format!("&state={}", esc(st)));
    if page > 0 {
        let _ = write!(s, "<a href=\"/jobs?page={}{q}\" rel=\"prev\">← newer</a>", page - 1);
    }
    if page + 1 < pages {
        let _ = write!(s, "<a href=\"/jobs?page={}{q}\" rel=\"next\">older →</a>", page + 1);
    }
    s.push_str("</nav>");
    s
}

/// One published file of a task result, by role (e.g. `progressive`).
fn role_path(result: &Value, role: &str) -> Option<String> {
    let dir = result["dir"].as_str()?;
    let file = result["report"]["files"][role].as_str()?;
    Some(format!("{dir}/{file}"))
}

pub fn job(
    j: &Job,
    results: &[(String, TaskKind, Option<String>, Value)],
    worker_names: &std::collections::HashMap<String, String>,
    csrf: &str,
    now: i64,
) -> String {
    let mut s = format!(
        "<h1>Job <code>{id}</code> <span class=\"pill state-{state}\" id=\"job-state\">{state}</span></h1>\
<p class=\"muted\">profile {profile} · created {created} ({ago}) · priority {prio}</p><div class=\"actions\">",
        id = esc(&j.id),
        state = esc(&j.state),
        profile = esc(&j.profile),
        created = timestamp(j.created_at),
        ago = ago(now, j.created_at),
        prio = j.priority,
    );
    if matches!(j.state.as_str(), "queued" | "running" | "finalizing") {
        s.push_str(&action(&format!("/jobs/{}/cancel", j.id), "Cancel", csrf, "danger"));
    }
    if matches!(j.state.as_str(), "failed" | "canceled") {
        s.push_str(&action(&format!("/jobs/{}/retry", j.id), "Retry", csrf, ""));
    }
    s.push_str("</div>");
    if let Some(w) = &j.waiting_for {
        let _ = write!(s, "<p class=\"muted\" id=\"job-waiting\">Waiting for {}.</p>", esc(w));
    }
    if let Some(e) = &j.error {
        let _ = write!(s, "<section class=\"card error\"><h2>Why it failed</h2><p id=\"job-error\">{}</p>", esc(e));
        for t in j.tasks.iter().filter(|t| t.log_tail.as_deref().is_some_and(|l| !l.is_empty())) {
            let _ = write!(
                s,
                "<h3>{} log (end)</h3><pre class=\"log\">{}</pre>",
                esc(&task_label(t)),
                esc(t.log_tail.as_deref().unwrap_or_default())
            );
        }
        s.push_str("</section>");
    }

    s.push_str("<section class=\"card wide\"><h2>Tasks</h2>");
    if let Some(c) = j.chunks {
        let _ = write!(
            s,
            "<p id=\"job-chunks\">Cut in {} time chunks, each encoded on its own worker and joined without re-encoding: {} done.</p>",
            c.count, c.done
        );
    }
    s.push_str("<table><thead><tr><th>Task</th><th>Progress</th><th>Attempts</th><th>Worker</th><th>Error</th></tr></thead><tbody>");
    for t in &j.tasks {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"bars\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&task_label(t)),
            bar(&t.id, &t.state, t.progress, &t.state),
            t.attempts,
            esc(t.worker.as_deref().map_or("–", |w| worker_names.get(w).map_or(w, String::as_str))),
            esc(t.error.as_deref().unwrap_or("")),
        );
    }
    s.push_str("</tbody></table></section>");

    // Outputs: player, renditions, thumbnails.
    let renditions: Vec<&Value> = results.iter().filter(|r| matches!(r.1, TaskKind::Transcode | TaskKind::Join)).map(|r| &r.3).collect();
    if !renditions.is_empty() {
        let poster = results
            .iter()
            .find(|r| r.1 == TaskKind::Thumbnails)
            .and_then(|r| Some(format!("{}/{}", r.3["dir"].as_str()?, r.3["report"]["poster"]["path"].as_str()?)))
            .map_or(String::new(), |p| format!(" poster=\"/ui/files/{}\"", esc(&p)));
        let mp4s: Vec<(String, &str)> =
            renditions.iter().filter_map(|r| Some((role_path(r, "progressive")?, r["report"]["name"].as_str().unwrap_or("?")))).collect();
        s.push_str("<section class=\"card wide\"><h2>Player</h2>");
        let master = j.outputs.as_ref().and_then(|o| o["master_playlist"].as_str());
        if master.is_some() {
            // The job's HLS through hls.js (app.js), with its pickers; the MP4s as downloads.
            let _ = write!(
                s,
                "<div class=\"player\" data-hls=\"/ui/files/jobs/{id}/master.m3u8\"><div class=\"pickers\">\
<label>Quality <select id=\"rung-select\"><option value=\"-1\">auto</option></select></label>\
<label>Audio <select id=\"audio-select\"></select></label>\
<label>Captions <select id=\"captions-select\"><option value=\"-1\">off</option></select></label></div>\
<video id=\"player\" controls muted playsinline preload=\"metadata\"{poster}></video></div><p class=\"muted\" id=\"downloads\">MP4:",
                id = esc(&j.id)
            );
            for (path, name) in &mp4s {
                let _ = write!(s, " <a href=\"/ui/files/{}\" download>{}</a>", esc(path), esc(name));
            }
            s.push_str("</p>");
        } else {
            // Before the job's end there is no master playlist: the renditions published
            // so far play as progressive MP4s.
            s.push_str("<div class=\"player\"><select data-player=\"player\" id=\"rendition-select\">");
            for (path, name) in &mp4s {
                let _ = write!(s, "<option value=\"/ui/files/{}\">{}</option>", esc(path), esc(name));
            }
            let first = mp4s.first().map_or("", |(p, _)| p.as_str());
            let _ = write!(
                s,
                "</select><video id=\"player\" controls preload=\"metadata\" src=\"/ui/files/{}\"{poster}></video></div>",
                esc(first)
            );
        }
        if let Some(m) = master {
            let _ = write!(s, "<p class=\"muted\" id=\"master-playlist\">HLS master playlist: <code>{}</code></p>", esc(m));
        }
        if let Some(m) = j.outputs.as_ref().and_then(|o| o["dash_manifest"].as_str()) {
            let _ = write!(s, "<p class=\"muted\" id=\"dash-manifest\">DASH MPD: <code>{}</code></p>", esc(m));
        }
        s.push_str("</section>");

        s.push_str("<section class=\"card wide\"><h2>Renditions</h2><table id=\"renditions\"><thead><tr><th>Name</th><th>Size</th><th>Bytes</th><th>Average bitrate</th><th>Peak bitrate</th><th>Keyframes</th><th title=\"against the source scaled to this size\">PSNR Y / all</th><th>SSIM</th><th>Codecs</th></tr></thead><tbody>");
        for r in &renditions {
            let rep = &r["report"];
            let total: u64 = r["files"].as_array().map_or(0, |f| f.iter().filter_map(|f| f["size"].as_u64()).sum());
            let kbps = |v: &Value| v.as_u64().map_or("–".into(), |b| format!("{} kbit/s", b / 1000));
            let q = &rep["quality"];
            let psnr = match (q["psnr_y"].as_f64(), q["psnr"].as_f64()) {
                (Some(y), Some(all)) => format!("{y:.2} / {all:.2} dB"),
                _ => "–".into(),
            };
            let ssim = q["ssim"].as_f64().map_or("–".into(), |v| format!("{v:.4}"));
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}×{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td><code>{}</code></td></tr>",
                esc(rep["name"].as_str().unwrap_or("?")),
                rep["width"],
                rep["height"],
                bytes(total),
                kbps(&rep["average_bitrate"]),
                kbps(&rep["peak_bitrate"]),
                rep["keyframe_times"].as_array().map_or(0, |k| k.len()),
                psnr,
                ssim,
                esc(rep["codecs"].as_str().unwrap_or("")),
            );
        }
        s.push_str("</tbody></table></section>");
    }
    if let Some((_, _, _, a)) = results.iter().find(|r| r.1 == TaskKind::Audio) {
        s.push_str("<section class=\"card wide\"><h2>Audio tracks</h2><table id=\"audio-tracks\"><thead><tr><th>Track</th><th>Name</th><th>Language</th><th>Source stream</th><th>Default</th><th>Average bitrate</th><th>Codecs</th></tr></thead><tbody>");
        for t in a["report"]["tracks"].as_array().into_iter().flatten() {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{} kbit/s</td><td><code>{}</code></td></tr>",
                esc(t["name"].as_str().unwrap_or("?")),
                esc(t["label"].as_str().unwrap_or("")),
                esc(t["language"].as_str().unwrap_or("–")),
                t["stream"],
                if t["default"] == true { "yes" } else { "" },
                t["average_bitrate"].as_u64().unwrap_or(0) / 1000,
                esc(t["codecs"].as_str().unwrap_or("")),
            );
        }
        s.push_str("</tbody></table></section>");
    }
    if let Some((_, _, _, t)) = results.iter().find(|r| r.1 == TaskKind::Thumbnails) {
        let dir = t["dir"].as_str().unwrap_or_default();
        s.push_str("<section class=\"card wide\"><h2>Thumbnails and storyboard</h2><div class=\"thumbs\">");
        for th in t["report"]["thumbnails"].as_array().into_iter().flatten() {
            let _ = write!(
                s,
                "<figure><img loading=\"lazy\" src=\"/ui/files/{}/{}\" alt=\"thumbnail at {:.1} s\"><figcaption>{:.1} s</figcaption></figure>",
                esc(dir),
                esc(th["path"].as_str().unwrap_or_default()),
                th["time"].as_f64().unwrap_or(0.0),
                th["time"].as_f64().unwrap_or(0.0)
            );
        }
        s.push_str("</div><div class=\"storyboard\">");
        for sheet in t["report"]["storyboard"]["sheets"].as_array().into_iter().flatten() {
            let _ = write!(
                s,
                "<img loading=\"lazy\" src=\"/ui/files/{}/{}\" alt=\"storyboard sheet\">",
                esc(dir),
                esc(sheet.as_str().unwrap_or_default())
            );
        }
        let sb = &t["report"]["storyboard"];
        let _ = write!(
            s,
            "</div><p class=\"muted\">{} tiles, one every {} s, indexed by <code>{}</code></p></section>",
            sb["tiles"],
            sb["interval"],
            esc(sb["vtt"].as_str().unwrap_or(""))
        );
    }
    if let Some(p) = j.probe.as_ref().and_then(|p| serde_json::from_value::<Probe>(p.clone()).ok()) {
        s.push_str("<section class=\"card wide\"><h2>Source</h2><table id=\"probe\"><tbody>");
        let _ = write!(
            s,
            "<tr><th>Container</th><td>{}</td></tr><tr><th>Duration</th><td>{:.3} s</td></tr><tr><th>Size</th><td>{}</td></tr><tr><th>Bitrate</th><td>{} kbit/s</td></tr>",
            esc(&p.container),
            p.duration,
            p.size_bytes.map_or("–".into(), bytes),
            p.bitrate / 1000,
        );
        for st in &p.streams {
            let (index, desc) = match st {
                StreamInfo::Video(v) => (
                    v.index,
                    format!(
                        "video: {} {}×{} coded, shown {}×{} (SAR {}, rotation {}°), {:.3} fps, {} {}-bit{}{}{}",
                        v.codec,
                        v.coded_width,
                        v.coded_height,
                        v.display_width,
                        v.display_height,
                        v.sample_aspect_ratio,
                        v.rotation,
                        v.frame_rate,
                        v.pix_fmt,
                        v.bit_depth,
                        colours(v),
                        v.dolby_vision.map_or(String::new(), |d| format!(", Dolby Vision {}.{}", d.profile, d.compatibility)),
                        if v.default { ", default" } else { "" }
                    ),
                ),
                StreamInfo::Audio(a) => (
                    a.index,
                    format!(
                        "audio: {} {} Hz, {} channels ({}){}{}",
                        a.codec,
                        a.sample_rate,
                        a.channels,
                        a.channel_layout,
                        a.language.as_deref().map_or(String::new(), |l| format!(", {l}")),
                        if a.default { ", default" } else { "" }
                    ),
                ),
                StreamInfo::Subtitle(t) => (
                    t.index,
                    format!(
                        "subtitles: {}{}{}{}{}",
                        t.codec,
                        t.language.as_deref().map_or(String::new(), |l| format!(", {l}")),
                        if t.default { ", default" } else { "" },
                        if t.forced { ", forced" } else { "" },
                        if t.text { " (ignored)" } else { " (bitmap: ignored)" }
                    ),
                ),
                StreamInfo::Other { index, codec, medium } => (*index, format!("{medium}: {codec} (ignored)")),
            };
            let _ = write!(s, "<tr><th>Stream {index}</th><td>{}</td></tr>", esc(&desc));
        }
        s.push_str("</tbody></table></section>");
    }
    s
}

pub fn workers(list: &[WorkerView], csrf: &str, now: i64) -> String {
    let mut s = String::from(
        "<h1>Workers</h1><p><a href=\"/workers/add\" class=\"button\">Add a worker</a></p><table class=\"workers\"><thead><tr><th>Machine</th><th>State</th><th>Slots</th><th>Current tasks</th><th>Encoders</th><th>Version</th><th>Last heartbeat</th><th>Load</th><th></th></tr></thead><tbody>",
    );
    if list.is_empty() {
        s.push_str("<tr><td colspan=\"9\" class=\"muted\">No workers yet. Add one.</td></tr>");
    }
    for w in list {
        let mut tasks = String::new();
        for t in &w.current_tasks {
            let label = &t.name;
            let _ = write!(tasks, "<a href=\"/jobs/{}\">{}</a>", esc(&t.job_id), bar(&t.task_id, label, t.progress, "running"));
        }
        let mut actions = String::new();
        if w.state == "draining" {
            actions.push_str(&action(&format!("/workers/{}/resume", w.id), "Resume", csrf, ""));
        } else {
            actions.push_str(&action(&format!("/workers/{}/drain", w.id), "Drain", csrf, ""));
        }
        actions.push_str(&action(&format!("/workers/{}/remove", w.id), "Remove", csrf, "danger"));
        let _ = write!(
            s,
            "<tr data-worker=\"{id}\" data-name=\"{name}\"><td>{name}<div class=\"muted small\">{short}</div></td><td><span class=\"pill state-{state}\" data-worker-state>{state}</span>{paused}</td>\
<td class=\"num\">{busy}/{slots}</td><td class=\"bars\">{tasks}</td><td class=\"small\">{enc}</td><td>{ver}{build}</td><td>{seen}</td><td class=\"num\">{load}</td><td class=\"actions\">{actions}</td></tr>",
            id = esc(&w.id),
            name = esc(&w.name),
            short = esc(short_id(&w.id)),
            state = esc(&w.state),
            paused = w.paused.as_deref().map_or(String::new(), |why| format!("<div class=\"muted small\">{}</div>", esc(why))),
            busy = w.current_tasks.len(),
            slots = w.slots,
            enc = esc(&w.capabilities.encoders.join(", ")),
            ver = esc(&w.drake_version),
            // Its encoders' build past Drake's version (libavcodec, libx264): a
            // rendition's chunks stay with one build.
            build = w.capabilities.encoder_build.as_deref().map_or(String::new(), |b| {
                format!("<div class=\"muted small\">{}</div>", esc(b.split_once(", ").map_or(b, |(_, libs)| libs)))
            }),
            seen = ago(now, w.last_heartbeat),
            load = w.load.map_or("–".into(), |l| format!("{l:.2}")),
        );
    }
    s.push_str("</tbody></table>");
    s
}

pub fn add_worker(tokens: &[JoinTokenView], new_command: Option<&str>, csrf: &str, now: i64) -> String {
    let mut s = String::from("<h1>Add a worker</h1>");
    if let Some(cmd) = new_command {
        let _ = write!(
            s,
            "<section class=\"card wide ok\"><h2>Run this on the new machine</h2><pre class=\"command\" id=\"join-command\">{}</pre>\
<p class=\"muted\">The token is shown only now. The machine needs the <code>drake</code> binary (see the README) and network access to this coordinator.</p></section>",
            esc(cmd)
        );
    }
    let _ = write!(
        s,
        "<section class=\"card\"><h2>New join token</h2><form method=\"post\" action=\"/workers/add\" id=\"join-form\">{}\
<label>Uses <input type=\"number\" name=\"uses\" min=\"1\" max=\"1000\" value=\"1\"></label>\
<label>Expires after <select name=\"ttl_seconds\"><option value=\"3600\">1 hour</option><option value=\"86400\">1 day</option><option value=\"604800\">7 days</option></select></label>\
<button>Create token</button></form></section>",
        crate::html::csrf_input(csrf)
    );
    s.push_str("<section class=\"card wide\"><h2>Join tokens</h2><table id=\"join-tokens\"><thead><tr><th>Token</th><th>Uses left</th><th>Expires</th><th>Created</th><th></th></tr></thead><tbody>");
    if tokens.is_empty() {
        s.push_str("<tr><td colspan=\"5\" class=\"muted\">No usable join tokens.</td></tr>");
    }
    for t in tokens {
        let _ = write!(
            s,
            "<tr><td><code>…{}</code></td><td class=\"num\">{}</td><td>in {}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.digest[..12.min(t.digest.len())]),
            t.uses_left,
            duration((t.expires_at - now) as f64),
            ago(now, t.created_at),
            action(&format!("/join-tokens/{}/revoke", t.digest), "Revoke", csrf, "danger")
        );
    }
    s.push_str("</tbody></table></section>");
    s
}

/// Upload pipelines and their submit tokens: create one (shown once), revoke one.
/// The upload page: a file, a profile, and the upload's progress (moved by `upload.js`).
pub fn upload(csrf: &str, profiles: &[&str], max_bytes: u64) -> String {
    let options: String = profiles.iter().map(|p| format!("<option value=\"{}\">", esc(p))).collect();
    format!(
        "<h1>Upload a test file</h1><section class=\"card wide\"><form id=\"upload-form\">{}\
<label>File <input type=\"file\" name=\"file\" required></label>\
<label>Profile <input type=\"text\" name=\"profile\" value=\"web\" list=\"profile-names\" maxlength=\"100\" required></label>\
<datalist id=\"profile-names\">{options}</datalist><button>Upload</button></form>\
<progress id=\"upload-progress\" max=\"100\" value=\"0\" hidden></progress>\
<p id=\"upload-status\" class=\"muted\">Up to {} per file. Resumable (tus): if an upload stops, choose the same file again \
and it continues where the coordinator stopped.</p></section>",
        crate::html::csrf_input(csrf),
        bytes(max_bytes)
    )
}

pub fn pipelines(tokens: &[serde_json::Value], new_token: Option<(&str, &str)>, csrf: &str, now: i64) -> String {
    let mut s = String::from("<h1>Pipelines</h1>");
    if let Some((label, token)) = new_token {
        let _ = write!(
            s,
            "<section class=\"card wide ok\"><h2>Submit token for {}</h2><pre class=\"command\" id=\"submit-token\">{}</pre>\
<p class=\"muted\">The token is shown only now. The pipeline sends it as <code>Authorization: Bearer ...</code>; it sees only its own jobs.</p></section>",
            esc(label),
            esc(token)
        );
    }
    let _ = write!(
        s,
        "<section class=\"card\"><h2>New pipeline</h2><form method=\"post\" action=\"/pipelines\" id=\"pipeline-form\">{}\
<label>Name <input type=\"text\" name=\"label\" maxlength=\"100\" required></label><button>Create submit token</button></form></section>",
        crate::html::csrf_input(csrf)
    );
    s.push_str("<section class=\"card wide\"><h2>Submit tokens</h2><table id=\"submit-tokens\"><thead><tr><th>Pipeline</th><th>Token</th><th>Created</th><th></th></tr></thead><tbody>");
    if tokens.is_empty() {
        s.push_str("<tr><td colspan=\"4\" class=\"muted\">No pipelines yet.</td></tr>");
    }
    for t in tokens {
        let id = t["id"].as_str().unwrap_or_default();
        let state = if t["revoked"].as_bool().unwrap_or(false) {
            "<span class=\"muted\">revoked</span>".to_string()
        } else {
            action(&format!("/pipelines/{id}/revoke"), "Revoke", csrf, "danger")
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td><code>{}…</code></td><td>{}</td><td>{state}</td></tr>",
            esc(t["pipeline"].as_str().unwrap_or_default()),
            esc(&id[..12.min(id.len())]),
            ago(now, t["created_at"].as_i64().unwrap_or(now)),
        );
    }
    s.push_str("</tbody></table></section>");
    s
}

pub fn login(error: Option<&str>) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Sign in · Drake</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head><body class=\"login\"><main><h1>Drake</h1>{}\
<form method=\"post\" action=\"/login\"><label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required autofocus></label>\
<button>Sign in</button></form><p class=\"muted\">Or open the one-time login link that <code>drake up</code> and <code>drake coordinator</code> print.</p></main></body></html>",
        error.map_or(String::new(), |e| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(e)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_video_stream_shows_the_colours_its_probe_names() {
        let stream = |extra: Value| -> VideoStream {
            let mut v = serde_json::json!({
                "index": 0, "codec": "hevc", "coded_width": 1920, "coded_height": 1080, "display_width": 1920,
                "display_height": 1080, "sample_aspect_ratio": "1:1", "rotation": 0, "frame_rate": 30.0,
                "avg_frame_rate": "30/1", "pix_fmt": "yuv420p10le", "bit_depth": 10, "default": true
            });
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let hlg = stream(serde_json::json!({"color_primaries": "bt2020", "color_transfer": "arib-std-b67", "color_space": "bt2020nc"}));
        assert_eq!(colours(&hlg), ", bt2020 arib-std-b67 bt2020nc");
        assert_eq!(colours(&stream(serde_json::json!({"color_space": "bt709"}))), ", bt709");
        assert_eq!(colours(&stream(serde_json::json!({}))), "");
    }
}
