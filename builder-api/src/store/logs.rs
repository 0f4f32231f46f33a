//! Log lines: numbered per build from 1, each with its step and stream. Lines are appended in
//! batches by the build's capture task and read by any number of followers.

use serde::Serialize;
use sqlx::Row;

use super::{Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines Kiln itself writes into the log (step headers, results, reasons).
    System,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }
    fn parse(s: &str) -> Stream {
        match s {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
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
}

impl Store {
    /// Appends lines whose `seq` the caller assigned (one writer per build).
    pub async fn append_log(&self, build_id: i64, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for l in lines {
            sqlx::query("INSERT OR IGNORE INTO log_lines (build_id, seq, step, stream, at, line) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(build_id)
                .bind(l.seq)
                .bind(&l.step)
                .bind(l.stream.as_str())
                .bind(l.at)
                .bind(&l.line)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Lines with `seq > after`, in order, at most `limit`.
    pub async fn log_after(&self, build_id: i64, after: i64, limit: i64) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT seq, step, stream, at, line FROM log_lines WHERE build_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(build_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| LogLine {
                seq: r.get(0),
                step: r.get(1),
                stream: Stream::parse(r.get::<&str, _>(2)),
                at: r.get(3),
                line: r.get(4),
            })
            .collect())
    }

    pub async fn last_log_seq(&self, build_id: i64) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM log_lines WHERE build_id = ?")
            .bind(build_id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// How many lines a step's own process wrote (Kiln's system lines not counted): where a
    /// follower of the step's container log resumes after a restart.
    pub async fn output_line_count(&self, build_id: i64, step: &str) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM log_lines WHERE build_id = ? AND step = ? AND stream != 'system'")
            .bind(build_id)
            .bind(step)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }
}
