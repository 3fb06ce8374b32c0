//! The `strata` command line: parse, call the library, print, exit.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use strata::sandbox::IdMapMode;
use strata::{Options, Progress};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Rootless, sandboxed OCI image unpacker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Unpack IMAGE into the root filesystem DEST.
    Unpack(UnpackArgs),
}

#[derive(Args)]
struct UnpackArgs {
    /// Snapshot store [default: $STRATA_STORE, $XDG_DATA_HOME/strata or ~/.local/share/strata].
    #[arg(long, value_name = "DIR", conflicts_with = "no_store")]
    store: Option<PathBuf>,
    /// Apply every layer straight into DEST, without caching snapshots.
    #[arg(long)]
    no_store: bool,
    /// Print one JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Platform to pick from a multi-platform image, as os/arch[/variant].
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Ids to map: the user's subordinate range when it works (auto), or the user alone.
    #[arg(long, value_enum, default_value_t = IdMapArg::Auto)]
    idmap: IdMapArg,
    /// OCI image layout: PATH, PATH:TAG, PATH@sha256:DIGEST or oci:PATH[:TAG].
    image: String,
    /// Root filesystem to create: must not exist, or be an empty directory.
    dest: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IdMapArg {
    Auto,
    Single,
}

impl From<IdMapArg> for IdMapMode {
    fn from(arg: IdMapArg) -> IdMapMode {
        match arg {
            IdMapArg::Auto => IdMapMode::Auto,
            IdMapArg::Single => IdMapMode::Single,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Unpack(args) => unpack(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole chain: "layer 2/3 (sha256:…): blob sha256:… has 10 bytes…".
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("strata: {message}");
            ExitCode::FAILURE
        }
    }
}

fn unpack(args: UnpackArgs) -> Result<()> {
    let store = if args.no_store {
        None
    } else {
        Some(default_store(args.store)?)
    };
    let options = Options {
        image: args.image,
        dest: args.dest,
        store,
        platform: args.platform,
        idmap: args.idmap.into(),
    };
    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let report = strata::unpack(&options, &mut |event| match event {
        Progress::Warning(warning) if !args.quiet => eprintln!("strata: warning: {warning}"),
        event if show_progress => print_progress(&event),
        _ => {}
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn print_progress(event: &Progress) {
    match event {
        Progress::Extracting {
            index,
            count,
            layer,
        } => {
            eprintln!(
                "strata: layer {}/{count} {} extracting",
                index + 1,
                layer.digest.short()
            );
        }
        Progress::Cached {
            index,
            count,
            layer,
        } => {
            eprintln!(
                "strata: layer {}/{count} {} cached",
                index + 1,
                layer.digest.short()
            );
        }
        Progress::Copying => eprintln!("strata: copying the root filesystem"),
        Progress::Warning(_) => {}
    }
}

fn default_store(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = explicit.or_else(|| std::env::var_os("STRATA_STORE").map(PathBuf::from)) {
        return Ok(dir);
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(data).join("strata"));
    }
    let home = std::env::var_os("HOME")
        .context("no --store given and neither XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/strata"))
}
