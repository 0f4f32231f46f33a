//! Which replica runs the cluster-wide loops (Deployment discovery, turning image events into
//! rollouts, re-driving rollouts and replications a stopped replica left) when no Kubernetes Lease
//! elects it (`crate::leadership`): the one holding a PostgreSQL session advisory lock, on a
//! connection of its own. A replica that dies loses its
//! session, so the lock is free at once and the next replica to try takes it. On SQLite the one
//! process always leads.

use std::time::Duration;

use tokio::sync::watch;

use super::{Result, Store};

/// The advisory lock of the cluster-wide loops.
const SINGLETON_LOCK: i64 = 0x6b69_6c6e_5f6c_6561; // "kiln_lea"

/// How often a replica that does not lead tries to, and one that leads checks its connection.
const TRY_EVERY: Duration = Duration::from_secs(1);

impl Store {
    /// Whether this replica leads, kept up to date by a task of its own.
    pub async fn leadership(&self) -> Result<watch::Receiver<bool>> {
        let Some(url) = self.database_url.clone() else {
            let (tx, rx) = watch::channel(true);
            // Never changes; kept so the receiver never reads as closed.
            std::mem::forget(tx);
            return Ok(rx);
        };
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut session: Option<Session> = None;
            loop {
                let leads = match try_lead(&url, &mut session).await {
                    Ok(leads) => leads,
                    Err(e) => {
                        tracing::warn!("the lock of the cluster-wide loops: {e}");
                        session = None;
                        false
                    }
                };
                tx.send_if_modified(|was| std::mem::replace(was, leads) != leads);
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(TRY_EVERY).await;
            }
        });
        Ok(rx)
    }
}

/// A connection to PostgreSQL and whether its session holds the lock.
struct Session {
    conn: sqlx::PgConnection,
    holds: bool,
}

/// Takes the lock when it is free, or checks that the session holding it still answers.
async fn try_lead(url: &str, session: &mut Option<Session>) -> Result<bool> {
    use sqlx::{Connection as _, Row as _};
    if session.is_none() {
        *session = Some(Session { conn: sqlx::PgConnection::connect(url).await?, holds: false });
    }
    let s = session.as_mut().expect("connected above");
    if s.holds {
        // Held: the session keeps it as long as it answers.
        sqlx::query("SELECT 1").execute(&mut s.conn).await?;
    } else {
        s.holds = sqlx::query("SELECT pg_try_advisory_lock($1) AS taken").bind(SINGLETON_LOCK).fetch_one(&mut s.conn).await?.get("taken");
    }
    Ok(s.holds)
}
