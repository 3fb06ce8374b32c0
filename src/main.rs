//! The `strata` command line: parse, call the library, print, exit.

mod terminal;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use strata::{
    Archive, ArchiveCompression, AuthOptions, Digest, ExtractOptions, IdMapMode, Options, Progress,
    PullOptions, RootMode, SnapshotterMode, upkeep,
};
use terminal::Bars;

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
    /// Make an OCI runtime bundle of IMAGE in DIR: DIR/rootfs and a rootless DIR/config.json
    /// that runc or crun run.
    Bundle(BundleArgs),
    /// Extract a tar archive (ARCHIVE, or - for stdin) into DEST, sandboxed as a layer is:
    /// a safe `tar -xf` for build scripts. `.wh.` names are plain files here.
    Extract(ExtractArgs),
    /// List the store's snapshots: chain ID, size, last use, the images that need them.
    Ls {
        #[command(flatten)]
        store: StoreArg,
        /// Print one JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Forget an image (PATH[:TAG] as unpacked, or its manifest digest); `gc` then frees
    /// the snapshots nothing else needs.
    Rm {
        #[command(flatten)]
        store: StoreArg,
        image: String,
    },
    /// Remove snapshots no recorded image needs, and the debris of killed runs.
    Gc {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove a directory tree strata made (subordinate-owned and mode-000 files included).
    Rmtree {
        #[arg(long, value_enum, default_value_t = IdMapArg::Auto)]
        idmap: IdMapArg,
        /// No warnings on stderr.
        #[arg(long)]
        quiet: bool,
        path: PathBuf,
    },
}

#[derive(Args)]
struct StoreArg {
    /// Snapshot store [default: $STRATA_STORE, $XDG_DATA_HOME/strata or ~/.local/share/strata].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

#[derive(Args)]
struct UnpackArgs {
    #[command(flatten)]
    how: HowToUnpack,
    /// DEST's mode: private (0700: no other host user reaches inside, but in a container no
    /// user but root can reach anything either) or image (the mode the image gives `/`,
    /// normally 0755, as a container expects).
    #[arg(long, value_enum, default_value_t = RootModeArg::Private)]
    root_mode: RootModeArg,
    /// OCI image layout (PATH, PATH:TAG, PATH@sha256:DIGEST or oci:PATH[:TAG]) or registry
    /// image (docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]; no host: docker.io).
    image: String,
    /// Root filesystem to create: must not exist, or be an empty directory.
    dest: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RootModeArg {
    Private,
    Image,
}

impl From<RootModeArg> for RootMode {
    fn from(arg: RootModeArg) -> RootMode {
        match arg {
            RootModeArg::Private => RootMode::Private,
            RootModeArg::Image => RootMode::Image,
        }
    }
}

#[derive(Args)]
struct BundleArgs {
    #[command(flatten)]
    how: HowToUnpack,
    /// OCI image layout (PATH, PATH:TAG, PATH@sha256:DIGEST or oci:PATH[:TAG]) or registry
    /// image (docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]; no host: docker.io).
    image: String,
    /// Bundle directory to create (mode 0700): must not exist, or be an empty directory.
    dir: PathBuf,
}

/// The options `unpack` and `bundle` share.
#[derive(Args)]
struct HowToUnpack {
    #[command(flatten)]
    store: StoreArg,
    /// Apply every layer straight into DEST, without caching snapshots.
    #[arg(long, conflicts_with = "store")]
    no_store: bool,
    /// Print one JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// No progress or warnings on stderr.
    #[arg(long)]
    quiet: bool,
    /// Platform to pick from a multi-platform image, as os/arch[/variant].
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Ids to map: the user's subordinate range when it works (auto), or the user alone.
    #[arg(long, value_enum, default_value_t = IdMapArg::Auto)]
    idmap: IdMapArg,
    /// How a new store keeps snapshots: overlay (layer diffs) where it works, else native
    /// (full trees). An existing store keeps its own.
    #[arg(long, value_enum, default_value_t = SnapshotterArg::Auto)]
    snapshotter: SnapshotterArg,
    /// Layers a store (overlay snapshotter) extracts at once, each into a snapshot of its own,
    /// DEST then copied from the store [default: 3 from a registry, each downloading its blob;
    /// else one per 4 CPUs; with 1, each layer fills its snapshot and DEST in the same pass].
    #[arg(
        long,
        short = 'j',
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..),
        conflicts_with = "no_store"
    )]
    jobs: Option<u16>,
    #[command(flatten)]
    pull: PullArgs,
}

