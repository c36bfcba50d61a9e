//! The `drake` binary: parses the command line and hands each subcommand to the
//! crate that owns it. No media logic lives here.

mod farm;
mod upload;

use clap::{CommandFactory, Parser, Subcommand};
use proto::exit;
use proto::profile::Profile;
use std::io::Write;
use std::path::{Path, PathBuf};
use worker::EngineError;

#[derive(Parser)]
#[command(name = "drake", version, about = "Drake: a transcoding farm orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a caption file (SubRip `.srt` or WebVTT `.vtt`) and print it as WebVTT;
    /// a malformed file fails as bad input, naming the line. With `--stream N`,
    /// FILE is a media source and its text subtitle stream N is printed instead.
    Captions {
        file: PathBuf,
        #[arg(long)]
        stream: Option<usize>,
    },
    /// Print a source's container and streams as JSON.
    Probe {
        /// A path or an http(s) URL.
        input: String,
    },
    /// Print which of a profile's renditions apply to a source, and how a long
    /// source is cut in time chunks (`chunks`, null when it is encoded whole), as JSON.
    Plan {
        input: String,
        /// A built-in profile name (web, vp9) or a path to a profile TOML file.
        #[arg(long, default_value = "web")]
        profile: String,
    },
    /// Transcode renditions, each into its DIR, printing progress as JSON lines.
    /// Several `--rendition NAME --out DIR` pairs share one decode of the source.
    Transcode {
        input: String,
        #[arg(long, default_value = "web")]
        profile: String,
        #[arg(long, required_unless_present = "subtitles")]
        rendition: Vec<String>,
        #[arg(long, required = true)]
        out: Vec<PathBuf>,
        /// Longest source accepted, in seconds.
        #[arg(long, default_value_t = 6.0 * 3600.0)]
        max_duration: f64,
        /// Also write the poster, thumbnails and storyboard (as `drake thumbnails`
        /// does) into DIR, from the same decode. They succeed or fail on their own:
        /// a failure is reported on stderr and leaves no thumbnails.json.
        #[arg(long, value_name = "DIR")]
        thumbnails: Option<PathBuf>,
        /// How many thumbnails `--thumbnails` makes.
        #[arg(long, default_value_t = 4)]
        thumbnails_count: usize,
        /// Encode only one time chunk, video only, as packets for a join:
        /// `INDEX:FIRST_FRAME:FRAMES` on the job's frame grid (FRAMES `end`: to the
        /// source's end). Each --out gets chunk.pkts and chunk.json.
        #[arg(long, value_name = "INDEX:FIRST:FRAMES", conflicts_with = "thumbnails")]
        chunk: Option<String>,
        /// Encode only the job's audio, whole, once for every rendition: each
        /// audio track the profile keeps as HLS of its own (a0.m3u8, ...), the
        /// first track's packets for the renditions' MP4s (audio.pkts) and
        /// audio.json, into the --out DIR.
        #[arg(long, conflicts_with_all = ["thumbnails", "chunk"])]
        audio: bool,
        /// Extract only the source's text subtitles, as the job's audio task does
        /// beside its audio (for a source without audio): each as WebVTT with its
        /// playlist (s0.vtt, s0.m3u8, ...) and audio.json, into the --out DIR.
        #[arg(long, conflicts_with_all = ["thumbnails", "chunk", "audio", "rendition", "audio_packets"])]
        subtitles: bool,
        /// Mux the job's audio from this packet file (audio.pkts from `--audio`)
        /// into each rendition's MP4 instead of encoding the source's audio again.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["chunk", "audio"])]
        audio_packets: Option<PathBuf>,
        /// Do not measure PSNR and SSIM (only to measure what measuring costs).
        #[arg(long)]
        no_quality: bool,
        #[command(flatten)]
        cores: CoresArg,
    },
    /// Join a chunked rendition without re-encoding: its chunks' packets (each
    /// --chunk DIR from `transcode --chunk`, in chunk order) and the job's audio
    /// (--audio DIR from `transcode --audio`) into the outputs a whole encode makes.
    /// It reads the source's probe (`drake probe SOURCE > probe.json`), never the source.
    Join {
        #[arg(long, value_name = "FILE")]
        probe: PathBuf,
        #[arg(long, default_value = "web")]
        profile: String,
        #[arg(long)]
        rendition: String,
        #[arg(long = "chunk", value_name = "DIR", required = true)]
        chunks: Vec<PathBuf>,
        #[arg(long, value_name = "DIR")]
        audio: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Longest source accepted, in seconds.
        #[arg(long, default_value_t = 6.0 * 3600.0)]
        max_duration: f64,
    },
    /// Run the coordinator: durable queue, HTTP API and WebDAV storage.
    Coordinator {
        /// Where the SQLite database, storage, admin token and webhook secret live.
        #[arg(long, default_value = "drake-data")]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8600")]
        listen: String,
        #[command(flatten)]
        settings: FarmArgs,
    },
    /// Run a worker that leases tasks from a coordinator.
    Worker {
        /// A coordinator's URL, or a load balancer's. Repeat it (or separate URLs
        /// with commas) for several coordinators: the worker moves to the next one
        /// when the one it talks to stops answering.
        #[arg(long, required = true, value_delimiter = ',')]
        coordinator: Vec<String>,
        /// A join token (or this worker's credential); also read from DRAKE_TOKEN.
        #[arg(long, env = "DRAKE_TOKEN", hide_env_values = true)]
        token: String,
        /// Tasks run at once.
        #[arg(long, default_value_t = 1)]
        slots: u32,
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Where children write before publishing; emptied after every task.
        #[arg(long, default_value = "drake-scratch")]
        scratch: PathBuf,
        /// Take no task while the scratch disk has less than this free (it stays
        /// live, and takes work again once there is room).
        #[arg(long, default_value_t = 1 << 30)]
        min_free_scratch_bytes: u64,
        #[arg(long)]
        name: Option<String>,
    },
    /// Run a whole farm on this machine: a coordinator and local workers.
    Up {
        #[arg(long, default_value_t = 2)]
        workers: u32,
        #[arg(long, default_value = "drake-data")]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8600")]
        listen: String,
        #[command(flatten)]
        settings: FarmArgs,
    },
    /// Submit a file or URL as a job; with --wait, follow it to the end.
    Submit(farm::SubmitArgs),
    /// Manage the farm's database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Copy a source's audio, video and subtitle packets, undecoded, into Matroska
    /// with cues, on one timeline: recordings joined end to end (their timestamps
    /// start over at each join) come out one after another, and a file without
    /// cues gets them. Prints how many parts there were and how many packets it
    /// dropped.
    Remux {
        input: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a poster, thumbnails and a storyboard sprite with WebVTT into DIR.
    Thumbnails {
        input: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 4)]
        count: usize,
        #[command(flatten)]
        cores: CoresArg,
    },
}

