//! Webhook deliveries: every event is recorded before it is answered. The unique
//! (source, delivery_key) row is what makes a redelivered event a no-op.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::rollouts::NewImageEvent;
use super::{json_doc, now_ms, text, Backend, NewBuild, Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// `gitlab`, `harbor`, …
    pub source: &'static str,
    /// `Idempotency-Key`, `X-Gitlab-Event-UUID`, or a hash of the body.
    pub key: String,
    pub event: String,
    pub app_id: Option<i64>,
    /// Where it came from (the sender's address), for the audit log.
    pub client_addr: Option<String>,
}

/// What became of a delivery, stored as JSON so a duplicate can be answered like the original.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    pub build_ids: Vec<i64>,
    /// Why nothing was built, for ignored events.
    pub ignored: Option<String>,
}

/// One delivery waiting for the writer.
struct Pending {
    delivery: NewDelivery,
    builds: Vec<NewBuild>,
    image_events: Vec<NewImageEvent>,
    ignored: Option<String>,
    reply: oneshot::Sender<Result<(DeliveryOutcome, bool)>>,
}

/// Records deliveries in groups: whatever arrived while the last transaction committed goes into
/// the next one. A burst of hooks becomes a handful of commits instead of a writer per hook
/// queueing for SQLite's single write lock (whose busy handler sleeps between retries, which
/// would set the tail latency). On PostgreSQL two groups are written at once, on two
/// connections kept for them ([`GROUPS_IN_FLIGHT_ON_POSTGRES`]).
#[derive(Clone)]
pub(super) struct DeliveryWriter {
    tx: mpsc::Sender<Pending>,
}

/// Most deliveries per transaction: bounds the latency one commit adds to the first of them.
const GROUP: usize = 512;

impl DeliveryWriter {
    pub(super) fn start(pool: AnyPool, backend: Backend) -> DeliveryWriter {
        let (tx, mut rx) = mpsc::channel::<Pending>(1024);
        let in_flight = Arc::new(Semaphore::new(match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => GROUPS_IN_FLIGHT_ON_POSTGRES,
        }));
        tokio::spawn(async move {
            loop {
                // A slot first, then the group: while every slot is busy, deliveries gather in
                // the channel and the next group takes them all.
                let slot = in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
                let mut group = Vec::with_capacity(GROUP);
                if rx.recv_many(&mut group, GROUP).await == 0 {
                    return;
                }
                let pool = pool.clone();
                tokio::spawn(async move {
                    write_group(&pool, backend, group).await;
                    drop(slot);
                });
            }
        });
        DeliveryWriter { tx }
    }
}

/// Groups written at once on PostgreSQL, each on a connection of its own. A group's transaction
/// spends much of its time on round trips; the next group need not wait for them. (Two groups
/// with a key in common are ordered by the key's lock, as two replicas' are.) SQLite has one
/// writer connection: one group at a time.
pub(super) const GROUPS_IN_FLIGHT_ON_POSTGRES: usize = 2;

/// Records `group` and answers each of its deliveries.
async fn write_group(pool: &AnyPool, backend: Backend, mut group: Vec<Pending>) {
    match record_group(pool, backend, &group).await {
        Ok(outcomes) => {
            for (p, outcome) in group.drain(..).zip(outcomes) {
                let _ = p.reply.send(Ok(outcome));
            }
        }
        // The group's transaction failed as a whole: record each on its own, so one bad
        // delivery fails only itself.
        Err(_) => {
            for p in group.drain(..) {
                let one = record_group(pool, backend, std::slice::from_ref(&p)).await.map(|mut v| v.remove(0));
                let _ = p.reply.send(one);
            }
        }
    }
}

