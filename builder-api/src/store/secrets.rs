//! Secrets at rest: every secret column of the store (apps' git token and webhook secret,
//! tenants' Harbor webhook secret) holds `enc:v1:<key id>:<base64 nonce ‖ ciphertext>`, sealed with
//! ChaCha20-Poly1305 under the installation's secret key, so that a copy of the database file (a
//! backup, a leaked volume snapshot) gives away no credential.
//!
//! The key is 32 random bytes, from `KILN_SECRET_KEY` (base64), from `store.secret_key_file` (a
//! mounted Kubernetes Secret in a cluster), or — the embedded default — from `<data_dir>/secret.key`,
//! generated at first start with mode 0600. The key id (the first bytes of the key's SHA-256) is in
//! every sealed value so that a wrong key is named as such instead of failing as "corrupt".

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use sha2::Digest as _;
use sqlx::AnyPool;

use super::Backend;

/// What every sealed value starts with; the version lets a later format sit beside this one.
const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 12;
/// The file name of the embedded default key, beside `kiln.db`.
pub const DEFAULT_KEY_FILE: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("secret key {source_name}: {reason}")]
    Invalid { source_name: String, reason: String },
    #[error("secret key file {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

/// The installation's secret key and the AEAD built from it. Debug never shows the key.
#[derive(Clone)]
pub struct SecretKey {
    cipher: ChaCha20Poly1305,
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A stored value that the key cannot open: names the value (table, column, row), never its text.
#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt {what}: {reason}")]
pub struct DecryptError {
    pub what: String,
    pub reason: String,
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        let cipher = ChaCha20Poly1305::new_from_slice(bytes).expect("32-byte key");
        let id = hex::encode(&sha2::Sha256::digest(bytes)[..4]);
        SecretKey { cipher, id }
    }

    /// A fresh random key.
    pub fn generate() -> ([u8; 32], SecretKey) {
        let bytes: [u8; 32] = rand::random();
        let key = SecretKey::from_bytes(&bytes);
        (bytes, key)
    }

    /// Parses the key as it is written in `KILN_SECRET_KEY` or a key file: base64 (standard, with
    /// or without padding) of exactly 32 bytes, surrounding whitespace ignored. `source_name` says
    /// where it came from, for the error.
    pub fn parse(text: &str, source_name: &str) -> Result<SecretKey, KeyError> {
        Ok(SecretKey::from_bytes(&decode(text, source_name)?))
    }

    /// Reads a key file. Refuses a file that others may read: the key opens every secret in the
    /// database, so a readable key file is as bad as a plain-text database. The group may read
    /// a configured key file (`store.secret_key_file`, `--new-key-file`) because the kubelet makes
    /// a mounted Secret's files readable by the pod's `fsGroup`; the generated default
    /// ([`load`](Self::load)) must be the owner's alone.
    pub fn read_file(path: &Path) -> Result<SecretKey, KeyError> {
        Ok(SecretKey::from_bytes(&read_key_file(path, true)?))
    }