/// How a `docker://` IMAGE's registry is reached, as podman and skopeo take it.
#[derive(Args)]
struct PullArgs {
    /// Credentials file [default: $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json
    /// and ~/.config/containers/auth.json; then ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Credentials for the registry, instead of any file's.
    #[arg(long, value_name = "USER[:PASSWORD]")]
    creds: Option<String>,
    /// Directory of the registry's CAs (*.crt) and client certificates (*.cert, *.key)
    /// [default: the registry's directory in ~/.config/containers/certs.d,
    /// /etc/containers/certs.d or /etc/docker/certs.d].
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// Verify the registry's TLS certificate; false also tries plain HTTP.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    tls_verify: bool,
}

impl From<PullArgs> for PullOptions {
    fn from(args: PullArgs) -> PullOptions {
        PullOptions {
            auth: AuthOptions {
                creds: args.creds,
                authfile: args.authfile,
            },
            cert_dir: args.cert_dir,
            tls_verify: args.tls_verify,
        }
    }
}

#[derive(Args)]
struct ExtractArgs {
    /// The SHA-256 the archive must have, as 64 hex digits (or sha256:HEX): anything else is
    /// refused, and DEST not made.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// What the archive is compressed with: auto reads its first bytes.
    #[arg(long, value_enum, default_value_t = CompressionArg::Auto)]
    compression: CompressionArg,
    /// Ids to map, as `unpack`'s: the archive's owners with the user's subordinate range when
    /// it works (auto), or every file the user's (single; owners kept in an xattr).
    #[arg(long, value_enum, default_value_t = IdMapArg::Auto)]
    idmap: IdMapArg,
    /// Print one JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// No warnings on stderr.
    #[arg(long)]
    quiet: bool,
    /// The tar archive, plain, gzip or zstd; - reads stdin.
    archive: PathBuf,
    /// Directory to create: must not exist, or be an empty directory.
    dest: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Auto,
    Gzip,
    Zstd,
    None,
}

impl From<CompressionArg> for ArchiveCompression {
    fn from(arg: CompressionArg) -> ArchiveCompression {
        match arg {
            CompressionArg::Auto => ArchiveCompression::Auto,
            CompressionArg::Gzip => ArchiveCompression::Gzip,
            CompressionArg::Zstd => ArchiveCompression::Zstd,
            CompressionArg::None => ArchiveCompression::None,
        }
    }
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum SnapshotterArg {
    Auto,
    Native,
    Overlay,
}

impl From<SnapshotterArg> for SnapshotterMode {
    fn from(arg: SnapshotterArg) -> SnapshotterMode {
        match arg {
            SnapshotterArg::Auto => SnapshotterMode::Auto,
            SnapshotterArg::Native => SnapshotterMode::Native,
            SnapshotterArg::Overlay => SnapshotterMode::Overlay,
        }
    }
}

/// Raises the soft limit on open files to the hard one, as Go programs do at start: the soft
/// default of 1,024 is for programs that `select`, which strata and its helpers never do.
/// (Walks of deep trees keep their fds bounded anyway; this is headroom, not a crutch.)
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() -> ExitCode {
    raise_open_file_limit();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole chain: "layer 2/3 (sha256:…): blob sha256:… has 10 bytes…".
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("strata: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Unpack(args) => {
            let root_mode = args.root_mode.into();
            unpack(args.how, args.image, args.dest, root_mode, strata::unpack)
        }
        // The bundle's rootfs always takes the image's mode; the directory is 0700.
        Command::Bundle(args) => unpack(
            args.how,
            args.image,
            args.dir,
            RootMode::Image,
            strata::bundle,
        ),
        Command::Extract(args) => extract(args),
        Command::Ls { store, json } => ls(&store.resolve()?, json),
        Command::Rm { store, image } => rm(&store.resolve()?, &image),
        Command::Gc { store } => gc(&store.resolve()?),
        Command::Rmtree { idmap, quiet, path } => rmtree(&path, idmap.into(), quiet),
    }
}

/// How many layers a store extracts at once, unless `--jobs` says. From a registry, three: each
/// downloads its own blob, which a network makes the slower part. Otherwise one per four CPUs:
/// one layer's pipeline (inflate, hash, create files) keeps two to three CPUs busy, and side
/// by side extraction also copies DEST afterwards, which pays only with CPUs to spare.
fn default_jobs(image: &str) -> usize {
    const REGISTRY_DOWNLOADS: usize = 3;
    if image.starts_with("docker://") {
        return REGISTRY_DOWNLOADS;
    }
    std::thread::available_parallelism().map_or(1, |cpus| (cpus.get() / 4).max(1))
}

