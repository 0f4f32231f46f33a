//! Schema migrations, applied in order at start; `schema_version` records how far a database got.
//!
//! Each backend has its own list. SQLite's holds every step since the first release, since
//! databases of every release must still migrate. PostgreSQL's starts at the schema of version
//! 14, created whole: no PostgreSQL database is older. A change to the schema is a new migration
//! in both lists, with the same version; `schema` reads what a database ended up with, and a test
//! of the suite compares the two backends' tables, columns and indexes, so they cannot drift.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, AnyPool, Connection as _, Row as _};

use super::{Backend, StoreError};

/// SQLite's migrations: version `i + 1` at index `i`.
const MIGRATIONS: &[&str] = &[
    // 1: the foundation.
    r#"
    CREATE TABLE tenants (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    -- tenant_id NULL: an admin token.
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER REFERENCES tenants(id) ON DELETE CASCADE,
        token_sha256 TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE apps (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        git_url TEXT NOT NULL,
        project_path TEXT,
        branch_filter TEXT NOT NULL,
        kind TEXT NOT NULL,
        settings TEXT NOT NULL,
        base_image TEXT,
        image_repository TEXT NOT NULL,
        webhook_secret TEXT NOT NULL,
        git_token TEXT,
        created_at INTEGER NOT NULL,
        UNIQUE (tenant_id, name)
    );
    CREATE INDEX apps_by_project ON apps(project_path);
    CREATE TABLE builds (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        reason TEXT,
        git_ref TEXT,
        commit_sha TEXT NOT NULL,
        trigger TEXT NOT NULL,
        kind TEXT,
        image TEXT,
        image_digest TEXT,
        queued_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX builds_by_state ON builds(state, id);
    CREATE INDEX builds_by_app ON builds(app_id, id);
    CREATE TABLE build_steps (
        build_id INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER,
        started_at INTEGER,
        finished_at INTEGER,
        PRIMARY KEY (build_id, name)
    );
    CREATE TABLE log_lines (
        build_id INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        step TEXT NOT NULL,
        stream TEXT NOT NULL,
        at INTEGER NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (build_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        delivery_key TEXT NOT NULL,
        event TEXT NOT NULL,
        app_id INTEGER REFERENCES apps(id) ON DELETE SET NULL,
        build_id INTEGER REFERENCES builds(id) ON DELETE SET NULL,
        outcome TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        UNIQUE (source, delivery_key)
    );
    "#,
    // 2: step boundaries as structured log entries (stream 'step'): phase, state, duration.
    r#"
    ALTER TABLE log_lines ADD COLUMN meta TEXT;
    "#,
    // 3: rollouts. Deployments that follow an app's images, the image arrivals that trigger
    // them (Harbor webhooks, registry-sync), and every rollout with the image it replaced.
    r#"
    CREATE TABLE subscriptions (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        cluster TEXT NOT NULL,
        namespace TEXT NOT NULL,
        deployment TEXT NOT NULL,
        container TEXT NOT NULL,
        repository TEXT NOT NULL,
        policy TEXT NOT NULL,
        rollback_on_failure INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (cluster, namespace, deployment, container)
    );
    CREATE INDEX subscriptions_by_repository ON subscriptions(repository);
    CREATE TABLE image_events (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        tag TEXT,
        received_at INTEGER NOT NULL,
        handled_at INTEGER
    );
    CREATE INDEX image_events_pending ON image_events(handled_at, id);
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        subscription_id INTEGER NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        cluster TEXT NOT NULL,
        digest TEXT NOT NULL,
        image TEXT NOT NULL,
        previous_image TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        trigger TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX rollouts_by_subscription ON rollouts(subscription_id, id);
    CREATE INDEX rollouts_by_state ON rollouts(state, id);
    "#,
    // 4: replication of each built image to every cluster's registry, one row per cluster.
    r#"
    CREATE TABLE build_syncs (
        build_id INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
        cluster TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        bytes_sent INTEGER NOT NULL DEFAULT 0,
        blobs_sent INTEGER NOT NULL DEFAULT 0,
        blobs_mounted INTEGER NOT NULL DEFAULT 0,
        blobs_skipped INTEGER NOT NULL DEFAULT 0,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (build_id, cluster)
    );
    CREATE INDEX build_syncs_by_state ON build_syncs(state);
    "#,
    // 5: APM — the agent and version in the build's image, and the image before injection (by
    // digest) that a re-injection starts from. `image`/`image_digest` stay the image to deploy.
    r#"
    ALTER TABLE builds ADD COLUMN apm_agent TEXT;
    ALTER TABLE builds ADD COLUMN apm_version TEXT;
    ALTER TABLE builds ADD COLUMN original_image TEXT;
    "#,
    // 6: roles, expiry and revocation of API tokens (tokens made before roles existed were their
    // tenant's only kind, with every right a tenant had: owner), and the audit log. The audit
    // log keeps the tenant's id without a foreign key: history outlives what it mentions.
    r#"
    ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'owner';
    ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
    ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;
    ALTER TABLE api_tokens ADD COLUMN last_used_at INTEGER;
    UPDATE api_tokens SET role = 'admin' WHERE tenant_id IS NULL;
    CREATE INDEX api_tokens_by_tenant ON api_tokens(tenant_id, id);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        token_id INTEGER,
        tenant_id INTEGER,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        client_addr TEXT
    );
    CREATE INDEX audit_log_by_tenant ON audit_log(tenant_id, id);
    "#,
    // 7: per-tenant settings (`store::TenantSettings` as JSON): namespace, registry project and
    // Secret, concurrency cap, CPU/memory, build timeout, cache claim. `{}` is "all from config".
    r#"
    ALTER TABLE tenants ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
    "#,
    // 8: where replication put each blob on each cluster registry (one repository per blob), so
    // that after a restart a copy to another repository mounts a base layer instead of sending it.
    r#"
    CREATE TABLE blob_locations (
        registry TEXT NOT NULL,
        digest TEXT NOT NULL,
        repository TEXT NOT NULL,
        recorded_at INTEGER NOT NULL,
        PRIMARY KEY (registry, digest)
    );
    CREATE INDEX blob_locations_by_age ON blob_locations(recorded_at);
    "#,
    // 9: facts about this installation that outlive a restart, such as its instance id (the
    // `kiln.dev/instance` label on everything it creates in a cluster).
    r#"
    CREATE TABLE installation (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 10: each tenant's own Harbor webhook secret (sealed, see `store::secrets`; NULL: the
    // tenant's project falls back to `harbor.webhook_auth`).
    r#"
    ALTER TABLE tenants ADD COLUMN harbor_webhook_secret TEXT;
    "#,
    // 11: GitLab commit statuses (issue 20): each app's GitLab API token (sealed, see
    // `store::secrets`; NULL: the app posts no status), and on each build why GitLab refused its
    // statuses or why they could not be delivered (NULL: delivered, or nothing to deliver).
    r#"
    ALTER TABLE apps ADD COLUMN gitlab_token TEXT;
    ALTER TABLE builds ADD COLUMN gitlab_status TEXT;
    "#,
    // 12: build notifications (issue 20): targets per app (`app_id`) or per tenant (`app_id`
    // NULL), their URL and signing secret sealed (see `store::secrets`); and what became of each
    // message. Deliveries keep the build's id without a foreign key: history outlives its app.
    r#"
    CREATE TABLE notification_targets (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        app_id INTEGER REFERENCES apps(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        url TEXT NOT NULL,
        secret TEXT,
        events TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX notification_targets_by_owner ON notification_targets(tenant_id, app_id);
    CREATE TABLE notification_deliveries (
        id INTEGER PRIMARY KEY,
        build_id INTEGER NOT NULL,
        event TEXT NOT NULL,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX notification_deliveries_by_build ON notification_deliveries(build_id, id);
    "#,
    // 13: what the web pages show of a build's commit and of who asked for a rollout (issue 21).
    // The head commit's message, author name and web URL as the GitLab push webhook carried
    // them (NULL for builds started without one: manual builds, and builds from before; a
    // retry copies its original's). A rollout's `requested_by` is the actor of a rollback as
    // the audit log names it (`token:7:name`, `admin`); NULL for rollouts an image started.
    r#"
    ALTER TABLE builds ADD COLUMN commit_message TEXT;
    ALTER TABLE builds ADD COLUMN commit_author TEXT;
    ALTER TABLE builds ADD COLUMN commit_url TEXT;
    ALTER TABLE rollouts ADD COLUMN requested_by TEXT;
    -- A build page reads the rollouts of its image, an app page the builds of its releases.
    CREATE INDEX rollouts_by_app_digest ON rollouts(app_id, digest, id);
    CREATE INDEX builds_by_app_digest ON builds(app_id, image_digest);
    "#,
    // 14: apps can be deleted (issue 21) and their history kept. A deleted app stays as a row
    // with `deleted_at` set, because builds, deliveries and rollouts refer to it (`builds.app_id`
    // is ON DELETE CASCADE: deleting the row would delete its builds and their logs). Its name
    // must become free for a new app, so `UNIQUE (tenant_id, name)` becomes a partial unique
    // index over the apps not deleted. SQLite cannot drop a table constraint, so the table is
    // rebuilt the way SQLite documents it (create, copy, drop, rename): `run` turns foreign keys
    // off around the migrations, so dropping the old table deletes nothing that refers to it, and
    // checks every reference before it commits. Renaming the copy to `apps` makes the existing
    // references of builds, subscriptions, rollouts and deliveries point at it again.
    r#"
    CREATE TABLE apps_rebuilt (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        git_url TEXT NOT NULL,
        project_path TEXT,
        branch_filter TEXT NOT NULL,
        kind TEXT NOT NULL,
        settings TEXT NOT NULL,
        base_image TEXT,
        image_repository TEXT NOT NULL,
        webhook_secret TEXT NOT NULL,
        git_token TEXT,
        created_at INTEGER NOT NULL,
        gitlab_token TEXT,
        deleted_at INTEGER
    );
    INSERT INTO apps_rebuilt (id, tenant_id, name, git_url, project_path, branch_filter, kind, settings, base_image,
                              image_repository, webhook_secret, git_token, created_at, gitlab_token)
        SELECT id, tenant_id, name, git_url, project_path, branch_filter, kind, settings, base_image,
               image_repository, webhook_secret, git_token, created_at, gitlab_token FROM apps;
    DROP TABLE apps;
    ALTER TABLE apps_rebuilt RENAME TO apps;
    CREATE INDEX apps_by_project ON apps(project_path);
    CREATE UNIQUE INDEX apps_live_name ON apps(tenant_id, name) WHERE deleted_at IS NULL;
    "#,
    // 15: the JVM options Kiln put into a build's image (JVM sizing).
    r#"
    ALTER TABLE builds ADD COLUMN jvm_options TEXT;
    "#,
    // 16: release strategies (issue 23). A subscription's strategy is JSON (`rollout::strategy`,
    // `{"kind":"rolling"}` being today's behaviour); a rollout copies it when queued, so its
    // record says how it was released even after the subscription changed. A release's steps
    // (traffic switched, canary at 25 %, promoted by whom) are rows of their own, appended as
    // they happen; `decision` is a pending `promote` or `abort` asked through the API and
    // `decided_by` who asked.
    r#"
    ALTER TABLE subscriptions ADD COLUMN strategy TEXT NOT NULL DEFAULT '{"kind":"rolling"}';
    ALTER TABLE rollouts ADD COLUMN strategy TEXT NOT NULL DEFAULT '{"kind":"rolling"}';
    ALTER TABLE rollouts ADD COLUMN decision TEXT;
    ALTER TABLE rollouts ADD COLUMN decided_by TEXT;
    CREATE TABLE rollout_steps (
        rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        step TEXT NOT NULL,
        actor TEXT,
        PRIMARY KEY (rollout_id, seq)
    );
    "#,
    // 17: claims (issue 22). A Running build is claimed by the replica that runs it
    // (`claimed_by`, its replica id) until `claim_until` (ms), which that replica keeps renewing;
    // once it has passed, the replica is taken for dead and another adopts the build.
    r#"
    ALTER TABLE builds ADD COLUMN claimed_by TEXT;
    ALTER TABLE builds ADD COLUMN claim_until INTEGER;
    "#,
];

/// PostgreSQL's migrations, by version. The first creates the schema SQLite has after its
/// migration 14 (integers are BIGINT, ids identity columns); every later one has the number of
/// the SQLite migration it matches.
const POSTGRES_MIGRATIONS: &[(usize, &str)] = &[
    (
        14,
    r#"
    CREATE TABLE tenants (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}',
        harbor_webhook_secret TEXT
    );
    CREATE TABLE api_tokens (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        tenant_id BIGINT REFERENCES tenants(id) ON DELETE CASCADE,
        token_sha256 TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        role TEXT NOT NULL DEFAULT 'owner',
        expires_at BIGINT,
        revoked_at BIGINT,
        last_used_at BIGINT
    );
    CREATE INDEX api_tokens_by_tenant ON api_tokens(tenant_id, id);
    CREATE TABLE apps (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        git_url TEXT NOT NULL,
        project_path TEXT,
        branch_filter TEXT NOT NULL,
        kind TEXT NOT NULL,
        settings TEXT NOT NULL,
        base_image TEXT,
        image_repository TEXT NOT NULL,
        webhook_secret TEXT NOT NULL,
        git_token TEXT,
        created_at BIGINT NOT NULL,
        gitlab_token TEXT,
        deleted_at BIGINT
    );
    CREATE INDEX apps_by_project ON apps(project_path);
    CREATE UNIQUE INDEX apps_live_name ON apps(tenant_id, name) WHERE deleted_at IS NULL;
    CREATE TABLE builds (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        app_id BIGINT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        reason TEXT,
        git_ref TEXT,
        commit_sha TEXT NOT NULL,
        trigger TEXT NOT NULL,
        kind TEXT,
        image TEXT,
        image_digest TEXT,
        queued_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        apm_agent TEXT,
        apm_version TEXT,
        original_image TEXT,
        gitlab_status TEXT,
        commit_message TEXT,
        commit_author TEXT,
        commit_url TEXT
    );
    CREATE INDEX builds_by_state ON builds(state, id);
    CREATE INDEX builds_by_app ON builds(app_id, id);
    CREATE INDEX builds_by_app_digest ON builds(app_id, image_digest);
    CREATE TABLE build_steps (
        build_id BIGINT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
        position BIGINT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        exit_code BIGINT,
        started_at BIGINT,
        finished_at BIGINT,
        PRIMARY KEY (build_id, name)
    );
    CREATE TABLE log_lines (
        build_id BIGINT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        step TEXT NOT NULL,
        stream TEXT NOT NULL,
        at BIGINT NOT NULL,
        line TEXT NOT NULL,
        meta TEXT,
        PRIMARY KEY (build_id, seq)
    );
    CREATE TABLE webhook_deliveries (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        source TEXT NOT NULL,
        delivery_key TEXT NOT NULL,
        event TEXT NOT NULL,
        app_id BIGINT REFERENCES apps(id) ON DELETE SET NULL,
        build_id BIGINT REFERENCES builds(id) ON DELETE SET NULL,
        outcome TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        UNIQUE (source, delivery_key)
    );
    CREATE TABLE subscriptions (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        app_id BIGINT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        cluster TEXT NOT NULL,
        namespace TEXT NOT NULL,
        deployment TEXT NOT NULL,
        container TEXT NOT NULL,
        repository TEXT NOT NULL,
        policy TEXT NOT NULL,
        rollback_on_failure BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        UNIQUE (cluster, namespace, deployment, container)
    );
    CREATE INDEX subscriptions_by_repository ON subscriptions(repository);
    CREATE TABLE image_events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        source TEXT NOT NULL,
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        tag TEXT,
        received_at BIGINT NOT NULL,
        handled_at BIGINT
    );
    CREATE INDEX image_events_pending ON image_events(handled_at, id);
    CREATE TABLE rollouts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        subscription_id BIGINT NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
        app_id BIGINT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        cluster TEXT NOT NULL,
        digest TEXT NOT NULL,
        image TEXT NOT NULL,
        previous_image TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        trigger TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        requested_by TEXT
    );
    CREATE INDEX rollouts_by_subscription ON rollouts(subscription_id, id);
    CREATE INDEX rollouts_by_state ON rollouts(state, id);
    CREATE INDEX rollouts_by_app_digest ON rollouts(app_id, digest, id);
    CREATE TABLE build_syncs (
        build_id BIGINT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
        cluster TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        bytes_sent BIGINT NOT NULL DEFAULT 0,
        blobs_sent BIGINT NOT NULL DEFAULT 0,
        blobs_mounted BIGINT NOT NULL DEFAULT 0,
        blobs_skipped BIGINT NOT NULL DEFAULT 0,
        duration_ms BIGINT NOT NULL DEFAULT 0,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (build_id, cluster)
    );
    CREATE INDEX build_syncs_by_state ON build_syncs(state);
    CREATE TABLE audit_log (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        token_id BIGINT,
        tenant_id BIGINT,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        client_addr TEXT
    );
    CREATE INDEX audit_log_by_tenant ON audit_log(tenant_id, id);
    CREATE TABLE blob_locations (
        registry TEXT NOT NULL,
        digest TEXT NOT NULL,
        repository TEXT NOT NULL,
        recorded_at BIGINT NOT NULL,
        PRIMARY KEY (registry, digest)
    );
    CREATE INDEX blob_locations_by_age ON blob_locations(recorded_at);
    CREATE TABLE installation (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE notification_targets (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        app_id BIGINT REFERENCES apps(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        url TEXT NOT NULL,
        secret TEXT,
        events TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX notification_targets_by_owner ON notification_targets(tenant_id, app_id);
    CREATE TABLE notification_deliveries (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        build_id BIGINT NOT NULL,
        event TEXT NOT NULL,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        at BIGINT NOT NULL
    );
    CREATE INDEX notification_deliveries_by_build ON notification_deliveries(build_id, id);
    "#,
    ),
    // 15: as SQLite's 15.
    (
        15,
        r#"
    ALTER TABLE builds ADD COLUMN jvm_options TEXT;
    "#,
    ),
    // 16: as SQLite's 16.
    (
        16,
        r#"
    ALTER TABLE subscriptions ADD COLUMN strategy TEXT NOT NULL DEFAULT '{"kind":"rolling"}';
    ALTER TABLE rollouts ADD COLUMN strategy TEXT NOT NULL DEFAULT '{"kind":"rolling"}';
    ALTER TABLE rollouts ADD COLUMN decision TEXT;
    ALTER TABLE rollouts ADD COLUMN decided_by TEXT;
    CREATE TABLE rollout_steps (
        rollout_id BIGINT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        at BIGINT NOT NULL,
        step TEXT NOT NULL,
        actor TEXT,
        PRIMARY KEY (rollout_id, seq)
    );
    "#,
    ),
    // 17: as SQLite's 17.
    (
        17,
        r#"
    ALTER TABLE builds ADD COLUMN claimed_by TEXT;
    ALTER TABLE builds ADD COLUMN claim_until BIGINT;
    "#,
    ),
];

/// Applies the migrations a database has not had.
pub async fn run(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    match backend {
        Backend::Sqlite => run_sqlite(pool).await,
        Backend::Postgres => run_postgres(pool).await,
    }
}

/// SQLite: in one transaction, with foreign keys off (SQLite's procedure for rebuilding a table,
/// migration 14: dropping a table that others refer to would otherwise delete their rows through
/// ON DELETE CASCADE). Before the commit every reference is checked, so a migration cannot leave
/// one dangling; the connection's foreign key setting is restored afterwards, whatever happened.
async fn run_sqlite(pool: &AnyPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    let enforced: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut *conn).await?;
    // Outside any transaction: inside one, SQLite ignores this pragma.
    sqlx::query("PRAGMA foreign_keys = OFF").execute(&mut *conn).await?;
    let migrated = migrate_sqlite(&mut conn).await;
    let restored = sqlx::query(if enforced != 0 { "PRAGMA foreign_keys = ON" } else { "PRAGMA foreign_keys = OFF" }).execute(&mut *conn).await;
    migrated?;
    restored?;
    Ok(())
}

async fn migrate_sqlite(conn: &mut AnyConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    let current = current.unwrap_or(0) as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind((i + 1) as i64)
            .execute(&mut *tx)
            .await?;
    }
    let dangling = sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut *tx).await?;
    if let Some(row) = dangling.first() {
        let (table, rowid, parent): (String, Option<i64>, String) = (row.get(0), row.get(1), row.get(2));
        // Dropped with the transaction: the database stays as it was.
        return Err(StoreError::Corrupt(format!(
            "after migrating to schema {}: {} rows refer to rows that do not exist (the first: {table} row {rowid:?} → {parent})",
            MIGRATIONS.len(),
            dangling.len()
        )));
    }
    tx.commit().await?;
    Ok(())
}

/// PostgreSQL: in one transaction (PostgreSQL's DDL is transactional), under an advisory lock
/// so that Kilns starting at once on one database migrate it one after the other.
async fn run_postgres(pool: &AnyPool) -> Result<(), StoreError> {
    /// The advisory lock's key: "kiln" in ASCII.
    const MIGRATION_LOCK: i64 = 0x6b69_6c6e;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(&mut *tx).await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version").fetch_one(&mut *tx).await?;
    let current = current.unwrap_or(0) as usize;
    for (version, sql) in POSTGRES_MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(*version as i64).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A table as the comparison of the backends sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// Column name → its class (`integer`, `text`, `real`, `blob`) and whether it may be NULL.
    pub columns: BTreeMap<String, (String, bool)>,
    /// The indexes made by `CREATE INDEX` (not those behind a primary key or UNIQUE constraint).
    pub indexes: Vec<String>,
}

/// The type class of a column's declared type: what both databases must agree on.
fn type_class(declared: &str) -> String {
    let t = declared.to_ascii_lowercase();
    let class = if t.contains("int") {
        "integer"
    } else if t.contains("char") || t.contains("text") || t.contains("clob") {
        "text"
    } else if t.contains("real") || t.contains("double") || t.contains("float") {
        "real"
    } else if t.contains("blob") || t.contains("bytea") {
        "blob"
    } else {
        return format!("other ({declared})");
    };
    class.into()
}

/// Every table of the database as it is now, by name, read from the catalogue (SQLite's
/// `sqlite_master` and `pragma_table_info`, PostgreSQL's `information_schema` and `pg_indexes`).
pub async fn schema(pool: &AnyPool, backend: Backend) -> Result<BTreeMap<String, TableShape>, StoreError> {
    // (table, column, declared type, nullable) and (table, index).
    let (columns, indexes) = match backend {
        Backend::Sqlite => (
            "SELECT m.name AS table_name, c.name AS column_name, c.type AS data_type, CASE WHEN c.\"notnull\" = 0 AND c.pk = 0 THEN 1 ELSE 0 END AS nullable
             FROM sqlite_master m JOIN pragma_table_info(m.name) c
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
            "SELECT tbl_name AS table_name, name AS index_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
        ),
        Backend::Postgres => (
            "SELECT CAST(table_name AS TEXT) AS table_name, CAST(column_name AS TEXT) AS column_name, CAST(data_type AS TEXT) AS data_type,
                    CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END AS nullable
             FROM information_schema.columns WHERE table_schema = current_schema()",
            "SELECT CAST(tablename AS TEXT) AS table_name, CAST(indexname AS TEXT) AS index_name FROM pg_indexes i
             WHERE schemaname = current_schema()
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.connamespace = CAST(current_schema() AS regnamespace))",
        ),
    };
    let mut tables: BTreeMap<String, TableShape> = BTreeMap::new();
    for row in sqlx::query(columns).fetch_all(pool).await? {
        let table: String = row.try_get("table_name")?;
        let declared: String = row.try_get("data_type")?;
        let nullable: i64 = row.try_get("nullable")?;
        let shape = tables.entry(table).or_insert_with(|| TableShape { columns: BTreeMap::new(), indexes: vec![] });
        shape.columns.insert(row.try_get("column_name")?, (type_class(&declared), nullable != 0));
    }
    for row in sqlx::query(indexes).fetch_all(pool).await? {
        let table: String = row.try_get("table_name")?;
        let shape = tables.entry(table).or_insert_with(|| TableShape { columns: BTreeMap::new(), indexes: vec![] });
        shape.indexes.push(row.try_get("index_name")?);
    }
    for shape in tables.values_mut() {
        shape.indexes.sort();
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use sqlx::any::AnyPoolOptions;

    use super::*;

    /// An in-memory database as a release at schema `version` left it.
    async fn database_at(version: usize) -> AnyPool {
        sqlx::any::install_default_drivers();
        // One connection: an in-memory database lives as long as its connection.
        let pool = AnyPoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        sqlx::raw_sql("CREATE TABLE schema_version (version INTEGER NOT NULL)").execute(&pool).await.unwrap();
        for (i, sql) in MIGRATIONS[..version].iter().enumerate() {
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(i as i64 + 1).execute(&pool).await.unwrap();
        }
        pool
    }

    #[test]
    fn both_backends_end_at_the_same_version() {
        assert_eq!(POSTGRES_MIGRATIONS.last().map(|(v, _)| *v), Some(MIGRATIONS.len()), "a migration added to one backend only");
        assert!(POSTGRES_MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0), "PostgreSQL's versions ascend");
    }

    #[tokio::test]
    async fn tokens_from_before_roles_become_owner_tokens_and_admin_tokens_stay_admin() {
        // The database as the release before roles (schema 5) left it.
        let pool = database_at(5).await;
        sqlx::raw_sql(
            "INSERT INTO tenants (id, name, created_at) VALUES (1, 'team-a', 0);
             INSERT INTO api_tokens (tenant_id, token_sha256, name, created_at) VALUES (1, 'h1', 'initial', 0);
             INSERT INTO api_tokens (tenant_id, token_sha256, name, created_at) VALUES (NULL, 'h2', 'generated admin', 0);",
        )
        .execute(&pool)
        .await
        .unwrap();
        run(&pool, Backend::Sqlite).await.unwrap();
        let rows = sqlx::query("SELECT role, expires_at, revoked_at FROM api_tokens ORDER BY id").fetch_all(&pool).await.unwrap();
        let roles: Vec<(String, Option<i64>, Option<i64>)> = rows
            .iter()
            .map(|r| {
                use sqlx::Row as _;
                (r.get("role"), r.get("expires_at"), r.get("revoked_at"))
            })
            .collect();
        assert_eq!(roles, vec![("owner".into(), None, None), ("admin".into(), None, None)]);
    }

    #[tokio::test]
    async fn tenants_from_before_settings_have_none_and_read_as_all_defaults() {
        let pool = database_at(6).await;
        sqlx::raw_sql("INSERT INTO tenants (id, name, created_at) VALUES (1, 'team-a', 0)").execute(&pool).await.unwrap();
        run(&pool, Backend::Sqlite).await.unwrap();
        let settings: String = sqlx::query_scalar("SELECT settings FROM tenants WHERE id = 1").fetch_one(&pool).await.unwrap();
        let parsed: crate::store::TenantSettings = serde_json::from_str(&settings).unwrap();
        assert_eq!(parsed, crate::store::TenantSettings::default());
    }

    #[tokio::test]
    async fn apps_rebuilt_for_deletion_keep_every_build_and_reference_and_free_only_deleted_names() {
        // Schema 11 with an app, a build of it (and its log), a subscription with a rollout and a
        // delivery: everything that refers to `apps`.
        let pool = database_at(11).await;
        sqlx::raw_sql(
            "INSERT INTO tenants (id, name, created_at) VALUES (1, 'team-a', 0);
             INSERT INTO apps (id, tenant_id, name, git_url, branch_filter, kind, settings, image_repository, webhook_secret, created_at, gitlab_token)
                 VALUES (7, 1, 'hello', 'http://g/h.git', '**', 'go', '{}', 'r/h', 's', 5, 'gl');
             INSERT INTO builds (id, tenant_id, app_id, state, commit_sha, trigger, queued_at) VALUES (3, 1, 7, 'Succeeded', 'c', 'manual', 6);
             INSERT INTO log_lines (build_id, seq, step, stream, at, line) VALUES (3, 1, 'clone', 'stdout', 6, 'fetched');
             INSERT INTO subscriptions (id, app_id, cluster, namespace, deployment, container, repository, policy, rollback_on_failure, created_at)
                 VALUES (4, 7, 'c', 'ns', 'd', 'app', 'r/h', 'manual', 1, 0);
             INSERT INTO rollouts (subscription_id, app_id, cluster, digest, image, state, trigger, created_at) VALUES (4, 7, 'c', 'sha256:x', 'i', 'Complete', 'rollback', 0);
             INSERT INTO webhook_deliveries (source, delivery_key, event, app_id, build_id, outcome, received_at) VALUES ('gitlab', 'k', 'push', 7, 3, 'queued', 0);",
        )
        .execute(&pool)
        .await
        .unwrap();
        run(&pool, Backend::Sqlite).await.unwrap();
        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
        };
        assert_eq!(count("SELECT COUNT(*) FROM builds WHERE app_id = 7").await, 1);
        assert_eq!(count("SELECT COUNT(*) FROM log_lines WHERE build_id = 3").await, 1);
        assert_eq!(count("SELECT COUNT(*) FROM rollouts WHERE app_id = 7").await, 1);
        assert_eq!(count("SELECT COUNT(*) FROM webhook_deliveries WHERE app_id = 7").await, 1);
        assert_eq!(count("SELECT COUNT(*) FROM apps WHERE id = 7 AND gitlab_token = 'gl' AND deleted_at IS NULL").await, 1);
        // Foreign keys are enforced again, and refer to the rebuilt table.
        assert_eq!(sqlx::query_scalar::<_, i64>("PRAGMA foreign_keys").fetch_one(&pool).await.unwrap(), 1);
        let orphan = sqlx::query("INSERT INTO builds (tenant_id, app_id, state, commit_sha, trigger, queued_at) VALUES (1, 99, 'Queued', 'c', 'manual', 0)");
        assert!(orphan.execute(&pool).await.is_err(), "a build of no app was accepted");
        // A second live app of the name is refused; once the first is deleted, the name is free.
        let again = "INSERT INTO apps (tenant_id, name, git_url, branch_filter, kind, settings, image_repository, webhook_secret, created_at)
                     VALUES (1, 'hello', 'http://g/h2.git', '**', 'go', '{}', 'r/h', 's', 9)";
        assert!(sqlx::query(again).execute(&pool).await.is_err(), "two live apps named hello");
        sqlx::query("UPDATE apps SET deleted_at = 10 WHERE id = 7").execute(&pool).await.unwrap();
        sqlx::query(again).execute(&pool).await.unwrap();
        // Both rows stay: the deleted one for its builds' history.
        assert_eq!(count("SELECT COUNT(*) FROM apps WHERE name = 'hello'").await, 2);
    }
}
