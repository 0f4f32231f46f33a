//! Log lines: numbered per build from 1, each with its step and stream. Lines are appended in
//! batches by the build's capture task and read by any number of followers.

use serde::Serialize;
use sqlx::Row;

use super::{json_doc, text, Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines Kiln itself writes into the log (results, reasons).
    System,
    /// A step boundary: started, or finished with its state and duration (in `meta`).
    Step,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
            Stream::Step => "step",
        }
    }
    fn parse(s: &str) -> Stream {
        match s {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            "step" => Stream::Step,
            _ => Stream::System,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    pub seq: i64,
    pub step: String,
    pub stream: Stream,
    pub at: i64,
    pub line: String,
    /// For step boundaries: `{"phase": "started"}` or
    /// `{"phase": "finished", "state": …, "duration_ms": …, "exit_code": …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

impl Store {
    /// Appends lines whose `seq` the caller assigned (one writer per build).
    pub async fn append_log(&self, build_id: i64, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        for l in lines {
            sqlx::query("INSERT INTO log_lines (build_id, seq, step, stream, at, line, meta) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
                .bind(build_id)
                .bind(l.seq)
                .bind(text(&l.step))
                .bind(l.stream.as_str())
                .bind(l.at)
                .bind(text(&l.line))
                .bind(l.meta.as_ref().map(json_doc))
                .execute(&mut *tx)
                .await?;
        }
        if self.backend == super::Backend::Postgres {
            // Followers of this build on other replicas read the batch from the store.
            let stored = super::Signal::LogStored { build: build_id, first: lines[0].seq, last: lines[lines.len() - 1].seq };
            sqlx::query(super::signals::NOTIFY).bind(stored.payload()).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Lines with `seq > after`, in order, at most `limit`.
    pub async fn log_after(&self, build_id: i64, after: i64, limit: i64) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT seq, step, stream, at, line, meta FROM log_lines WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(build_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| LogLine {
                seq: r.get("seq"),
                step: r.get("step"),
                stream: Stream::parse(r.get::<&str, _>("stream")),
                at: r.get("at"),
                line: r.get("line"),
                meta: r.get::<Option<&str>, _>("meta").and_then(|m| serde_json::from_str(m).ok()),
            })
            .collect())
    }

    pub async fn last_log_seq(&self, build_id: i64) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM log_lines WHERE build_id = $1")
            .bind(build_id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Bytes of output already stored for a build, a newline per line (what counts against the
    /// log cap).
    pub async fn log_bytes(&self, build_id: i64) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT CAST(COALESCE(SUM(OCTET_LENGTH(line) + 1), 0) AS BIGINT) FROM log_lines WHERE build_id = $1 AND stream IN ('stdout', 'stderr')")
            .bind(build_id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// How many lines a step's own process wrote (Kiln's system lines not counted): where a
    /// follower of the step's container log resumes after a restart.
    pub async fn output_line_count(&self, build_id: i64, step: &str) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS count FROM log_lines WHERE build_id = $1 AND step = $2 AND stream IN ('stdout', 'stderr')")
            .bind(build_id)
            .bind(text(step))
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get("count"))
    }
}
