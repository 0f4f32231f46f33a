//! The store: SQLite (WAL, the embedded default) or PostgreSQL, through sqlx's `Any` driver.
//! Tenants, tokens (with roles), the audit log, apps, builds, steps, log lines and webhook
//! deliveries. The schema is migrated at start. History lives here, never in the cluster. Secrets
//! (git tokens, webhook secrets) are stored encrypted (`secrets`).
//!
//! One set of queries serves both databases: `$1, $2, …` placeholders (SQLite reads them too) and
//! the SQL both speak (`ON CONFLICT`, `COALESCE`, `CAST(… AS BIGINT)`, `RETURNING`, integers for
//! booleans). Where the two must differ (connection settings, the WAL checkpoint, JSON, the
//! catalogue, the webhook writer's round trips) the code branches on [`Backend`], each time
//! with a comment saying why.

mod apm;
mod apps;
mod audit;
mod builds;
mod claims;
mod deliveries;
mod installation;
mod jvm;
mod leadership;
mod logs;
mod migrations;
mod notifications;
mod rollouts;
pub mod secrets;
mod signals;
mod syncs;
mod tenants;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions as _, Executor as _};

pub use apm::{ApmApplied, ApmSetting};
pub use apps::{App, AppDeletion, BuildKind, KindSettings, NewApp};
pub use audit::{AuditEntry, NewAuditEntry};
pub use jvm::{JvmSetting, DEFAULT_MAX_RAM_PERCENTAGE};
pub use builds::{Build, BuildState, CommitInfo, NewBuild, Step, StepState};
pub use claims::{Claim, Started};
pub use signals::{Signal, Signals};
pub use deliveries::{DeliveryOutcome, NewDelivery};
pub use logs::{LogLine, Stream};
pub use migrations::TableShape;
pub use notifications::{redact_url, NewNotificationTarget, NotificationDelivery, NotificationTarget, NotifyEvent, TargetKind};
pub use rollouts::{ImageEvent, NewImageEvent, NewRollout, NewSubscription, Rollout, RolloutStep, Subscription};
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

/// The database under the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `kiln.db` under the data dir: one process.
    Sqlite,
    /// `store.url` / `KILN_DATABASE_URL` (`postgres://…`).
    Postgres,
}

impl Backend {
    /// The elements of a JSON array handed in as text (the parameter `doc`, or its array `field`)
    /// as rows of the table `alias`, with the columns `value` (the element, JSON: read fields with
    /// `alias.value->>'name'` or `->>0`, as text on PostgreSQL, so cast numbers) and `key` (its
    /// position, to keep the order). The one way to hand a statement a list of rows on both:
    /// SQLite's `json_each`, PostgreSQL's `jsonb_array_elements … WITH ORDINALITY`.
    fn json_rows(self, doc: &str, field: Option<&str>, alias: &str) -> String {
        match (self, field) {
            (Backend::Sqlite, None) => format!("json_each({doc}) {alias}"),
            (Backend::Sqlite, Some(f)) => format!("json_each({doc}, '$.{f}') {alias}"),
            (Backend::Postgres, None) => format!("jsonb_array_elements(CAST({doc} AS JSONB)) WITH ORDINALITY AS {alias}(value, key)"),
            (Backend::Postgres, Some(f)) => {
                format!("jsonb_array_elements(CAST({doc} AS JSONB) -> '{f}') WITH ORDINALITY AS {alias}(value, key)")
            }
        }
    }

