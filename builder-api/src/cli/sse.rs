//! A Server-Sent Events reader for Kiln's clients (the CLI, and the tests): bytes in, events out,
//! whatever the chunking (an event split across reads, CRLF or LF line ends, comments).

/// One event: `event:` (default `message`), `id:`, and the `data:` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
    /// The id of the last event seen: what `Last-Event-ID` sends on a reconnect.
    pub last_id: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    let ev = SseEvent { event: self.event.take().unwrap_or_else(|| "message".into()), id: self.id.take(), data };
                    if ev.id.is_some() {
                        self.last_id = ev.id.clone();
                    }
                    out.push(ev);
                } else {
                    self.event = None;
                    self.id = None;
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment: keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "event" => self.event = Some(value),
                "id" => self.id = Some(value),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => self.data = Some(value),
                },
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_parse_the_same() {
        let text = ": keep-alive\r\nevent: line\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\nevent: end\ndata: x\ndata: y\n\n";
        let whole = SseParser::default().feed(text.as_bytes());
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0], SseEvent { event: "line".into(), id: Some("1".into()), data: "{\"a\":1}".into() });
        assert_eq!(whole[1].data, "x\ny");
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut got = p.feed(&text.as_bytes()[..split]);
            got.extend(p.feed(&text.as_bytes()[split..]));
            assert_eq!(got, whole, "split at {split}");
            assert_eq!(p.last_id.as_deref(), Some("1"));
        }
    }
}