/// How many cores an engine command's codecs and filters may use.
#[derive(clap::Args)]
struct CoresArg {
    /// Size decoder, encoder and filter threads to N cores (a worker passes its
    /// task's share of its CPU quota). Default: every processor of the machine.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    cores: Option<u32>,
}

impl CoresArg {
    fn apply(&self) {
        if let Some(n) = self.cores {
            worker::av::set_cores(n);
        }
    }
}

#[derive(Subcommand)]
enum DbCommand {
    /// Copy a farm's state (jobs, tasks, tokens, workers, sessions, webhook
    /// deliveries, settings) into a new, empty database. Stop the coordinators first.
    Copy {
        /// The database to copy: a path, sqlite://PATH or postgres://...
        #[arg(long)]
        from: String,
        /// The empty database to copy into.
        #[arg(long)]
        to: String,
    },
}

/// Coordinator settings an operator may tune.
#[derive(clap::Args)]
struct FarmArgs {
    /// Where the farm's state lives: a path or sqlite://PATH (default DATA/drake.db),
    /// or postgres://USER:PASSWORD@HOST/DB, which several coordinators can share.
    #[arg(long, env = "DRAKE_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
    /// Largest accepted upload, in bytes.
    #[arg(long, default_value_t = 20 * 1024 * 1024 * 1024)]
    max_upload_bytes: u64,
    /// How long a lease lasts without a heartbeat before its task is queued again.
    #[arg(long, default_value_t = 30)]
    lease_ttl_seconds: u64,
    /// Keep sources and outputs on this external WebDAV server (for example nginx
    /// with its dav module) instead of serving the data dir at /dav/.
    #[arg(long, env = "DRAKE_STORAGE_URL")]
    storage_url: Option<String>,
    /// The Authorization header value the storage server expects, e.g. "Basic ...".
    #[arg(long, env = "DRAKE_STORAGE_AUTHORIZATION", hide_env_values = true, requires = "storage_url")]
    storage_authorization: Option<String>,
    /// How long a transfer to or from storage (the coordinator's and its workers')
    /// may go without moving a byte before it fails and is tried again.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    store_stall_seconds: u64,
    /// How long a task's engine (the child process a worker runs it in) may go
    /// without reporting progress before the worker stops it and the task is tried
    /// again: what a hung engine holds its task for. Longer than
    /// `--store-stall-seconds`, so that an engine waiting on a silent store fails as
    /// the store's fault, not its machine's.
    #[arg(long, default_value_t = proto::wire::ENGINE_STALL_SECONDS, value_parser = clap::value_parser!(u64).range(1..=86400))]
    engine_stall_seconds: u64,
    /// Let URL sources and webhook callbacks reach this non-public network (CIDR,
    /// e.g. 10.0.0.0/8; repeatable). By default they reach public addresses only.
    #[arg(long = "allow-network", value_name = "CIDR")]
    allow_network: Vec<String>,
    /// Refuse uploads (507) that would leave less than this free on the spool disk.
    #[arg(long, default_value_t = 1 << 30)]
    min_free_disk_bytes: u64,
    /// How long a task may wait while no live worker has its encoder, before it
    /// fails with that reason.
    #[arg(long, default_value_t = 3600)]
    capable_worker_wait_seconds: u64,
    /// How long an unfinished resumable (tus) upload is kept after its last part.
    #[arg(long, default_value_t = 86400)]
    upload_expiry_seconds: u64,
    /// Most bytes all unfinished resumable uploads together may hold; past it a new
    /// upload is refused (507) until others finish or expire.
    #[arg(long, default_value_t = 100 * 1024 * 1024 * 1024)]
    max_spool_bytes: u64,
    /// Let web pages from this origin (e.g. https://upload.example.com; repeatable)
    /// call the API from a browser: jobs and resumable uploads, with a token.
    #[arg(long = "cors-origin", value_name = "ORIGIN", env = "DRAKE_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
}