/// Records a group of deliveries, their builds, image events and audit rows in one transaction,
/// whatever the group's size, with a fixed number of statements: one finds the keys recorded
/// before, one inserts the new deliveries' builds, three insert the rest. Each statement takes
/// the group's rows as JSON (read with [`Backend::json_rows`]): one document on SQLite, an array
/// per parameter on PostgreSQL.
///
/// On SQLite these are two round trips to the connection's thread: one command begins, reads
/// and inserts the builds; the other inserts the rest and commits. The round trips are what
/// costs: each one waits for the connection's thread to be scheduled, which a machine busy with a
/// burst of webhooks does late; sqlx's own BEGIN and COMMIT would be two more, so the commands
/// carry them. PostgreSQL takes one statement per command when it has parameters: there it is
/// four round trips (BEGIN with the key locks, the reads and builds, the rest, COMMIT).
///
/// On SQLite one group at a time holds the one writer connection from BEGIN to COMMIT, so
/// "recorded before" cannot change inside the transaction. On PostgreSQL other groups write at
/// the same time (this replica's second one, other replicas'): there the transaction first takes
/// an advisory lock per key, so a key's second delivery waits for the first and finds it
/// recorded.
async fn record_group(pool: &AnyPool, backend: Backend, group: &[Pending]) -> Result<Vec<(DeliveryOutcome, bool)>> {
    // The first of each key in this group; a repeat within the group gets the first's outcome.
    let mut first_of_key: HashMap<(&str, &str), usize> = HashMap::new();
    let mut candidates: Vec<usize> = vec![];
    for (i, p) in group.iter().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(e) = first_of_key.entry((p.delivery.source, p.delivery.key.as_str())) {
            e.insert(i);
            candidates.push(i);
        }
    }
    let mut conn = pool.acquire().await?;
    let recorded = record_in_transaction(&mut conn, backend, group, &candidates).await;
    if recorded.is_err() {
        // The transaction is the connection's, not sqlx's: end it here, or the next user of the
        // writer connection would find it open. (An error before BEGIN makes this a no-op error.)
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    let (earlier, mut outcomes) = recorded?;

    // The repeats: the outcome of the delivery recorded first.
    for (i, p) in group.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        let key = (p.delivery.source, p.delivery.key.as_str());
        let outcome = match first_of_key.get(&key).and_then(|first| outcomes[*first].as_ref()) {
            Some((first, _)) => first.clone(),
            None => earlier
                .get(&(key.0.to_string(), key.1.to_string()))
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or(DeliveryOutcome { build_ids: vec![], ignored: Some("recorded earlier".into()) }),
        };
        outcomes[i] = Some((outcome, false));
    }
    Ok(outcomes.into_iter().map(|o| o.expect("every delivery has an outcome")).collect())
}

/// Keys recorded before (with their outcome) and the outcome of each new delivery, by position.
type Recorded = (HashMap<(String, String), String>, Vec<Option<(DeliveryOutcome, bool)>>);