/// What makes DEST of an image: `strata::unpack` or `strata::bundle`.
type Unpacker = fn(&Options, &mut dyn FnMut(Progress)) -> Result<strata::Report>;

/// `unpack` or `bundle`: `run` makes `dest` of `image`.
fn unpack(
    args: HowToUnpack,
    image: String,
    dest: PathBuf,
    root_mode: RootMode,
    run: Unpacker,
) -> Result<()> {
    let store = if args.no_store {
        None
    } else {
        Some(args.store.resolve()?)
    };
    let jobs = args.jobs.map_or_else(|| default_jobs(&image), usize::from);
    let options = Options {
        image,
        dest,
        root_mode,
        store,
        platform: args.platform,
        idmap: args.idmap.into(),
        snapshotter: args.snapshotter.into(),
        jobs,
        pull: args.pull.into(),
    };
    // Progress only on a terminal; warnings wherever stderr goes, unless --quiet.
    let bars = (!args.quiet && std::io::stderr().is_terminal()).then(Bars::new);
    let report = run(&options, &mut |event| match (&bars, event) {
        (_, Progress::Warning(_)) if args.quiet => {}
        (Some(bars), event) => bars.show(&event),
        (None, Progress::Warning(warning)) => eprintln!("strata: warning: {warning}"),
        (None, _) => {}
    });
    drop(bars);
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn extract(args: ExtractArgs) -> Result<()> {
    let sha256 = args
        .sha256
        .map(|given| {
            let given = given.to_ascii_lowercase();
            let hex = given.strip_prefix("sha256:").unwrap_or(&given);
            Digest::parse(&format!("sha256:{hex}"))
        })
        .transpose()?;
    let options = ExtractOptions {
        archive: if args.archive == Path::new("-") {
            Archive::Stdin
        } else {
            Archive::Path(args.archive)
        },
        dest: args.dest,
        sha256,
        compression: args.compression.into(),
        idmap: args.idmap.into(),
    };
    let report = strata::extract(&options, &mut |event| {
        if let Progress::Warning(warning) = event
            && !args.quiet
        {
            eprintln!("strata: warning: {warning}");
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn ls(store: &Path, json: bool) -> Result<()> {
    let snapshots = upkeep::list(store)?;
    if json {
        println!("{}", serde_json::to_string(&snapshots)?);
        return Ok(());
    }
    println!(
        "{:<19}  {:>9}  {:>9}  IMAGES",
        "CHAIN ID", "SIZE", "LAST USED"
    );
    for snapshot in snapshots {
        let images = if snapshot.images.is_empty() {
            "-".into()
        } else {
            snapshot.images.join(", ")
        };
        println!(
            "{:<19}  {:>9}  {:>9}  {images}",
            format!("sha256:{}", snapshot.chain_id.short()),
            human_size(snapshot.size),
            ago(snapshot.last_used),
        );
    }
    Ok(())
}

fn rm(store: &Path, image: &str) -> Result<()> {
    for record in upkeep::forget(store, image)? {
        println!("forgot {} ({})", record.reference, record.manifest);
    }
    Ok(())
}

fn gc(store: &Path) -> Result<()> {
    let collected = upkeep::gc(store)?;
    for warning in &collected.left_behind {
        eprintln!("strata: warning: {warning}");
    }
    println!(
        "removed {} snapshots ({})",
        collected.snapshots.len(),
        human_size(collected.size)
    );
    Ok(())
}

fn rmtree(path: &Path, idmap: IdMapMode, quiet: bool) -> Result<()> {
    if let Some(warning) = upkeep::rmtree(path, idmap)?
        && !quiet
    {
        eprintln!("strata: warning: {warning}");
    }
    Ok(())
}

impl StoreArg {
    fn resolve(self) -> Result<PathBuf> {
        if let Some(dir) = self
            .store
            .or_else(|| std::env::var_os("STRATA_STORE").map(PathBuf::from))
        {
            return Ok(dir);
        }
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(data).join("strata"));
        }
        let home = std::env::var_os("HOME")
            .context("no --store given and neither XDG_DATA_HOME nor HOME is set")?;
        Ok(PathBuf::from(home).join(".local/share/strata"))
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// "5m ago", "3h ago", "2d ago".
fn ago(epoch_seconds: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let seconds = now.saturating_sub(epoch_seconds);
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86400),
    }
}