impl FarmArgs {
    /// What clap cannot check one argument at a time. An engine reading from a
    /// store that went silent prints no progress until the store's own limit cuts
    /// the read (and the task is retried as the store's fault); with an engine limit
    /// no longer than that, the worker would stop the engine first and count a
    /// hung store against its machine (the retry avoids it, and a machine that
    /// fails often rests).
    fn check(&self) -> Result<(), String> {
        if self.engine_stall_seconds <= self.store_stall_seconds {
            return Err(format!(
                "--engine-stall-seconds ({}) must be longer than --store-stall-seconds ({}): an engine waits on a silent store \
                 that long before the store's fault ends its read",
                self.engine_stall_seconds, self.store_stall_seconds
            ));
        }
        Ok(())
    }

    fn settings(self) -> farm::FarmSettings {
        farm::FarmSettings {
            database: self.database,
            max_upload_bytes: self.max_upload_bytes,
            lease_ttl_seconds: self.lease_ttl_seconds,
            storage_url: self.storage_url,
            storage_authorization: self.storage_authorization,
            allow_network: self.allow_network,
            min_free_disk_bytes: self.min_free_disk_bytes,
            capable_worker_wait_seconds: self.capable_worker_wait_seconds,
            store_stall_seconds: self.store_stall_seconds,
            engine_stall_seconds: self.engine_stall_seconds,
            upload_expiry_seconds: self.upload_expiry_seconds,
            max_spool_bytes: self.max_spool_bytes,
            cors_origins: self.cors_origins,
        }
    }
}

