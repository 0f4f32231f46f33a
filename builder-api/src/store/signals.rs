//! What the replicas on one PostgreSQL database tell each other, through `NOTIFY` on the
//! channel `kiln` sent in the transaction of the write it announces (so it arrives once that
//! write is visible): a log batch was stored, a build ended, builds were queued, an image event
//! arrived. Each replica listens on one connection of its own ([`Store::listen`]) and acts on
//! what it hears (`crate::peers`). Announcements are hints: a replica that misses one (its
//! listening connection was lost a moment) still finds the write on its next periodic look.
//! SQLite has one process and nobody to tell: nothing is sent.

use sqlx::postgres::PgListener;

use super::{Backend, Result, Store};

/// The one channel; the payload says what happened.
const CHANNEL: &str = "kiln";

/// One announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Lines `first..=last` of a build's log were stored.
    LogStored { build: i64, first: i64, last: i64 },
    /// A build reached a final state.
    BuildEnded(i64),
    /// Builds were queued: `(build, tenant)` of each, or None when there were too many to name
    /// (the listeners read the store's queue instead).
    BuildsQueued(Option<Vec<(i64, i64)>>),
    /// Image events (Harbor, a sync) wait for the rollout loop.
    ImageEvents,
}

/// The most builds one announcement names (a NOTIFY payload holds under 8000 bytes).
const NAMED_BUILDS: usize = 400;

impl Signal {
    /// Builds were queued: named when they are few enough.
    pub fn queued(builds: Vec<(i64, i64)>) -> Signal {
        Signal::BuildsQueued((builds.len() <= NAMED_BUILDS).then_some(builds))
    }

    pub(super) fn payload(&self) -> String {
        match self {
            Signal::LogStored { build, first, last } => format!("log {build} {first} {last}"),
            Signal::BuildEnded(id) => format!("ended {id}"),
            Signal::BuildsQueued(None) => "queued".into(),
            Signal::BuildsQueued(Some(builds)) => {
                let named: Vec<String> = builds.iter().map(|(b, t)| format!("{b}:{t}")).collect();
                format!("queued {}", named.join(","))
            }
            Signal::ImageEvents => "images".into(),
        }
    }

    pub fn parse(payload: &str) -> Option<Signal> {
        let mut words = payload.split(' ');
        let signal = match words.next()? {
            "log" => {
                let mut n = || words.next()?.parse::<i64>().ok();
                Signal::LogStored { build: n()?, first: n()?, last: n()? }
            }
            "ended" => Signal::BuildEnded(words.next()?.parse().ok()?),
            "queued" => match words.next() {
                None => Signal::BuildsQueued(None),
                Some(list) => {
                    let pair = |p: &str| -> Option<(i64, i64)> {
                        let (b, t) = p.split_once(':')?;
                        Some((b.parse().ok()?, t.parse().ok()?))
                    };
                    Signal::BuildsQueued(Some(list.split(',').map(pair).collect::<Option<Vec<_>>>()?))
                }
            },
            "images" => Signal::ImageEvents,
            _ => return None,
        };
        Some(signal)
    }
}

/// Sends the announcement whose payload is `$1` (PostgreSQL only). Payloads are parameters, so
/// each statement that announces has one text and is planned once per connection. Wrapped, as
/// the Any driver cannot decode the `void` that pg_notify returns.
pub(super) const NOTIFY: &str = "SELECT 1 FROM (SELECT pg_notify('kiln', CAST($1 AS TEXT))) sent";

/// A SELECT that sends one announcement per line of the text parameter `param` (none for an
/// empty text): the statement's text stays the same whatever it announces, so PostgreSQL plans
/// it once per connection. Its payloads come from [`payloads`].
pub(super) fn notify_each_line_of(param: &str) -> String {
    format!("SELECT 1 FROM (SELECT pg_notify('{CHANNEL}', p) FROM unnest(string_to_array(CAST({param} AS TEXT), E'\\n')) AS s(p)) sent")
}

/// The payloads of `signals`, a line each, for [`notify_each_line_of`].
pub(super) fn payloads(signals: &[Signal]) -> String {
    signals.iter().map(Signal::payload).collect::<Vec<_>>().join("\n")
}

/// A replica's listening connection.
pub struct Signals {
    listener: PgListener,
}

impl Signals {
    /// The next announcement. An error means the connection was lost; the next call connects
    /// again (what was announced meanwhile is lost: the periodic looks cover it).
    pub async fn next(&mut self) -> Result<Option<Signal>> {
        let notification = self.listener.recv().await?;
        Ok(Signal::parse(notification.payload()))
    }
}

impl Store {
    /// Listens for the other replicas' announcements; None on SQLite.
    pub async fn listen(&self) -> Result<Option<Signals>> {
        let Some(url) = self.database_url.as_deref() else { return Ok(None) };
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Signals { listener }))
    }

    /// Announces `signal` outside any other write (PostgreSQL; nothing on SQLite).
    pub async fn announce(&self, signal: Signal) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query(NOTIFY).bind(signal.payload()).execute(&self.writer).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_reads_back_from_its_payload() {
        let queued = Signal::BuildsQueued(Some(vec![(12, 1), (13, 4)]));
        for s in [Signal::LogStored { build: 7, first: 1, last: 250 }, Signal::BuildEnded(12), Signal::BuildsQueued(None), queued, Signal::ImageEvents] {
            assert_eq!(Signal::parse(&s.payload()), Some(s));
        }
        assert_eq!(Signal::parse("log 7 x 3"), None);
        assert_eq!(Signal::parse("hello"), None);
        assert_eq!(Signal::parse("queued 12:x"), None);
    }

    #[test]
    fn the_statements_announce_on_the_channel_the_replicas_listen_to() {
        for sql in [NOTIFY.to_string(), notify_each_line_of("$5")] {
            assert!(sql.contains(&format!("pg_notify('{CHANNEL}', ")), "{sql}");
        }
        let two = payloads(&[Signal::BuildEnded(3), Signal::ImageEvents]);
        assert_eq!(two.lines().map(Signal::parse).collect::<Vec<_>>(), [Some(Signal::BuildEnded(3)), Some(Signal::ImageEvents)]);
        assert_eq!(payloads(&[]), "");
    }
}
