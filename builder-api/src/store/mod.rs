//! The store: SQLite (WAL) through sqlx. Tenants, tokens (with roles), the audit log, apps,
//! builds, steps, log lines and webhook deliveries. The schema is migrated at start. History
//! lives here, never in the cluster. Secrets (git tokens, webhook secrets) are stored encrypted
//! (`secrets`).

mod apm;
mod apps;
mod audit;
mod builds;
mod deliveries;
mod installation;
mod jvm;
mod logs;
mod migrations;
mod notifications;
mod rollouts;
pub mod secrets;
mod syncs;
mod tenants;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use apm::{ApmApplied, ApmSetting};
pub use apps::{App, AppDeletion, BuildKind, KindSettings, NewApp};
pub use audit::{AuditEntry, NewAuditEntry};
pub use jvm::{JvmSetting, DEFAULT_MAX_RAM_PERCENTAGE};
pub use builds::{Build, BuildState, CommitInfo, NewBuild, Step, StepState};
pub use deliveries::{DeliveryOutcome, NewDelivery};
pub use logs::{LogLine, Stream};
pub use notifications::{redact_url, NewNotificationTarget, NotificationDelivery, NotificationTarget, NotifyEvent, TargetKind};
pub use rollouts::{ImageEvent, NewImageEvent, NewRollout, NewSubscription, Rollout, Subscription};
pub use secrets::{DecryptError, KeyError, SecretKey};
pub use syncs::BuildSync;
pub use tenants::{new_token, token_sha256, ApiToken, Principal, Revoked, Role, Tenant, TenantSettings, TokenLookup};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    /// Reads: several connections (WAL lets readers run beside the writer).
    pool: SqlitePool,
    /// Writes: one connection. Writers wait in sqlx's fair async queue for it instead of racing
    /// for SQLite's write lock, whose busy handler sleeps between retries; under a burst of
    /// builds those sleeps would set the tail latency.
    writer: SqlitePool,
    /// The one task that records webhook deliveries, many per transaction (group commit).
    deliveries: deliveries::DeliveryWriter,
    /// The apps by project and git URL, for webhooks.
    app_directory: Arc<apps::AppDirectory>,
    /// Seals and opens the secret columns (see [`secrets`]).
    key: SecretKey,
    /// Held by every clone; the checkpoint task ends once the last one is gone.
    _alive: Arc<()>,
}

/// How often the WAL is copied into the database file, off the writer's path.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Milliseconds since the epoch: how every time is stored.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens (creating) `kiln.db` under `data_dir` and migrates it, with the key of
    /// [`SecretKey::load`] without a configured key file: `KILN_SECRET_KEY`, else
    /// `<data_dir>/secret.key` (generated at first start).
    pub async fn open(data_dir: &Path) -> Result<Store> {
        let key = SecretKey::load(data_dir, None)?;
        Store::open_with_key(data_dir, key).await
    }

    /// Opens (creating) `kiln.db` under `data_dir`, migrates it, seals the secrets still stored
    /// in plain text (a database from before encryption) and checks that `key` opens every
    /// sealed secret, so a wrong key stops the start with the value it failed on instead of
    /// failing builds and webhooks later.
    pub async fn open_with_key(data_dir: &Path, key: SecretKey) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(data_dir.join("kiln.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode keeps every committed transaction across a process crash
            // (only an OS crash may lose the last ones): a SIGKILLed kiln loses no stored line.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // The writer never checkpoints: SQLite's automatic checkpoint runs inside the commit that
        // fills the WAL past 1000 pages and fsyncs the database file there, stalling that commit
        // (a batch of log lines every few MiB) and the writes queued behind it. A task
        // checkpoints instead, beside the writer (PASSIVE: it waits for nobody).
        let writer_options = options.clone().pragma("wal_autocheckpoint", "0");
        // No ping before handing out a connection (sqlx's default, for network databases): a
        // SQLite connection is a file, never stale, and a ping is one more round trip to the
        // connection's thread for every query, which a busy machine schedules late.
        let writer = SqlitePoolOptions::new().max_connections(1).test_before_acquire(false).connect_with(writer_options).await?;
        migrations::run(&writer).await?;
        secrets::seal_plain_rows(&writer, &key).await?;
        let pool = SqlitePoolOptions::new().max_connections(8).test_before_acquire(false).connect_with(options).await?;
        let deliveries = deliveries::DeliveryWriter::start(writer.clone());
        let alive = Arc::new(());
        tokio::spawn(checkpoint_periodically(pool.clone(), Arc::downgrade(&alive)));
        Ok(Store { pool, writer, deliveries, app_directory: Arc::default(), key, _alive: alive })
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`] while the store is in use.
async fn checkpoint_periodically(pool: SqlitePool, alive: std::sync::Weak<()>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() || pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            tracing::warn!("WAL checkpoint: {e}");
        }
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
