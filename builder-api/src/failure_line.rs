//! The line of a failed step's output that tells a person why: what the build's reason quotes.
//! Not simply the last line — Maven ends with `[INFO]` summaries and help links, Go with
//! `exit status 2`, and many tools colour their output — but the first line a compiler or builder
//! writes about the error, without terminal escape codes.

/// Reads a step's output line by line and keeps its most telling line.
#[derive(Debug, Default, Clone)]
pub struct TellingLine {
    /// The first line of the highest rank seen, and that rank.
    best: Option<(Rank, String)>,
    /// The last non-empty line: the answer when no line has a rank. Its buffer is reused, since
    /// every line of a step's output passes through here.
    last: String,
}

/// How telling a line is; more is better, the first of a rank wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// Maven's `[ERROR]` line without a location (`[ERROR] COMPILATION ERROR :`).
    MavenError,
    /// A Dockerfile instruction that failed, as buildah or BuildKit says it.
    FailedInstruction,
    /// A compiler's `file:line:col: message` (Go), or Maven's `[ERROR] /path/File.java:[l,c] …`.
    Located,
}

impl TellingLine {
    /// Takes the next line of output.
    pub fn offer(&mut self, line: &str) {
        let line = strip_ansi(line);
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        self.last.clear();
        self.last.push_str(line);
        if let Some(rank) = rank(line) {
            if self.best.as_ref().is_none_or(|(r, _)| rank > *r) {
                self.best = Some((rank, line.to_string()));
            }
        }
    }

    /// The most telling line, else the last non-empty one.
    pub fn best(&self) -> Option<&str> {
        self.best.as_ref().map(|(_, l)| l.as_str()).or(Some(self.last.as_str()).filter(|l| !l.is_empty()))
    }

    /// Whether any line ranked (so the line says more than "the last thing printed").
    pub fn ranked(&self) -> bool {
        self.best.is_some()
    }
}

fn rank(line: &str) -> Option<Rank> {
    if let Some(rest) = line.strip_prefix("[ERROR]") {
        let rest = rest.trim();
        if rest.is_empty() || rest.starts_with("-> [Help") || rest.starts_with("To see the full stack trace") || rest.starts_with("Re-run Maven") {
            return None;
        }
        // `/src/main/java/App.java:[3,5] cannot find symbol`
        return Some(if rest.contains(".java:[") { Rank::Located } else { Rank::MavenError });
    }
    if go_location(line) {
        return Some(Rank::Located);
    }
    let lower = line.to_ascii_lowercase();
    if lower.contains("building at step") || lower.contains("failed to solve") || lower.contains("did not complete successfully") {
        return Some(Rank::FailedInstruction);
    }
    None
}

/// `path/file.go:12:5: message` (also `./main.go:3:1: …`).
fn go_location(line: &str) -> bool {
    let Some(at) = line.find(".go:") else { return false };
    let path = &line[..at];
    if path.is_empty() || path.contains(' ') {
        return false;
    }
    let mut parts = line[at + 4..].splitn(3, ':');
    let numeric = |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    numeric(parts.next()) && numeric(parts.next()) && parts.next().is_some()
}

/// The text without terminal escape sequences (colours, cursor moves): CSI `ESC [ … final`, OSC
/// `ESC ] … BEL/ST`, and two-character escapes.
pub fn strip_ansi(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('\u{1b}') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                        if c == '\u{1b}' {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best(lines: &[&str]) -> Option<String> {
        let mut t = TellingLine::default();
        for l in lines {
            t.offer(l);
        }
        t.best().map(String::from)
    }

    #[test]
    fn escape_codes_go_and_text_stays() {
        assert_eq!(strip_ansi("\u{1b}[0m\u{1b}[0m"), "");
        assert_eq!(strip_ansi("\u{1b}[1;31m[ERROR]\u{1b}[m boom"), "[ERROR] boom");
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}ok"), "ok");
        assert_eq!(strip_ansi("plain ünï"), "plain ünï");
    }

    #[test]
    fn maven_go_and_dockerfile_failures_name_their_cause() {
        // Maven, coloured, ending in help links and an empty reset line.
        let maven = [
            "\u{1b}[1;34mINFO\u{1b}[m Compiling 1 source file",
            "\u{1b}[1;31m[ERROR]\u{1b}[m COMPILATION ERROR : ",
            "\u{1b}[1;31m[ERROR]\u{1b}[m /w/src/src/main/java/App.java:[3,5] cannot find symbol",
            "\u{1b}[1;31m[ERROR]\u{1b}[m /w/src/src/main/java/App.java:[9,1] ';' expected",
            "[ERROR] -> [Help 1]",
            "\u{1b}[0m\u{1b}[0m",
        ];
        assert_eq!(best(&maven).as_deref(), Some("[ERROR] /w/src/src/main/java/App.java:[3,5] cannot find symbol"));
        let go = ["# example.com/hello", "./main.go:7:2: undefined: fmt.Printn", "./main.go:9:1: missing return"];
        assert_eq!(best(&go).as_deref(), Some("./main.go:7:2: undefined: fmt.Printn"));
        let buildah = ["STEP 2/3: RUN false", "Error: building at STEP \"RUN false\": while running runtime: exit status 1"];
        assert_eq!(best(&buildah).as_deref(), Some("Error: building at STEP \"RUN false\": while running runtime: exit status 1"));
        // Nothing ranked: the last non-empty line, without codes.
        assert_eq!(best(&["step one", "it broke\u{1b}[0m", "   "]).as_deref(), Some("it broke"));
        assert_eq!(best(&[]), None);
    }
}