    /// A field of the JSON object in a TEXT column (`tenants.settings`): SQLite's `json_extract`
    /// gives the JSON value's own type, PostgreSQL's `->>` text (so compare with text, or cast).
    fn json_field(self, column: &str, field: &str) -> String {
        match self {
            Backend::Sqlite => format!("json_extract({column}, '$.{field}')"),
            Backend::Postgres => format!("(CAST({column} AS JSONB) ->> '{field}')"),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Reads. SQLite: several connections (WAL lets readers run beside the writer). PostgreSQL:
    /// the one pool, the same as `writer`.
    pool: AnyPool,
    /// Writes. SQLite: one connection. Writers wait in sqlx's fair async queue for it instead of
    /// racing for SQLite's write lock, whose busy handler sleeps between retries; under a burst
    /// of builds those sleeps would set the tail latency. PostgreSQL locks rows, not the
    /// database: writes share the one pool.
    writer: AnyPool,
    /// The one task that records webhook deliveries, many per transaction (group commit).
    deliveries: deliveries::DeliveryWriter,
    /// The apps by project and git URL, for webhooks.
    app_directory: Arc<apps::AppDirectory>,
    /// Seals and opens the secret columns (see [`secrets`]).
    key: SecretKey,
    /// PostgreSQL's URL, for the connection that listens to the other replicas (`signals`).
    database_url: Option<Arc<str>>,
    /// Held by every clone; the checkpoint task ends once the last one is gone.
    _alive: Arc<()>,
}

/// How often the WAL is copied into the database file, off the writer's path (SQLite).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Connections to PostgreSQL: every read and write of one Kiln process.
const POSTGRES_CONNECTIONS: u32 = 16;
/// Of those, kept open even when idle.
const POSTGRES_WARM_CONNECTIONS: u32 = 8;

/// Integers as a SQL list (`3,7,12`) to inline in a statement: they are numbers Kiln holds, never
/// text from outside, and a statement with an `IN (…)` of them needs no placeholder per item.
pub(crate) fn sql_int_list(ints: impl IntoIterator<Item = i64>) -> String {
    ints.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// Milliseconds since the epoch: how every time is stored.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`), the only kind
/// `store.url` takes.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A database URL as it may be shown: scheme, host, port and database, never the user's
/// password (nor the query, which may carry one).
pub fn display_database_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{rest}")
}

impl Store {
    /// Opens (creating) `kiln.db` under `data_dir` and migrates it, with the key of
    /// [`SecretKey::load`] without a configured key file: `KILN_SECRET_KEY`, else
    /// `<data_dir>/secret.key` (generated at first start).
    pub async fn open(data_dir: &Path) -> Result<Store> {
        let key = SecretKey::load(data_dir, None)?;
        Store::open_with_key(data_dir, key).await
    }

    /// [`Store::connect`] to SQLite under `data_dir`.
    pub async fn open_with_key(data_dir: &Path, key: SecretKey) -> Result<Store> {
        Store::connect(None, data_dir, key).await
    }

    /// Opens the store — PostgreSQL at `database_url` when given, else (creating) `kiln.db` under
    /// `data_dir` — migrates it, seals the secrets still stored in plain text (a database from
    /// before encryption) and checks that `key` opens every sealed secret, so a wrong key stops
    /// the start with the value it failed on instead of failing builds and webhooks later.
    pub async fn connect(database_url: Option<&str>, data_dir: &Path, key: SecretKey) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, pool, writer) = match database_url {
            Some(url) => {
                if !is_postgres_url(url) {
                    return Err(StoreError::Db(sqlx::Error::Configuration(
                        format!("{} is not a postgres:// URL", display_database_url(url)).into(),
                    )));
                }
                // Kept open from the start: a connection costs PostgreSQL a process, a few ms of
                // CPU to start, and the first webhook burst after a (re)start must not pay it.
                let pool = AnyPoolOptions::new().min_connections(POSTGRES_WARM_CONNECTIONS).max_connections(POSTGRES_CONNECTIONS).connect(url).await?;
                (Backend::Postgres, pool.clone(), pool)
            }
            None => {
                let (pool, writer) = open_sqlite(data_dir).await?;
                (Backend::Sqlite, pool, writer)
            }
        };
        migrations::run(&writer, backend).await?;
        secrets::seal_plain_rows(&writer, backend, &key).await?;
        let deliveries = match database_url {
            // Connections of their own, always the same ones: each plans the group statements once
            // and keeps the catalog it read warm, where taking any of the pool's sixteen in turn
            // paid both again on each (measured with three replicas: a third of the group
            // statements' time in a burst was planning).
            Some(url) => {
                let n = deliveries::GROUPS_IN_FLIGHT_ON_POSTGRES as u32;
                let own = AnyPoolOptions::new().min_connections(n).max_connections(n).connect(url).await?;
                deliveries::DeliveryWriter::start(own, backend)
            }
            None => deliveries::DeliveryWriter::start(writer.clone(), backend),
        };
        let alive = Arc::new(());
        if backend == Backend::Sqlite {
            tokio::spawn(checkpoint_periodically(pool.clone(), Arc::downgrade(&alive)));
        }
        let database_url = database_url.map(Arc::from);
        Ok(Store { backend, pool, writer, deliveries, app_directory: Arc::default(), key, database_url, _alive: alive })
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The tables, columns and indexes the database has now (see [`TableShape`]): what a test
    /// compares between the backends.
    pub async fn schema(&self) -> Result<std::collections::BTreeMap<String, TableShape>> {
        migrations::schema(&self.pool, self.backend).await
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// SQLite's reader pool and one-connection writer pool on `<data_dir>/kiln.db`. The connection
/// settings are PRAGMAs run on every new connection (the `Any` driver takes a URL, not
/// `SqliteConnectOptions`): WAL; synchronous NORMAL, which in WAL mode keeps every committed
/// transaction across a process crash (only an OS crash may lose the last ones), so a SIGKILLed
/// kiln loses no stored line; a 10 s busy timeout; foreign keys enforced.
async fn open_sqlite(data_dir: &Path) -> Result<(AnyPool, AnyPool)> {
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
    let file = std::path::absolute(data_dir.join("kiln.db")).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
    // The URL as sqlx itself writes it for this file (percent-encoding what a path may hold).
    let url = SqliteConnectOptions::new().filename(file).create_if_missing(true).to_url_lossy();
    let options = AnyConnectOptions::from_url(&url)?;
    const SETTINGS: &str = "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";
    // The writer never checkpoints: SQLite's automatic checkpoint runs inside the commit that
    // fills the WAL past 1000 pages and fsyncs the database file there, stalling that commit
    // (a batch of log lines every few MiB) and the writes queued behind it. A task checkpoints
    // instead, beside the writer (PASSIVE: it waits for nobody).
    //
    // No ping before handing out a connection (sqlx's default, for network databases): a
    // SQLite connection is a file, never stale, and a ping is one more round trip to the
    // connection's thread for every query, which a busy machine schedules late.
    let writer = AnyPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(SETTINGS).await?;
                conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await?;
    // The writer's first connection made the file and switched it to WAL before any reader opens.
    writer.acquire().await?;
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .after_connect(|conn, _| Box::pin(async move { conn.execute(SETTINGS).await.map(drop) }))
        .connect_with(options)
        .await?;
    Ok((pool, writer))
}

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`] while the store is in use
/// (SQLite only).
async fn checkpoint_periodically(pool: AnyPool, alive: std::sync::Weak<()>) {
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

/// Text bound to a query, without NUL: PostgreSQL's text cannot hold U+0000 (it refuses the
/// whole statement), and text from outside may carry it — build output, webhook payloads, names
/// in request paths. The store replaces it with U+FFFD on both backends, which then keep and
/// answer the same. Borrowed unless there is a NUL to replace.
pub(crate) struct Text<'a>(std::borrow::Cow<'a, str>);

pub(crate) fn text(s: &str) -> Text<'_> {
    Text(if s.contains('\0') { s.replace('\0', "\u{FFFD}").into() } else { s.into() })
}

pub(crate) fn opt_text(s: Option<&str>) -> Option<Text<'_>> {
    s.map(text)
}

impl sqlx::Type<sqlx::Any> for Text<'_> {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <&str as sqlx::Type<sqlx::Any>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Any> for Text<'q> {
    fn encode_by_ref(&self, buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match &self.0 {
            std::borrow::Cow::Borrowed(s) => <&str as sqlx::Encode<'q, sqlx::Any>>::encode_by_ref(s, buf),
            std::borrow::Cow::Owned(s) => <String as sqlx::Encode<'q, sqlx::Any>>::encode_by_ref(s, buf),
        }
    }
}

/// A JSON document for a query (rows as [`Backend::json_rows`] reads them, settings), with NUL in
/// its strings replaced as [`text`] does: PostgreSQL's JSONB refuses `\u0000` too.
pub(crate) fn json_doc<T: serde::Serialize + ?Sized>(value: &T) -> String {
    fn clean(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(clean),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(value).expect("a JSON document serialises");
    clean(&mut v);
    v.to_string()
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_documents_carry_no_nul() {
        assert!(matches!(text("plain").0, std::borrow::Cow::Borrowed("plain")), "nothing to replace: borrowed");
        assert_eq!(text("a\0b\0").0, "a\u{FFFD}b\u{FFFD}");
        let doc = json_doc(&serde_json::json!({"k": ["x\0y", {"n": "\0"}, 7], "s": "back\\u0000slash"}));
        assert_eq!(doc, r#"{"k":["x�y",{"n":"�"},7],"s":"back\\u0000slash"}"#);
    }

    #[tokio::test]
    async fn a_log_line_with_nul_is_kept_with_a_replacement_character() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let tenant = store.create_tenant("team").await.unwrap();
        let app = store.create_app(&NewApp::sample(tenant.id)).await.unwrap();
        let new = NewBuild { tenant_id: tenant.id, app_id: app.id, git_ref: None, commit: "c".into(), trigger: "manual".into(), commit_info: Default::default() };
        let build = store.create_build(&new).await.unwrap();
        let line = LogLine { seq: 1, step: "compile".into(), stream: Stream::Stdout, at: 0, line: "nul\0byte".into(), meta: None };
        store.append_log(build.id, &[line]).await.unwrap();
        assert_eq!(store.log_after(build.id, 0, 10).await.unwrap()[0].line, "nul\u{FFFD}byte");
        assert!(store.app_by_name(tenant.id, "hello\0").await.unwrap().is_none());
    }
}
