//! How client commands print: aligned tables, colour only on a terminal (and never with
//! `NO_COLOR`), and `-o json` for scripts, which prints the API's JSON as it came.

use std::io::IsTerminal;

use serde_json::Value;

/// `-o`: a table for people (default), or the API's JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Whether a stream gets colours: a terminal, and `NO_COLOR` unset (<https://no-color.org>).
#[derive(Debug, Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    #[cfg(test)]
    pub fn plain() -> Style {
        Style { color: false }
    }

    /// For what goes to stdout.
    pub fn stdout() -> Style {
        Style { color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    /// For what goes to stderr.
    pub fn stderr() -> Style {
        Style { color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    /// `text` in SGR `code` (`1;32`: bold green), or as it is without colours.
    pub fn paint(&self, code: &str, text: &str) -> String {
        if self.color && !code.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// The colour of a build state, a rollout state, or anything that ended well or badly.
pub fn state_color(state: &str) -> &'static str {
    match state {
        "Succeeded" | "Complete" | "Verified" => "32",
        "Failed" | "TimedOut" | "RolledBack" | "Aborted" => "31",
        "Running" | "Progressing" => "36",
        "Cancelled" | "Superseded" => "33",
        _ => "",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One cell: its text and, on a terminal, its colour.
pub struct Cell {
    text: String,
    color: &'static str,
}

impl Cell {
    pub fn colored(text: impl Into<String>, color: &'static str) -> Cell {
        Cell { text: text.into(), color }
    }
}

impl<T: Into<String>> From<T> for Cell {
    fn from(text: T) -> Cell {
        Cell { text: text.into(), color: "" }
    }
}

/// A table whose columns are as wide as their widest cell, so values of any length stay
/// aligned; numbers right-aligned where the column says so, the last column not padded (a long
/// reason there does not widen the others). Colours go around the text, never the padding, so
/// alignment is the same with and without them.
pub struct Table {
    header: Vec<(&'static str, Align)>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// Columns by their header and alignment; an empty header list prints no header line.
    pub fn new(header: &[(&'static str, Align)]) -> Table {
        Table { header: header.to_vec(), rows: vec![] }
    }

    /// A row; missing cells at its end are empty.
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub fn render(&self, style: &Style) -> String {
        let columns = self.header.len().max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        let align = |c: usize| self.header.get(c).map_or(Align::Left, |h| h.1);
        let header: Vec<Cell> = self.header.iter().map(|(h, _)| Cell::colored(*h, "1")).collect();
        let lines = (!self.header.iter().all(|h| h.0.is_empty())).then_some(&header).into_iter().chain(&self.rows);
        let width = |cells: &Vec<Cell>, c: usize| cells.get(c).map_or(0, |cell| cell.text.chars().count());
        let widths: Vec<usize> = (0..columns).map(|c| lines.clone().map(|r| width(r, c)).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for cells in lines {
            let mut line = String::new();
            for (c, w) in widths.iter().enumerate() {
                let (text, color) = cells.get(c).map_or(("", ""), |cell| (cell.text.as_str(), cell.color));
                let pad = " ".repeat(w - text.chars().count());
                let painted = style.paint(color, text);
                match (align(c), c + 1 == columns) {
                    (Align::Right, _) => line.push_str(&format!("{pad}{painted}")),
                    (Align::Left, true) => line.push_str(&painted),
                    (Align::Left, false) => line.push_str(&format!("{painted}{pad}")),
                }
                if c + 1 < columns {
                    line.push_str("  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The API's answer for `-o json`: indented, one document.
pub fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON prints"));
}

/// A time of the API (milliseconds since the epoch) as a person reads it: how long ago.
pub fn ago(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let secs = (chrono::Utc::now().timestamp_millis() - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// A duration as the CLI shows it: `4.2s`, `3m05s`, `1h02m`.
pub fn duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..=59 => format!("{:.1}s", ms.max(0) as f64 / 1000.0),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// A digest cut to what tells it apart in a table (`sha256:` and 12 hex digits).
pub fn short_digest(digest: Option<&str>) -> String {
    digest.map_or_else(|| "-".into(), |d| d.get(..19).unwrap_or(d).to_string())
}

/// A string field of an answer, or `-`.
pub fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_with_colours_on_and_off_and_the_last_column_is_not_padded() {
        let mut t = Table::new(&[("ID", Align::Right), ("STATE", Align::Left), ("NOTE", Align::Left)]);
        t.row(vec!["7".into(), Cell::colored("Succeeded", "32"), "".into()]);
        t.row(vec!["12345".into(), Cell::colored("Failed", "31"), "a long reason".into()]);
        let plain = t.render(&Style::plain());
        assert_eq!(plain, "   ID  STATE      NOTE\n    7  Succeeded\n12345  Failed     a long reason\n");
        let colored = t.render(&Style { color: true });
        let strip = |s: &str| crate::failure_line::strip_ansi(s).into_owned();
        assert_eq!(strip(&colored), plain, "colours moved the columns:\n{colored}");
        assert!(colored.contains("\x1b[31mFailed\x1b[0m     a long"), "{colored:?}");
    }

    #[test]
    fn durations_and_digests_read_short() {
        assert_eq!(duration(4200), "4.2s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(3_720_000), "1h02m");
        assert_eq!(short_digest(Some("sha256:0123456789abcdef0123")), "sha256:0123456789ab");
        assert_eq!(short_digest(None), "-");
    }
}