/// The statements of [`record_group`] for its `candidates` (the first delivery of each key): a
/// BEGIN, the reads and the builds, then the other rows and a COMMIT. On an error the
/// transaction may be left open for the caller to roll back.
/// The advisory lock of a delivery key (PostgreSQL): the first 8 bytes of SHA-256 of
/// `source key`, the same on every replica of one release. (Replicas of two releases during an
/// upgrade may hash differently; the unique key of `webhook_deliveries` still refuses a second
/// record, and the sender's retry then reads the first.)
fn delivery_lock_key(source: &str, key: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new().chain_update(source.as_bytes()).chain_update(b" ").chain_update(key.as_bytes()).finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

async fn record_in_transaction(conn: &mut AnyConnection, backend: Backend, group: &[Pending], candidates: &[usize]) -> Result<Recorded> {
    let now = now_ms();
    let keys: Vec<Value> = candidates.iter().map(|i| json!([group[*i].delivery.source, group[*i].delivery.key])).collect();
    // Every candidate's builds, in candidate order; those of a key recorded before are skipped
    // by the insert itself.
    let builds: Vec<Value> = candidates
        .iter()
        .flat_map(|i| group[*i].builds.iter().map(move |b| (&group[*i].delivery, b)))
        .map(|(d, b)| {
            json!({"source": d.source, "key": d.key, "tenant_id": b.tenant_id, "app_id": b.app_id, "git_ref": b.git_ref,
                   "commit": b.commit, "trigger": b.trigger, "commit_message": b.commit_info.message,
                   "commit_author": b.commit_info.author, "commit_url": b.commit_info.url})
        })
        .collect();

    // Every statement reads the time $2 and JSON arrays. On SQLite they are fields of one
    // document $1. PostgreSQL parses a JSONB document whole wherever it is cast, so there each
    // array is a parameter of its own ($1, $3, …): a group's document is parsed once, not once per
    // array read from it.
    let array = |field: &str, pg_param: &str| match backend {
        Backend::Sqlite => backend.json_rows("$1", Some(field), "j"),
        Backend::Postgres => backend.json_rows(pg_param, None, "j"),
    };
    let earlier_keys = format!(
        "SELECT d.source, d.delivery_key, d.outcome FROM {}
         JOIN webhook_deliveries d ON d.source = j.value->>0 AND d.delivery_key = j.value->>1",
        array("keys", "$1")
    );
    let insert_builds = format!(
        "INSERT INTO builds (tenant_id, app_id, state, git_ref, commit_sha, trigger, queued_at, commit_message, commit_author, commit_url)
         SELECT CAST(j.value->>'tenant_id' AS BIGINT), CAST(j.value->>'app_id' AS BIGINT), 'Queued', j.value->>'git_ref', j.value->>'commit',
                j.value->>'trigger', $2, j.value->>'commit_message', j.value->>'commit_author', j.value->>'commit_url'
         FROM {}
         WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                           WHERE d.source = j.value->>'source' AND d.delivery_key = j.value->>'key')
         ORDER BY j.key RETURNING id",
        array("builds", "$3")
    );
    let mut earlier: HashMap<(String, String), String> = HashMap::new();
    let mut build_ids: Vec<i64> = vec![];
    match backend {
        Backend::Sqlite => {
            // Rows of three columns answer the SELECT, rows of one the INSERT.
            let command = format!("BEGIN IMMEDIATE; {earlier_keys}; {insert_builds}");
            let input = json_doc(&json!({"keys": keys, "builds": builds}));
            for row in sqlx::query(&command).bind(&input).bind(now).fetch_all(&mut *conn).await? {
                if row.len() == 3 {
                    earlier.insert((row.get("source"), row.get("delivery_key")), row.get("outcome"));
                } else {
                    build_ids.push(row.get("id"));
                }
            }
        }
        Backend::Postgres => {
            // Several Kilns may write deliveries to one database: each key is locked for the
            // transaction first (in one order, so two groups cannot deadlock), so that a
            // delivery of the same key on another replica waits for this one's COMMIT, then
            // reads it as recorded before — one build, and both answers name it. The lock keys
            // are hashed here, so the text sent is all numbers of Kiln's own: BEGIN and the
            // locks go in one round trip (the simple query protocol takes several statements).
            let mut lock_keys: Vec<i64> = candidates.iter().map(|i| delivery_lock_key(group[*i].delivery.source, &group[*i].delivery.key)).collect();
            lock_keys.sort_unstable();
            lock_keys.dedup();
            let list = super::sql_int_list(lock_keys);
            // Generic plans: a custom plan would be made for every group, and making it folds
            // `CAST($1 AS JSONB)` — parsing the whole group's document once per use of it in
            // the statement (measured: 4 ms of planning per group of 100, more than running it).
            // A generic plan is made once per connection and parses the document as it runs.
            let begin = format!(
                "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
                 SELECT 1 FROM (SELECT pg_advisory_xact_lock(k) FROM unnest(ARRAY[{list}]::BIGINT[]) AS u(k)) locked"
            );
            sqlx::Executor::execute(&mut *conn, begin.as_str()).await?;
            // The keys recorded before and the new builds in one statement: it starts after the
            // locks are held, so its snapshot has every earlier delivery of these keys.
            let both = format!(
                "WITH earlier AS ({earlier_keys}), inserted AS ({insert_builds})
                 SELECT 'earlier' AS what, e.source, e.delivery_key, e.outcome, CAST(NULL AS BIGINT) AS id FROM earlier e
                 UNION ALL SELECT 'inserted', CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), i.id FROM inserted i"
            );
            for row in sqlx::query(&both).bind(json_doc(&keys)).bind(now).bind(json_doc(&builds)).fetch_all(&mut *conn).await? {
                if row.get::<String, _>("what") == "earlier" {
                    earlier.insert((row.get("source"), row.get("delivery_key")), row.get("outcome"));
                } else {
                    build_ids.push(row.get("id"));
                }
            }
        }
    }
    // Ids ascend in insertion order (one writer, one statement).
    build_ids.sort_unstable();
    let fresh: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|i| !earlier.contains_key(&(group[*i].delivery.source.to_string(), group[*i].delivery.key.clone())))
        .collect();
    let expected: usize = fresh.iter().map(|i| group[*i].builds.len()).sum();
    if build_ids.len() != expected {
        return Err(StoreError::Corrupt(format!("{} builds inserted for {expected} new ones", build_ids.len())));
    }

    // What the other replicas' schedulers are told (PostgreSQL): each new build and its tenant.
    let queued: Vec<(i64, i64)> = fresh.iter().flat_map(|i| group[*i].builds.iter()).zip(&build_ids).map(|(b, id)| (*id, b.tenant_id)).collect();

    // Each build a webhook started is in the audit log, like one an API token triggered.
    let audit: Vec<Value> = fresh
        .iter()
        .flat_map(|i| group[*i].builds.iter().map(move |b| (&group[*i].delivery, b)))
        .zip(&build_ids)
        .map(|((d, b), id)| {
            json!({"actor": format!("webhook:{}", d.source), "tenant_id": b.tenant_id, "target": format!("build/{id}"), "client_addr": d.client_addr})
        })
        .collect();
    let events: Vec<&NewImageEvent> = fresh.iter().flat_map(|i| &group[*i].image_events).collect();
    let mut outcomes: Vec<Option<(DeliveryOutcome, bool)>> = vec![None; group.len()];
    let mut deliveries = Vec::with_capacity(fresh.len());
    let mut build_ids = build_ids.into_iter();
    for i in &fresh {
        let p = &group[*i];
        let ids: Vec<i64> = build_ids.by_ref().take(p.builds.len()).collect();
        let outcome = DeliveryOutcome { build_ids: ids, ignored: p.ignored.clone() };
        deliveries.push(json!({
            "source": p.delivery.source, "key": p.delivery.key, "event": p.delivery.event, "app_id": p.delivery.app_id,
            "build_id": outcome.build_ids.first(), "outcome": serde_json::to_string(&outcome).expect("outcome serialises"),
        }));
        outcomes[*i] = Some((outcome, true));
    }
    let inserts = [
        format!(
            "INSERT INTO audit_log (at, actor, tenant_id, action, target, client_addr)
             SELECT $2, j.value->>'actor', CAST(j.value->>'tenant_id' AS BIGINT), 'build.trigger', j.value->>'target', j.value->>'client_addr'
             FROM {} ORDER BY j.key",
            array("audit", "$1")
        ),
        format!(
            "INSERT INTO image_events (source, registry, repository, digest, tag, received_at)
             SELECT j.value->>'source', j.value->>'registry', j.value->>'repository', j.value->>'digest', j.value->>'tag', $2
             FROM {} ORDER BY j.key",
            array("events", "$3")
        ),
        format!(
            "INSERT INTO webhook_deliveries (source, delivery_key, event, app_id, build_id, outcome, received_at)
             SELECT j.value->>'source', j.value->>'key', j.value->>'event', CAST(j.value->>'app_id' AS BIGINT),
                    CAST(j.value->>'build_id' AS BIGINT), j.value->>'outcome', $2
             FROM {} ORDER BY j.key",
            array("deliveries", "$4")
        ),
    ];
    // Always run, even with nothing to insert: it ends the transaction.
    match backend {
        Backend::Sqlite => {
            let command = format!("{}; COMMIT", inserts.join(";\n"));
            let input = json_doc(&json!({"audit": audit, "events": events, "deliveries": deliveries}));
            sqlx::query(&command).bind(&input).bind(now).execute(&mut *conn).await?;
        }
        Backend::Postgres => {
            // One statement (data-modifying CTEs) for the three inserts and the announcements to
            // the other replicas: each round trip here is one more for every webhook group.
            let mut signals = vec![];
            if !queued.is_empty() {
                signals.push(super::Signal::queued(queued));
            }
            if !events.is_empty() {
                signals.push(super::Signal::ImageEvents);
            }
            // The same text for every group (the announcements are a parameter), so it is
            // planned once per connection.
            let command = format!(
                "WITH audit AS ({}), events AS ({}), deliveries AS ({}) {}",
                inserts[0],
                inserts[1],
                inserts[2],
                super::signals::notify_each_line_of("$5")
            );
            sqlx::query(&command)
                .bind(json_doc(&audit))
                .bind(now)
                .bind(json_doc(&events))
                .bind(json_doc(&deliveries))
                .bind(super::signals::payloads(&signals))
                .execute(&mut *conn)
                .await?;
            sqlx::query("COMMIT").execute(&mut *conn).await?;
        }
    }
    Ok((earlier, outcomes))
}

