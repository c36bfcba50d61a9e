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