/// Settings whose value may come from a file: `NAME_FILE=PATH` (a Docker or
/// Kubernetes secret) stands for `NAME=<the file's contents>` when NAME is unset.
const FILE_SETTINGS: [&str; 3] = ["DRAKE_DATABASE_URL", "DRAKE_STORAGE_AUTHORIZATION", "DRAKE_TOKEN"];

fn settings_from_files() {
    for name in FILE_SETTINGS {
        let Ok(path) = std::env::var(format!("{name}_FILE")) else { continue };
        if std::env::var_os(name).is_some() {
            continue;
        }
        match std::fs::read_to_string(&path) {
            // SAFETY: called first thing in main, before any other thread exists.
            Ok(value) => unsafe { std::env::set_var(name, value.trim()) },
            Err(e) => {
                proto::log!("drake: {name}_FILE={path}: {e}");
                std::process::exit(2);
            }
        }
    }
}

fn main() {
    settings_from_files();
    let cli = Cli::parse();
    if let Command::Coordinator { settings, .. } | Command::Up { settings, .. } = &cli.command
        && let Err(e) = settings.check()
    {
        Cli::command().error(clap::error::ErrorKind::ArgumentConflict, e).exit();
    }
    let code = match cli.command {
        Command::Coordinator { data, listen, settings } => farm::coordinator(data, &listen, settings.settings()),
        Command::Worker { coordinator, token, slots, tags, scratch, min_free_scratch_bytes, name } => {
            farm::worker(farm::WorkerArgs { coordinators: coordinator, token, slots, tags, scratch, min_free_scratch_bytes, name })
        }
        Command::Up { workers, data, listen, settings } => farm::up(data, &listen, workers, settings.settings()),
        Command::Submit(args) => farm::submit(args),
        Command::Db { command: DbCommand::Copy { from, to } } => farm::db_copy(&from, &to),
        engine => run_engine(engine),
    };
    std::process::exit(code);
}

/// The engine subcommands: one libav job in this process, one line on failure.
fn run_engine(command: Command) -> i32 {
    if let Err(e) = worker::init() {
        fail(Failure::Engine(e));
    }
    let result = match command {
        Command::Captions { file, stream: None } => captions(&file),
        Command::Captions { file, stream: Some(n) } => worker::subtitles::extract(&file.to_string_lossy(), n)
            .map(|cues| print!("{}", proto::captions::to_webvtt(&cues)))
            .map_err(Failure::Engine),
        Command::Probe { input } => worker::probe::probe(&input).map_err(Failure::Engine).and_then(|p| print_json(&p)),
        Command::Plan { input, profile } => plan(&input, &profile),
        Command::Transcode {
            input,
            profile,
            rendition,
            out,
            max_duration,
            thumbnails,
            thumbnails_count,
            chunk,
            audio,
            subtitles,
            audio_packets,
            no_quality,
            cores,
        } => {
            cores.apply();
            if subtitles {
                return match subtitles_only(&input, &profile, &out, max_duration) {
                    Ok(()) => 0,
                    Err(f) => fail(f),
                };
            }
            let thumbnails = thumbnails.as_deref().map(|dir| (dir, thumbnails_count));
            let chunk = match chunk.as_deref().map(parse_chunk).transpose() {
                Ok(c) => c,
                Err(e) => fail(Failure::Engine(worker::error::EngineError::bad(e))),
            };
            let only = match (chunk, audio) {
                (Some((index, span)), _) => Some(Only::Chunk(index, span)),
                (None, true) => Some(Only::Audio),
                (None, false) => None,
            };
            let options = EngineOptions { max_duration, thumbnails, only, quality: !no_quality, audio_packets: audio_packets.as_deref() };
            transcode(&input, &profile, &rendition, &out, options)
        }
        Command::Join { probe, profile, rendition, chunks, audio, out, max_duration } => {
            let profile = match Profile::load(&profile) {
                Ok(p) => p,
                Err(e) => fail(Failure::Profile(e)),
            };
            let probe: proto::probe::Probe = match std::fs::read(&probe)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(p) => p,
                Err(e) => fail(Failure::Engine(worker::error::EngineError::bad(format!("--probe {}: {e}", probe.display())))),
            };
            let req = worker::join::JoinRequest {
                probe: &probe,
                profile: &profile,
                rendition: &rendition,
                chunks: chunks.iter().map(PathBuf::as_path).collect(),
                audio: audio.as_deref(),
                out: &out,
                limits: worker::transcode::Limits { max_duration },
            };
            worker::join::run(&req, &mut print_progress).map(|_| ()).map_err(Failure::Engine)
        }
        Command::Remux { input, out } => worker::remux::run(&input, &out).map_err(Failure::Engine).and_then(|r| print_json(&r)),
        Command::Thumbnails { input, out, count, cores } => {
            cores.apply();
            worker::thumbnails::run(&input, &out, count, &mut print_progress).map_err(Failure::Engine).map(|_| ())
        }
        Command::Coordinator { .. } | Command::Worker { .. } | Command::Up { .. } | Command::Submit(_) | Command::Db { .. } => {
            unreachable!("farm commands are dispatched in main")
        }
    };
    match result {
        Ok(()) => 0,
        Err(f) => fail(f),
    }
}