impl Store {
    /// Records a delivery and queues its builds, durably, before it returns. Returns the outcome
    /// and whether this call recorded it (false: the same key was delivered before; nothing new
    /// was queued and the earlier outcome is returned).
    pub async fn record_delivery(
        &self,
        delivery: &NewDelivery,
        builds: &[NewBuild],
        ignored: Option<String>,
    ) -> Result<(DeliveryOutcome, bool)> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { delivery: delivery.clone(), builds: builds.to_vec(), image_events: vec![], ignored, reply };
        let closed = || StoreError::Db(sqlx::Error::PoolClosed);
        self.deliveries.tx.send(pending).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Records a registry webhook delivery with the image arrivals it reports, durably, before it
    /// returns; false when the same key was delivered before (no event is recorded twice).
    pub async fn record_image_delivery(
        &self,
        delivery: &NewDelivery,
        image_events: &[NewImageEvent],
        ignored: Option<String>,
    ) -> Result<(DeliveryOutcome, bool)> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { delivery: delivery.clone(), builds: vec![], image_events: image_events.to_vec(), ignored, reply };
        let closed = || StoreError::Db(sqlx::Error::PoolClosed);
        self.deliveries.tx.send(pending).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    pub async fn delivery_count(&self, source: &str) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE source = $1")
            .bind(text(source))
            .fetch_one(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewApp;

    async fn store_with_app() -> (tempfile::TempDir, Store, i64, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let tenant = store.create_tenant("team").await.unwrap();
        let app = store
            .create_app(&NewApp::sample(tenant.id))
            .await
            .unwrap();
        (dir, store, tenant.id, app.id)
    }

    fn delivery(key: &str, app_id: i64) -> NewDelivery {
        NewDelivery { source: "gitlab", key: key.into(), event: "Push Hook".into(), app_id: Some(app_id), client_addr: None }
    }

    fn build(tenant_id: i64, app_id: i64, commit: &str) -> NewBuild {
        NewBuild { tenant_id, app_id, git_ref: Some("refs/heads/main".into()), commit: commit.into(), trigger: "webhook".into(), commit_info: Default::default() }
    }

    #[tokio::test]
    async fn a_group_with_repeats_and_keys_seen_before_queues_each_new_key_once() {
        let (_dir, store, tenant, app) = store_with_app().await;
        let (first, new) = store.record_delivery(&delivery("k0", app), &[build(tenant, app, "a0")], None).await.unwrap();
        assert!(new);
        // Sent at once, so the writer takes several of them in one transaction.
        let sends = [("k0", "b0"), ("k1", "a1"), ("k1", "b1"), ("k2", "a2"), ("k3", "a3")]
            .map(|(key, commit)| (delivery(key, app), [build(tenant, app, commit)]));
        let answers = futures_util::future::join_all(sends.iter().map(|(d, b)| store.record_delivery(d, b, None))).await;
        let answers: Vec<(DeliveryOutcome, bool)> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers[0], (first.clone(), false), "k0 was recorded before: its first outcome");
        assert!(answers[1].1 && !answers[2].1, "the first k1 is new, the second a repeat");
        assert_eq!(answers[1].0, answers[2].0, "a repeat gets the first's outcome");
        assert!(answers[3].1 && answers[4].1);
        let mut ids: Vec<i64> = [&first, &answers[1].0, &answers[3].0, &answers[4].0].iter().map(|o| o.build_ids[0]).collect();
        ids.dedup();
        assert_eq!(ids.len(), 4, "four keys, four builds: {ids:?}");
        let builds = store.builds(None, None, None, 100).await.unwrap();
        let mut commits: Vec<&str> = builds.iter().map(|b| b.commit.as_str()).collect();
        commits.sort();
        assert_eq!(commits, ["a0", "a1", "a2", "a3"], "each build is the first delivery's of its key");
        for (outcome, _) in &answers {
            let build = store.build(outcome.build_ids[0]).await.unwrap().expect("the answered build exists");
            assert!(builds.iter().any(|b| b.id == build.id));
        }
        assert_eq!(store.delivery_count("gitlab").await.unwrap(), 4);
    }

