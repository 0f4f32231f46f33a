//! `kiln sync SRC DST…`: copy an image by hand from one registry to others, with a progress line
//! per target and a verified-or-failed summary per target. Where blobs went is remembered between
//! runs (`blob_cache.rs`), so a later image sharing layers mounts them.

mod blob_cache;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context as _};
use registry_sync::{
    copy_image, human_bytes, CopyEvent, CopyOptions, ImageRef, RegistryAuth, RegistryOptions,
    RetryPolicy, TargetState,
};

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  kiln sync harbor.build.local/team/app@sha256:4f1c… harbor.eu.local/team/app harbor.us.local/team/app
  kiln sync --insecure 127.0.0.1:5000 --insecure 127.0.0.1:5001 127.0.0.1:5000/app:1.0 127.0.0.1:5001/app

Each blob is read from SRC once and streamed to every DST that lacks it at the same time; blobs a
DST already has are not sent, and blobs it has in another repository are mounted. Manifests are
copied byte for byte (multi-arch indexes with every platform, and referrers such as signatures).
The exit code is 0 only when every DST was verified by digest, else 1 with the reason per DST.

Which repository each blob went to is remembered in a small file, so that a later copy of another
image sharing layers (a common base) mounts them instead of sending them again: by default
$XDG_CACHE_HOME/kiln/blob-locations.json, else ~/.cache/kiln/blob-locations.json. Its entries are
hints: a mount the registry refuses falls back to sending the blob.")]
pub struct SyncArgs {
    /// The image to copy: host/repo@sha256:… or host/repo:tag (the tag is set on every DST).
    #[arg(value_name = "SRC")]
    pub source: String,
    /// Target repositories, host/repo (no tag: SRC's tag is kept).
    #[arg(value_name = "DST", required = true, num_args = 1..)]
    pub targets: Vec<String>,
    /// Speak plain http to this registry (host:port). Repeatable, or comma-separated in
    /// KILN_INSECURE_REGISTRIES (as `kiln serve` and the build steps read it).
    #[arg(long, value_name = "HOST", env = "KILN_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure: Vec<String>,
    /// Credentials for one registry, HOST=USER:PASS (a Harbor robot is USER `robot$project+name`).
    /// Repeatable; overrides the authfile for that host. Prefer --authfile: a command line is
    /// visible to other users of the machine.
    #[arg(long, value_name = "HOST=USER:PASS")]
    pub creds: Vec<String>,
    /// A docker config.json with `auths` (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json, when present).
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<PathBuf>,
    /// Do not copy referrers (signatures, SBOMs, attestations).
    #[arg(long)]
    pub no_referrers: bool,
    /// The file remembering where blobs were put, for mounts by later copies (default
    /// $XDG_CACHE_HOME/kiln/blob-locations.json, else ~/.cache/kiln/blob-locations.json);
    /// `off` keeps none.
    #[arg(long, value_name = "PATH|off", env = "KILN_BLOB_CACHE")]
    pub blob_cache: Option<PathBuf>,
    /// Attempts per request on connection errors, 429 and 5xx.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub attempts: u32,
}

/// Runs the copy; the exit code is 0 when every target verified.
pub async fn run(args: SyncArgs) -> anyhow::Result<u8> {
    let source = ImageRef::parse(&args.source).context("SRC")?;
    let mut targets = Vec::new();
    for t in &args.targets {
        let t = ImageRef::parse(t).context("DST")?;
        if t.tag().is_some() || t.digest().is_some() {
            bail!("DST {t} must be host/repo without a tag or digest: the tag of SRC is kept");
        }
        targets.push(t);
    }
    let cache = blob_cache::BlobCache::from_setting(args.blob_cache.as_deref());
    let options = CopyOptions {
        registry: registry_options(&args)?,
        blob_locations: cache.as_ref().map(|c| c.load()).unwrap_or_default(),
        retry: RetryPolicy {
            attempts: args.attempts.max(1),
            ..RetryPolicy::default()
        },
        referrers: !args.no_referrers,
        ..CopyOptions::default()
    };
    let tags: Vec<String> = source.tag().map(str::to_string).into_iter().collect();
    let display = ProgressDisplay::new(&targets);
    let report = copy_image(&source, &targets, &tags, &options, &|e| display.event(e)).await?;
    display.finish();
    // Whatever the outcome: the blobs that did arrive (at any target) are where the hints say.
    if let Some(cache) = &cache {
        cache.save(&options.blob_locations);
    }

    println!("{} → {} target(s), {}", report.digest, report.targets.len(), source);
    for t in &report.targets {
        let figures = format!(
            "sent {} blob(s) ({}), mounted {}, skipped {}, {} manifest(s), {:.1}s",
            t.blobs_sent,
            human_bytes(t.bytes_sent),
            t.blobs_mounted,
            t.blobs_skipped,
            t.manifests_pushed,
            t.duration.as_secs_f64()
        );
        match &t.state {
            TargetState::Verified => println!("  verified  {}  {figures}", t.target),
            TargetState::Failed { reason } => {
                println!("  FAILED    {}  {figures}\n            {reason}", t.target)
            }
        }
    }
    Ok(if report.all_verified() { 0 } else { 1 })
}

