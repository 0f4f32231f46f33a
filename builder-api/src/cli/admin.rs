//! `kiln admin`: operations on the store itself, run beside a stopped Kiln.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::Config;
use crate::store::{secrets, SecretKey, Store};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Re-encrypt every secret in the store under a new key and make it the key Kiln starts with.
    ///
    /// Requires Kiln to be stopped: it works on the database under the config's `store.data_dir`
    /// directly, and a running Kiln would keep sealing new secrets with the old key. The current
    /// key is found as `kiln serve` finds it (KILN_SECRET_KEY, `store.secret_key_file`, or
    /// `<data_dir>/secret.key`); every secret must open with it or nothing changes. All values
    /// move to the new key in one transaction; then the key file (`store.secret_key_file` or
    /// `<data_dir>/secret.key`) is replaced by the new key. When that file is a mounted Kubernetes
    /// Secret (read-only) or the key comes from KILN_SECRET_KEY, put the new key there yourself
    /// before starting Kiln; the command says so.
    ///
    /// Make the new key with `(umask 077; head -c 32 /dev/urandom | base64 > new.key)`.
    RotateKey {
        /// The new key: base64 of 32 random bytes, in a file readable by its owner only.
        #[arg(long)]
        new_key_file: PathBuf,
        /// TOML config file (the one `kiln serve` runs with).
        #[arg(long, short, env = "KILN_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub async fn run(command: AdminCommand) -> anyhow::Result<u8> {
    match command {
        AdminCommand::RotateKey { new_key_file, config } => rotate_key(new_key_file, config).await,
    }
}

async fn rotate_key(new_key_file: PathBuf, config: Option<PathBuf>) -> anyhow::Result<u8> {
    let config = Config::load(config.as_deref())?;
    let new_bytes = secrets::read_key_file(&new_key_file, true)?;
    let new_key = SecretKey::from_bytes(&new_bytes);
    let data_dir = &config.store.data_dir;
    // On SQLite, a missing file is a wrong data dir, not a store to create (a PostgreSQL database
    // is there or the connection fails).
    if config.store.url.is_none() && !data_dir.join("kiln.db").exists() {
        anyhow::bail!("no store under {} (store.data_dir): nothing to re-encrypt", data_dir.display());
    }
    let old_key = config.store.secret_key().context("cannot read the current secret key")?;
    if old_key.id() == new_key.id() {
        anyhow::bail!("{} holds the current key ({}): give a new one", new_key_file.display(), old_key.id());
    }
    let store = Store::connect(config.store.url.as_deref(), data_dir, old_key.clone())
        .await
        .with_context(|| format!("cannot open the store at {} with the current key {}", config.store.location(), old_key.id()))?;
    let moved = store.reencrypt_secrets(&new_key).await.context("re-encrypting the secrets (nothing was changed)")?;
    drop(store);
    eprintln!("kiln: re-encrypted {moved} secrets from key {} to key {}", old_key.id(), new_key.id());
    match config.store.secret_key_path() {
        None => {
            eprintln!("kiln: the key comes from KILN_SECRET_KEY: set it to the contents of {} before starting Kiln", new_key_file.display());
        }
        Some(path) => {
            let same = std::fs::canonicalize(&path).ok().zip(std::fs::canonicalize(&new_key_file).ok()).is_some_and(|(a, b)| a == b);
            if !same {
                SecretKey::write_file(&path, &new_bytes).with_context(|| {
                    format!(
                        "the secrets are now encrypted under key {}, but the key file could not be replaced: put the contents of {} into {} (or the Kubernetes Secret it is mounted from) before starting Kiln",
                        new_key.id(),
                        new_key_file.display(),
                        path.display()
                    )
                })?;
            }
            eprintln!("kiln: {} now holds key {}; start Kiln as before", path.display(), new_key.id());
        }
    }
    Ok(0)
}