/// One line of progress on stdout, where the worker reads it: its heartbeats carry
/// it, and an engine that stops printing it is stopped.
fn print_progress(line: proto::report::ProgressLine) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

enum Failure {
    Engine(EngineError),
    Profile(proto::profile::ProfileError),
}

/// One readable line on stderr and the exit code the farm classifies by.
fn fail(f: Failure) -> ! {
    let (line, code) = match f {
        Failure::Engine(e) => (e.to_string(), e.exit_code()),
        Failure::Profile(e) => (format!("profile error: {e}"), exit::BAD_INPUT),
    };
    proto::log!("drake: {line}");
    std::process::exit(code);
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).expect("wire types serialize");
    println!("{text}");
    Ok(())
}

fn captions(file: &Path) -> Result<(), Failure> {
    let bad = |e: String| Failure::Engine(EngineError::bad(format!("{}: {e}", file.display())));
    let meta = std::fs::metadata(file).map_err(|e| bad(e.to_string()))?;
    if meta.len() > proto::captions::MAX_CAPTION_BYTES as u64 {
        return Err(bad(format!("{} bytes; at most {} are accepted", meta.len(), proto::captions::MAX_CAPTION_BYTES)));
    }
    let bytes = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    let format = proto::captions::Format::detect(&file.to_string_lossy(), &String::from_utf8_lossy(&bytes[..bytes.len().min(16)]));
    let cues = proto::captions::parse(&bytes, format).map_err(|e| bad(e.to_string()))?;
    print!("{}", proto::captions::to_webvtt(&cues));
    Ok(())
}

fn plan(input: &str, profile: &str) -> Result<(), Failure> {
    let profile = Profile::load(profile).map_err(Failure::Profile)?;
    let probe = worker::probe::probe(input).map_err(Failure::Engine)?;
    let plan = proto::plan::plan(&probe, &profile).map_err(|e| Failure::Engine(EngineError::bad(e.to_string())))?;
    /// The plan, and how the source is cut in time (`None`: encoded whole).
    #[derive(serde::Serialize)]
    struct Printed {
        #[serde(flatten)]
        plan: proto::plan::Plan,
        chunks: Option<proto::plan::ChunkPlan>,
    }
    let chunks = proto::plan::chunks(&plan, &probe, &profile.chunking);
    print_json(&Printed { plan, chunks })
}

/// A part of a long source's encode, for its join.
enum Only {
    /// `--chunk`: one time chunk's video.
    Chunk(u32, worker::transcode::Span),
    /// `--audio`: the whole audio.
    Audio,
}