fn registry_options(args: &SyncArgs) -> anyhow::Result<RegistryOptions> {
    let mut opts = RegistryOptions::default();
    opts.insecure_registries = args.insecure.iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect();
    opts.insecure_setting = Some("KILN_INSECURE_REGISTRIES / --insecure".into());
    let authfile = args.authfile.clone().or_else(default_authfile);
    if let Some(path) = authfile {
        opts.registry_auth = registry_sync::load_docker_config(&path)?;
    }
    let mut from_flags = BTreeMap::new();
    for c in &args.creds {
        let (host, userpass) = c
            .split_once('=')
            .context("--creds must be HOST=USER:PASS")?;
        let (user, pass) = userpass
            .split_once(':')
            .context("--creds must be HOST=USER:PASS")?;
        from_flags.insert(host.to_string(), RegistryAuth::basic(user, pass));
    }
    opts.registry_auth.extend(from_flags);
    Ok(opts)
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, when it exists.
fn default_authfile() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    Some(dir.join("config.json")).filter(|p| p.is_file())
}

/// Draws progress on stderr: one line redrawn in place on a terminal, else a line per target at
/// each tenth of its bytes (or per blob, for targets with little to send).
struct ProgressDisplay {
    names: Vec<String>,
    terminal: bool,
    state: Mutex<Vec<TargetProgress>>,
}

#[derive(Default, Clone)]
struct TargetProgress {
    planned: u64,
    planned_known: bool,
    sent: u64,
    tenths: u64,
    done: Option<bool>,
}

impl ProgressDisplay {
    fn new(targets: &[ImageRef]) -> Self {
        ProgressDisplay {
            names: targets.iter().map(|t| t.to_string()).collect(),
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new(vec![TargetProgress::default(); targets.len()]),
        }
    }

    fn event(&self, event: CopyEvent) {
        let mut state = self.state.lock().expect("progress lock");
        let mut line = None;
        match event {
            CopyEvent::SourceRead { digest, manifests, blobs, bytes } => {
                line = Some(format!(
                    "source {digest}: {manifests} manifest(s), {blobs} blob(s), {}",
                    human_bytes(bytes)
                ));
            }
            CopyEvent::TargetPlanned { target, blobs, bytes } => {
                state[target].planned = bytes;
                state[target].planned_known = true;
                line = Some(format!(
                    "{}: {blobs} blob(s) to send ({})",
                    self.names[target],
                    human_bytes(bytes)
                ));
            }
            CopyEvent::Bytes { target, bytes } => {
                let p = &mut state[target];
                p.sent += bytes;
                let tenths = (p.sent * 10).checked_div(p.planned).unwrap_or(0);
                if tenths > p.tenths {
                    p.tenths = tenths;
                    line = Some(self.target_line(target, p));
                }
            }
            CopyEvent::BlobMounted { target, digest, from } => {
                line = Some(format!("{}: mounted {digest} from {from}", self.names[target]));
            }
            CopyEvent::TargetFinished { target, verified } => {
                state[target].done = Some(verified);
                line = Some(self.target_line(target, &state[target]));
            }
            _ => {}
        }
        if self.terminal {
            let all: Vec<String> = (0..self.names.len()).map(|i| self.short(i, &state[i])).collect();
            eprint!("\r\x1b[2K{}", all.join("  "));
            let _ = std::io::stderr().flush();
        } else if let Some(line) = line {
            eprintln!("{line}");
        }
    }

    fn target_line(&self, target: usize, p: &TargetProgress) -> String {
        let status = match p.done {
            Some(true) => " verified",
            Some(false) => " FAILED",
            None => "",
        };
        format!(
            "{}: {} / {}{status}",
            self.names[target],
            human_bytes(p.sent),
            human_bytes(p.planned)
        )
    }

    fn short(&self, target: usize, p: &TargetProgress) -> String {
        // Sends may start before the target's plan is known (`TargetPlanned`): no share until then.
        let pct = if p.planned_known {
            format!("{:>3}%", (p.sent * 100).checked_div(p.planned).unwrap_or(100).min(100))
        } else {
            "  …".to_string()
        };
        let status = match p.done {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "",
        };
        format!("{} {pct} {}{status}", self.names[target], human_bytes(p.sent))
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