    #[tokio::test]
    async fn a_delivery_that_fails_fails_alone_and_leaves_the_writer_usable() {
        let (_dir, store, tenant, app) = store_with_app().await;
        // No app 999: the foreign key refuses its build, and with it the transaction.
        let bad = (delivery("bad", app), [build(tenant, 999, "bad")]);
        let good = (delivery("good", app), [build(tenant, app, "good")]);
        let (bad_answer, good_answer) =
            tokio::join!(store.record_delivery(&bad.0, &bad.1, None), store.record_delivery(&good.0, &good.1, None));
        assert!(bad_answer.is_err(), "{bad_answer:?}");
        assert!(good_answer.unwrap().1);
        // The failed transaction was rolled back, not left open on the writer connection.
        let after = store.record_delivery(&delivery("after", app), &[build(tenant, app, "after")], None).await.unwrap();
        assert!(after.1);
        let commits: Vec<String> = store.builds(None, None, None, 100).await.unwrap().into_iter().map(|b| b.commit).collect();
        assert!(commits.contains(&"good".to_string()) && commits.contains(&"after".to_string()) && !commits.contains(&"bad".to_string()), "{commits:?}");
        assert_eq!(store.delivery_count("gitlab").await.unwrap(), 2);
        // And the rest of the store writes on: a new tenant through the same writer connection.
        store.create_tenant("second").await.unwrap();
    }
}