    /// Writes `bytes` (base64) to `path` with mode 0600, replacing it atomically: written beside
    /// it first, then renamed, so a crash leaves either the old key or the new one.
    pub fn write_file(path: &Path, bytes: &[u8; 32]) -> Result<(), KeyError> {
        let io = |error| KeyError::Io { path: path.to_path_buf(), error };
        let tmp = path.with_extension("key.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(base64::engine::general_purpose::STANDARD.encode(bytes).as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The key of an installation: `KILN_SECRET_KEY`, else `key_file`, else `<data_dir>/secret.key`,
    /// generated when it does not exist yet (the embedded default).
    pub fn load(data_dir: &Path, key_file: Option<&Path>) -> Result<SecretKey, KeyError> {
        if let Ok(text) = std::env::var("KILN_SECRET_KEY") {
            return SecretKey::parse(&text, "KILN_SECRET_KEY");
        }
        if let Some(path) = key_file {
            return SecretKey::read_file(path);
        }
        let path = data_dir.join(DEFAULT_KEY_FILE);
        if !path.exists() {
            std::fs::create_dir_all(data_dir).map_err(|error| KeyError::Io { path: data_dir.to_path_buf(), error })?;
            let (bytes, _) = SecretKey::generate();
            SecretKey::write_file(&path, &bytes)?;
            tracing::info!("generated the secret key {}", path.display());
        }
        Ok(SecretKey::from_bytes(&read_key_file(&path, false)?))
    }

    /// The short id written into every sealed value.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plain` with a fresh random nonce. `field` (`apps.git_token`, …) is the associated
    /// data: a sealed value copied into another column does not open there.
    pub fn seal(&self, field: &str, plain: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(&nonce.into(), Payload { msg: plain.as_bytes(), aad: field.as_bytes() })
            .expect("ChaCha20-Poly1305 encrypts any length Kiln stores");
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", self.id, base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw))
    }

    /// Opens a value sealed by [`seal`](Self::seal). `what` names the value for the error
    /// (`apps.git_token of app 7`).
    pub fn open(&self, field: &str, stored: &str, what: &dyn Fn() -> String) -> Result<String, DecryptError> {
        let fail = |reason: String| DecryptError { what: what(), reason };
        let rest = stored.strip_prefix(PREFIX).ok_or_else(|| fail("not an encrypted value".into()))?;
        let (id, data) = rest.split_once(':').ok_or_else(|| fail("malformed encrypted value".into()))?;
        if id != self.id {
            return Err(fail(format!("it was encrypted under key {id}, but the secret key is {}", self.id)));
        }
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(data)
            .map_err(|_| fail("malformed encrypted value".into()))?;
        if raw.len() < NONCE_LEN {
            return Err(fail("malformed encrypted value".into()));
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let plain = self
            .cipher
            .decrypt(&nonce.into(), Payload { msg: sealed, aad: field.as_bytes() })
            .map_err(|_| fail(format!("authentication failed under key {} (wrong key or altered value)", self.id)))?;
        String::from_utf8(plain).map_err(|_| fail("not UTF-8".into()))
    }
}

/// The 32 bytes written in base64 in `text`.
fn decode(text: &str, source_name: &str) -> Result<[u8; 32], KeyError> {
    let invalid = |reason: String| KeyError::Invalid { source_name: source_name.into(), reason };
    let text = text.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .map_err(|_| invalid("is not base64 (generate a key with `head -c 32 /dev/urandom | base64`)".into()))?;
    bytes.try_into().map_err(|b: Vec<u8>| invalid(format!("is {} bytes, must be 32", b.len())))
}

/// The key bytes of a key file, refused when others may read it, and when the group may unless
/// `group_may_read` (see [`SecretKey::read_file`]).
pub fn read_key_file(path: &Path, group_may_read: bool) -> Result<[u8; 32], KeyError> {
    let io = |error| KeyError::Io { path: path.to_path_buf(), error };
    let meta = std::fs::metadata(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        let forbidden = if group_may_read { 0o007 | 0o020 } else { 0o077 };
        if mode & forbidden != 0 {
            let rule = if group_may_read { "its owner (and group) only (chmod 600)" } else { "its owner only (chmod 600)" };
            return Err(KeyError::Invalid { source_name: path.display().to_string(), reason: format!("has mode {mode:o}; it must be readable by {rule}") });
        }
    }
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(io)?;
    decode(&text, &path.display().to_string())
}

/// True when a stored value is sealed (as opposed to plain text from before encryption).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// Every secret column of the store: (table, column, what a row is called in an error). A new
/// secret column goes here, so that it is sealed, checked at start and re-keyed by `rotate-key`.
pub const SECRET_COLUMNS: &[(&str, &str, &str)] = &[
    ("apps", "webhook_secret", "app"),
    ("apps", "git_token", "app"),
    ("apps", "gitlab_token", "app"),
    ("tenants", "harbor_webhook_secret", "tenant"),
    ("notification_targets", "url", "notification target"),
    ("notification_targets", "secret", "notification target"),
];

/// The associated data of a column's sealed values.
pub fn field(table: &str, column: &str) -> String {
    format!("{table}.{column}")
}

/// In one transaction: seals every secret still in plain text (rows from before encryption) and
/// opens every sealed one, so that a wrong key fails the start naming the value, not at the
/// first build. On SQLite, plain text overwritten here is zeroed in freed pages (`secure_delete`)
/// and the WAL is truncated afterwards, so the old text does not linger in the files.
/// (PostgreSQL came after encryption: no row there was ever written in plain text.)
pub(super) async fn seal_plain_rows(pool: &AnyPool, backend: Backend, key: &SecretKey) -> Result<(), super::StoreError> {
    let sealed = rewrite_all(pool, backend, key, None).await?;
    if sealed > 0 {
        tracing::info!("encrypted {sealed} secrets stored in plain text under key {}", key.id());
        truncate_wal(pool, backend).await?;
    }
    Ok(())
}

/// SQLite: copies the WAL into the database and empties it, so rewritten plain text is gone
/// from it. PostgreSQL has no such file of one database's own: old row versions stay until
/// VACUUM reuses their space.
async fn truncate_wal(pool: &AnyPool, backend: Backend) -> Result<(), super::StoreError> {
    if backend == Backend::Sqlite {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await?;
    }
    Ok(())
}

/// Opens every secret with `key` and, when `new` is given, seals it again under `new`; without,
/// seals only the plain-text ones. One transaction: either every value moves to the new key or
/// none does. Returns how many values were written.
pub(super) async fn rewrite_all(pool: &AnyPool, backend: Backend, key: &SecretKey, new: Option<&SecretKey>) -> Result<usize, super::StoreError> {
    use sqlx::Row as _;
    let mut conn = pool.acquire().await?;
    // SQLite only: zero what the rewrite frees (PostgreSQL has no such setting).
    let sqlite = backend == Backend::Sqlite;
    if sqlite {
        sqlx::query("PRAGMA secure_delete = ON").execute(&mut *conn).await?;
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let mut written = 0;
    for (table, column, row_name) in SECRET_COLUMNS {
        let field = field(table, column);
        let rows = sqlx::query(&format!("SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL")).fetch_all(&mut *tx).await?;
        for row in rows {
            let id: i64 = row.get("id");
            let stored: String = row.get(*column);
            let what = || format!("{field} of {row_name} {id}");
            let plain = if is_sealed(&stored) {
                let plain = key.open(&field, &stored, &what)?;
                if new.is_none() {
                    continue;
                }
                plain
            } else {
                stored
            };
            let sealed = new.unwrap_or(key).seal(&field, &plain);
            sqlx::query(&format!("UPDATE {table} SET {column} = $1 WHERE id = $2")).bind(sealed).bind(id).execute(&mut *tx).await?;
            written += 1;
        }
    }
    tx.commit().await?;
    // Only these rewrites need the zeroing; the writer's everyday deletes (old log lines) do not
    // pay for it.
    if sqlite {
        sqlx::query("PRAGMA secure_delete = OFF").execute(&mut *conn).await?;
    }
    Ok(written)
}

const HARBOR: &str = "tenants.harbor_webhook_secret";

impl super::Store {
    /// Sets (Some) or removes (None) a tenant's own Harbor webhook secret, sealed. False: no
    /// such tenant.
    pub async fn set_harbor_webhook_secret(&self, tenant_id: i64, secret: Option<&str>) -> Result<bool, super::StoreError> {
        let sealed = secret.map(|s| self.key.seal(HARBOR, s));
        let n = sqlx::query("UPDATE tenants SET harbor_webhook_secret = $1 WHERE id = $2")
            .bind(sealed)
            .bind(tenant_id)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// The Harbor webhook secrets a delivery for `project` may carry: `Some(tenant, secret)` for
    /// the tenant whose `registry_project` it is (secret None when that tenant has none of its
    /// own), None when no tenant has this project.
    pub async fn harbor_webhook_secret_for_project(&self, project: &str) -> Result<Option<(i64, Option<String>)>, super::StoreError> {
        use sqlx::Row as _;
        let sql = format!("SELECT id, harbor_webhook_secret FROM tenants WHERE {} = $1", self.backend.json_field("settings", "registry_project"));
        let row = sqlx::query(&sql)
            .bind(super::text(project))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row.get("id");
        let stored: Option<String> = row.get("harbor_webhook_secret");
        let secret = stored.map(|s| self.key.open(HARBOR, &s, &|| format!("{HARBOR} of tenant {id}"))).transpose()?;
        Ok(Some((id, secret)))
    }

    /// A tenant's own Harbor webhook secret, opened.
    pub async fn harbor_webhook_secret(&self, tenant_id: i64) -> Result<Option<String>, super::StoreError> {
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT harbor_webhook_secret FROM tenants WHERE id = $1").bind(tenant_id).fetch_optional(&self.pool).await?;
        stored.flatten().map(|s| Ok(self.key.open(HARBOR, &s, &|| format!("{HARBOR} of tenant {tenant_id}"))?)).transpose()
    }

    /// Whether any tenant has its own Harbor webhook secret: one indexed lookup, nothing opened.
    pub async fn has_harbor_webhook_secrets(&self) -> Result<bool, super::StoreError> {
        let any: i64 = sqlx::query_scalar("SELECT CASE WHEN EXISTS (SELECT 1 FROM tenants WHERE harbor_webhook_secret IS NOT NULL) THEN 1 ELSE 0 END")
            .fetch_one(&self.pool)
            .await?;
        Ok(any != 0)
    }

    /// Every tenant's own Harbor webhook secret: a delivery naming no project (a replication
    /// event, which starts nothing) is accepted with any of them.
    pub async fn harbor_webhook_secrets(&self) -> Result<Vec<String>, super::StoreError> {
        use sqlx::Row as _;
        let rows = sqlx::query("SELECT id, harbor_webhook_secret FROM tenants WHERE harbor_webhook_secret IS NOT NULL").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.get("id");
                let stored: String = row.get("harbor_webhook_secret");
                Ok(self.key.open(HARBOR, &stored, &|| format!("{HARBOR} of tenant {id}"))?)
            })
            .collect()
    }

    /// Re-encrypts every secret under `new` in one transaction (`kiln admin rotate-key`).
    /// Returns how many values moved. The store keeps using its old key: whoever rotates opens
    /// the store again with the new one.
    pub async fn reencrypt_secrets(&self, new: &SecretKey) -> Result<usize, super::StoreError> {
        let n = rewrite_all(&self.writer, self.backend, &self.key, Some(new)).await?;
        truncate_wal(&self.writer, self.backend).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_their_key_only_and_in_their_field_only() {
        let (_, key) = SecretKey::generate();
        let (_, other) = SecretKey::generate();
        let what = || "apps.git_token of app 1".to_string();
        let a = key.seal("apps.git_token", "glpat-secret");
        let b = key.seal("apps.git_token", "glpat-secret");
        assert!(is_sealed(&a) && a.starts_with(&format!("enc:v1:{}:", key.id())));
        assert_ne!(a, b, "a fresh nonce per value");
        assert!(!a.contains("glpat-secret"));
        assert_eq!(key.open("apps.git_token", &a, &what).unwrap(), "glpat-secret");
        let wrong = other.open("apps.git_token", &a, &what).unwrap_err().to_string();
        assert!(wrong.contains("apps.git_token of app 1") && wrong.contains(key.id()) && !wrong.contains("glpat"), "{wrong}");
        assert!(key.open("apps.webhook_secret", &a, &what).is_err());
    }

    #[test]
    fn key_files_must_be_private_and_32_bytes() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let generated = SecretKey::load(dir.path(), None).unwrap();
        let path = dir.path().join(DEFAULT_KEY_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(SecretKey::load(dir.path(), None).unwrap().id(), generated.id(), "generated once");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SecretKey::load(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        let short = dir.path().join("short.key");
        std::fs::write(&short, base64::engine::general_purpose::STANDARD.encode([1u8; 16])).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = SecretKey::read_file(&short).unwrap_err().to_string();
        assert!(err.contains("16 bytes, must be 32"), "{err}");
        // A configured file may be group-readable (a mounted Secret under fsGroup), never
        // world-readable.
        let mounted = dir.path().join("mounted.key");
        std::fs::write(&mounted, base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
        std::fs::set_permissions(&mounted, std::fs::Permissions::from_mode(0o440)).unwrap();
        SecretKey::read_file(&mounted).unwrap();
        std::fs::set_permissions(&mounted, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SecretKey::read_file(&mounted).unwrap_err().to_string().contains("chmod 600"));
    }

    #[tokio::test]
    async fn plain_rows_from_before_encryption_are_sealed_at_start_and_a_wrong_key_names_the_value() {
        use crate::store::{NewApp, Store};
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = SecretKey::generate();
        let store = Store::open_with_key(dir.path(), key.clone()).await.unwrap();
        let tenant = store.create_tenant("team").await.unwrap();
        let app = NewApp {
            webhook_secret: "plain-webhook-secret".into(),
            git_token: Some("plain-git-token".into()),
            ..NewApp::sample(tenant.id)
        };
        let app = store.create_app(&app).await.unwrap();
        // The rows as a release before encryption wrote them.
        sqlx::query("UPDATE apps SET webhook_secret = 'plain-webhook-secret', git_token = 'plain-git-token'").execute(&store.writer).await.unwrap();
        sqlx::query("UPDATE tenants SET harbor_webhook_secret = 'plain-harbor-secret'").execute(&store.writer).await.unwrap();
        drop(store);

        let store = Store::open_with_key(dir.path(), key.clone()).await.unwrap();
        let row = sqlx::query("SELECT a.webhook_secret, a.git_token, t.harbor_webhook_secret FROM apps a JOIN tenants t ON t.id = a.tenant_id")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let stored: [String; 3] = ["webhook_secret", "git_token", "harbor_webhook_secret"].map(|column| sqlx::Row::get(&row, column));
        for value in &stored {
            assert!(is_sealed(value) && !value.contains("plain"), "{value}");
        }
        let read = store.app(app.id).await.unwrap().unwrap();
        assert_eq!((read.webhook_secret.as_str(), read.git_token.as_deref()), ("plain-webhook-secret", Some("plain-git-token")));
        assert_eq!(store.harbor_webhook_secret(tenant.id).await.unwrap().as_deref(), Some("plain-harbor-secret"));
        drop(store);

        let (_, wrong) = SecretKey::generate();
        let err = Store::open_with_key(dir.path(), wrong).await.err().expect("a wrong key stops the open").to_string();
        assert!(err.contains(&format!("apps.webhook_secret of app {}", app.id)) && err.contains(key.id()), "{err}");
        assert!(!err.contains("plain-"), "{err}");
    }
}
