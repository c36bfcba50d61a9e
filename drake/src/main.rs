//! The `drake` binary: parses the command line and hands each subcommand to the
//! crate that owns it. No media logic lives here.

use clap::{Parser, Subcommand};
use proto::exit;
use proto::profile::Profile;
use std::io::Write;
use std::path::PathBuf;
use worker::EngineError;

#[derive(Parser)]
#[command(
    name = "drake",
    version,
    about = "Drake: a transcoding farm orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a source's container and streams as JSON.
    Probe {
        /// A path or an http(s) URL.
        input: String,
    },
    /// Print which of a profile's renditions apply to a source, as JSON.
    Plan {
        input: String,
        /// A built-in profile name (web, vp9) or a path to a profile TOML file.
        #[arg(long, default_value = "web")]
        profile: String,
    },
    /// Transcode one rendition into DIR, printing progress as JSON lines.
    Transcode {
        input: String,
        #[arg(long, default_value = "web")]
        profile: String,
        #[arg(long)]
        rendition: String,
        #[arg(long)]
        out: PathBuf,
        /// Longest source accepted, in seconds.
        #[arg(long, default_value_t = 6.0 * 3600.0)]
        max_duration: f64,
    },
    /// Run the coordinator: the durable queue and the HTTP API.
    Coordinator {
        /// Where the SQLite database and the admin token live.
        #[arg(long, default_value = "drake-data")]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8600")]
        listen: String,
    },
    /// Write a poster, thumbnails and a storyboard sprite with WebVTT into DIR.
    Thumbnails {
        input: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 4)]
        count: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::Coordinator { data, listen } = cli.command {
        std::process::exit(coordinator(data, &listen));
    }
    if let Err(e) = worker::init() {
        fail(Failure::Engine(e));
    }
    let result = match cli.command {
        Command::Probe { input } => worker::probe::probe(&input)
            .map_err(Failure::Engine)
            .and_then(|p| print_json(&p)),
        Command::Plan { input, profile } => plan(&input, &profile),
        Command::Transcode {
            input,
            profile,
            rendition,
            out,
            max_duration,
        } => transcode(&input, &profile, &rendition, out, max_duration),
        Command::Coordinator { .. } => unreachable!("handled above"),
        Command::Thumbnails { input, out, count } => worker::thumbnails::run(&input, &out, count)
            .map_err(Failure::Engine)
            .map(|_| ()),
    };
    if let Err(f) = result {
        fail(f);
    }
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
    eprintln!("drake: {line}");
    std::process::exit(code);
}

/// Runs the coordinator until Ctrl-C or SIGTERM; returns the exit code.
fn coordinator(data: PathBuf, listen: &str) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drake: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("drake: cannot listen on {listen}: {e}");
                return exit::INTERNAL;
            }
        };
        let drake_exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("drake"));
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        };
        match coordinator::server::run(
            coordinator::server::Config {
                data_dir: data,
                drake_exe,
            },
            listener,
            shutdown,
        )
        .await
        {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("drake: coordinator: {e}");
                exit::INTERNAL
            }
        }
    })
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).expect("wire types serialize");
    println!("{text}");
    Ok(())
}

fn plan(input: &str, profile: &str) -> Result<(), Failure> {
    let profile = Profile::load(profile).map_err(Failure::Profile)?;
    let probe = worker::probe::probe(input).map_err(Failure::Engine)?;
    let plan = proto::plan::plan(&probe, &profile)
        .map_err(|e| Failure::Engine(EngineError::bad(e.to_string())))?;
    print_json(&plan)
}

fn transcode(
    input: &str,
    profile: &str,
    rendition: &str,
    out: PathBuf,
    max_duration: f64,
) -> Result<(), Failure> {
    let profile = Profile::load(profile).map_err(Failure::Profile)?;
    let req = worker::transcode::Request {
        input,
        profile: &profile,
        rendition,
        out_dir: &out,
        limits: worker::transcode::Limits { max_duration },
    };
    let stdout = std::io::stdout();
    let mut progress = |line: proto::report::ProgressLine| {
        let mut out = stdout.lock();
        let _ = serde_json::to_writer(&mut out, &line);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    };
    worker::transcode::run(&req, &mut progress).map_err(Failure::Engine)?;
    Ok(())
}