/// `--chunk INDEX:FIRST:FRAMES` (FRAMES `end`: to the source's end).
fn parse_chunk(s: &str) -> Result<(u32, worker::transcode::Span), String> {
    let bad = || format!("--chunk {s:?}: expected INDEX:FIRST_FRAME:FRAMES, FRAMES a number or `end`");
    let parts: Vec<&str> = s.split(':').collect();
    let [index, first, count] = parts.as_slice() else { return Err(bad()) };
    let count = match *count {
        "end" => None,
        n => Some(n.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(bad)?),
    };
    Ok((index.parse().map_err(|_| bad())?, worker::transcode::Span { first: first.parse().map_err(|_| bad())?, count }))
}

/// `drake transcode --subtitles`: the source's text subtitles into the one `--out` DIR.
fn subtitles_only(input: &str, profile: &str, outs: &[PathBuf], max_duration: f64) -> Result<(), Failure> {
    let [out] = outs else {
        return Err(Failure::Engine(EngineError::bad(format!("--subtitles writes into one --out DIR, not {}", outs.len()))));
    };
    let profile = Profile::load(profile).map_err(Failure::Profile)?;
    let limits = worker::transcode::Limits { max_duration };
    worker::transcode::run_subtitles(input, &profile, out, limits).map(|_| ()).map_err(Failure::Engine)
}

/// What `drake transcode` was asked besides its renditions.
struct EngineOptions<'a> {
    max_duration: f64,
    thumbnails: Option<(&'a Path, usize)>,
    only: Option<Only>,
    quality: bool,
    audio_packets: Option<&'a Path>,
}

fn transcode(input: &str, profile: &str, renditions: &[String], outs: &[PathBuf], options: EngineOptions) -> Result<(), Failure> {
    let EngineOptions { max_duration, thumbnails, only, quality, audio_packets } = options;
    if renditions.len() != outs.len() {
        return Err(Failure::Engine(worker::error::EngineError::bad(format!(
            "{} --rendition but {} --out: give one --out per rendition",
            renditions.len(),
            outs.len()
        ))));
    }
    let profile = Profile::load(profile).map_err(Failure::Profile)?;
    let req = worker::transcode::Request {
        input,
        profile: &profile,
        outputs: renditions.iter().map(String::as_str).zip(outs.iter().map(PathBuf::as_path)).collect(),
        limits: worker::transcode::Limits { max_duration },
        thumbnails,
        quality,
        audio_packets,
    };
    let mut progress = print_progress;
    match only {
        Some(Only::Chunk(index, span)) => {
            return worker::transcode::run_chunk(&req, index, span, &mut progress).map(|_| ()).map_err(Failure::Engine);
        }
        Some(Only::Audio) => return worker::transcode::run_audio(&req, &mut progress).map(|_| ()).map_err(Failure::Engine),
        None => {}
    }
    let made = worker::transcode::run(&req, &mut progress).map_err(Failure::Engine)?;
    if let Some(Err(e)) = made.thumbnails {
        let _ = writeln!(std::io::stderr(), "drake: {}{e}", worker::thumbnails::NOT_MADE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn farm_args(args: &[&str]) -> FarmArgs {
        match Cli::try_parse_from(["drake", "coordinator"].iter().chain(args)).expect("parses").command {
            Command::Coordinator { settings, .. } => settings,
            _ => unreachable!(),
        }
    }

    #[test]
    fn an_engine_stall_limit_must_outlast_the_store_stall_limit() {
        assert_eq!(farm_args(&[]).check(), Ok(()), "the defaults");
        assert_eq!(farm_args(&["--engine-stall-seconds", "5", "--store-stall-seconds", "2"]).check(), Ok(()));
        for args in [&["--engine-stall-seconds", "30"][..], &["--engine-stall-seconds", "60"], &["--store-stall-seconds", "600"]] {
            let e = farm_args(args).check().expect_err("refused");
            assert!(e.contains("--engine-stall-seconds") && e.contains("must be longer than --store-stall-seconds"), "{e}");
        }
    }
}
