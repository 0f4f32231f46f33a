//! Hostile input, generated: a seeded generator of malformed bodies and header values for the
//! hostile-input test and the parser fuzz harness. Deterministic for a seed, so a failure names a
//! seed and case number that reproduce it. `KILN_FUZZ_SEED` and `KILN_FUZZ_CASES` run it with
//! another seed or longer.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The seed: `KILN_FUZZ_SEED`, else a fixed one (CI is reproducible).
pub fn seed() -> u64 {
    std::env::var("KILN_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6b69_6c6e)
}

/// How many cases: `KILN_FUZZ_CASES`, else `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("KILN_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Strings that have broken something somewhere: traversal, shell, control characters, ANSI
/// escapes, header injection, Unicode tricks, format strings, SQL.
pub const HOSTILE_STRINGS: &[&str] = &[
    "refs/heads/../../etc",
    "refs/heads/../../../../etc/passwd",
    "../../../../etc/passwd",
    "/etc/passwd",
    "$(rm -rf /)",
    "`id`",
    "; rm -rf / #",
    "a\nb",
    "main\r\nX-Injected: 1",
    "\u{1b}[31mred\u{1b}[0m\u{1b}]0;title\u{7}",
    "nul\u{0}byte",
    "\u{202e}gnp.exe",
    "\u{feff}bom",
    "%00%2e%2e%2f",
    "%s%s%s%n",
    "{{7*7}}${7*7}",
    "' OR 1=1; DROP TABLE builds; --",
    "refs/heads/main.lock",
    "refs/tags/@{-1}",
    "refs/heads/",
    "",
    " ",
    "\t",
    "😀🔥",
    "sha256:../../x",
];

/// Numbers a parser must not trust: past i64/u64, past f64, negative, fractional.
pub const HUGE_NUMBERS: &[&str] =
    &["18446744073709551616", "-9223372036854775809", "1e400", "-1e400", "1e-400", "123456789012345678901234567890", "-0", "0.5", "1E+99999"];

pub struct Hostile {
    pub rng: StdRng,
}

impl Hostile {
    pub fn new(seed: u64) -> Hostile {
        Hostile { rng: StdRng::seed_from_u64(seed) }
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn hostile_string(&mut self) -> String {
        match self.rng.random_range(0..4) {
            0 => "A".repeat(self.rng.random_range(1000..20_000)),
            _ => self.pick(HOSTILE_STRINGS).to_string(),
        }
    }

    /// A value of a random JSON type, often not the one a field expects.
    fn wrong_type(&mut self) -> Value {
        match self.rng.random_range(0..8) {
            0 => Value::Null,
            1 => json!(self.rng.random::<bool>()),
            2 => json!(self.rng.random::<i64>()),
            3 => json!(self.rng.random::<f64>() * 1e300),
            4 => json!([1, "two", null]),
            5 => json!({"nested": {"deeper": []}}),
            6 => json!(""),
            _ => json!(self.hostile_string()),
        }
    }

    /// One malformed version of `valid`, as bytes. `max_body` is the server's body limit; some
    /// bodies are made larger than it on purpose.
    pub fn mutate(&mut self, valid: &Value, max_body: usize) -> Vec<u8> {
        let text = valid.to_string().into_bytes();
        match self.rng.random_range(0..16) {
            // Truncated anywhere (an interrupted delivery).
            0 => {
                let at = self.rng.random_range(0..text.len());
                text[..at].to_vec()
            }
            // Random bytes flipped (transport corruption, fuzzing).
            1 => {
                let mut t = text;
                for _ in 0..self.rng.random_range(1..8) {
                    let i = self.rng.random_range(0..t.len());
                    t[i] = self.rng.random();
                }
                t
            }
            // One field of the wrong type, or hostile content.
            2 | 3 => self.with_field(valid, |h| h.wrong_type()),
            4 => self.with_field(valid, |h| json!(h.hostile_string())),
            // A huge number where a value was: written as text, since serde_json's Value cannot
            // hold most of them.
            5 => {
                let n = self.pick(HUGE_NUMBERS).to_string();
                let marked = self.with_field_value(valid, json!("__KILN_HUGE__"));
                String::from_utf8(marked).unwrap().replace("\"__KILN_HUGE__\"", &n).into_bytes()
            }
            // Deep nesting: a bare pyramid, or inside a field.
            6 => {
                let depth = self.rng.random_range(200..12_000);
                if self.rng.random_bool(0.5) {
                    format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
                } else {
                    let marked = self.with_field_value(valid, json!("__KILN_DEEP__"));
                    let deep = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
                    String::from_utf8(marked).unwrap().replace("\"__KILN_DEEP__\"", &deep).into_bytes()
                }
            }
            // Invalid UTF-8 inside a string, or a lone surrogate escape.
            7 => {
                let marked = String::from_utf8(self.with_field_value(valid, json!("__KILN_UTF__"))).unwrap();
                let (before, after) = marked.split_once("__KILN_UTF__").unwrap();
                let junk: &[u8] = *self.pick::<&[u8]>(&[b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\\ud800", b"\x80"]);
                [before.as_bytes(), junk, after.as_bytes()].concat()
            }
            // NUL: raw in the document, or escaped in a string.
            8 => {
                let mut t = text;
                let i = self.rng.random_range(0..t.len());
                t.insert(i, 0);
                t
            }
            9 => self.with_field(valid, |_| json!("before\u{0}after")),
            // A field removed, or an unknown one added (strict parsing).
            10 => {
                let mut v = valid.clone();
                let paths = paths(&v);
                let p = self.pick(&paths).clone();
                if let Some((parent, key)) = p.rsplit_once('/') {
                    if let Some(obj) = v.pointer_mut(parent).and_then(Value::as_object_mut) {
                        obj.remove(key);
                    }
                }
                v.to_string().into_bytes()
            }
            11 => {
                let mut v = valid.clone();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert(self.hostile_string(), self.wrong_type());
                }
                v.to_string().into_bytes()
            }
            // A duplicate key (which one wins is parser-specific).
            12 => {
                let t = String::from_utf8(text).unwrap();
                let key = valid.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
                t.replacen('{', &format!("{{\"{key}\":{},", self.wrong_type()), 1).into_bytes()
            }
            // Not an object at all.
            13 => {
                let s: &str = *self.pick::<&str>(&["", " ", "null", "[]", "\"str\"", "42", "true", "{", "}", "{}", "\u{feff}{}", "{\"a\":1}{\"b\":2}", "/* */{}"]);
                s.as_bytes().to_vec()
            }
            // Over the body limit.
            14 => {
                let mut v = valid.clone();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("padding".into(), json!("x".repeat(max_body + self.rng.random_range(1..4096))));
                }
                v.to_string().into_bytes()
            }
            // A long string just under the limit (allowed size, silly content).
            _ => self.with_field(valid, |h| json!("y".repeat(h.rng.random_range(max_body / 4..max_body / 2)))),
        }
    }

    fn with_field(&mut self, valid: &Value, make: impl FnOnce(&mut Hostile) -> Value) -> Vec<u8> {
        let value = make(self);
        self.with_field_value(valid, value)
    }

    /// `valid` with one randomly chosen field (at any depth) replaced by `value`.
    fn with_field_value(&mut self, valid: &Value, value: Value) -> Vec<u8> {
        let mut v = valid.clone();
        let paths = paths(&v);
        let p = self.pick(&paths).clone();
        if let Some(slot) = v.pointer_mut(&p) {
            *slot = value;
        }
        v.to_string().into_bytes()
    }

    /// A header value that HTTP allows but a handler might not expect: empty, very long, tabs,
    /// obs-text bytes, shell and traversal text.
    pub fn header_value(&mut self) -> axum::http::HeaderValue {
        let bytes: Vec<u8> = match self.rng.random_range(0..6) {
            0 => vec![],
            1 => vec![b'a'; self.rng.random_range(1000..8000)],
            2 => b"\tPush Hook\t".to_vec(),
            3 => vec![0x80, 0xff, b'x', 0xfe],
            4 => b"$(rm -rf /)".to_vec(),
            _ => b"../../etc/passwd".to_vec(),
        };
        axum::http::HeaderValue::from_bytes(&bytes).expect("allowed header bytes")
    }
}

/// JSON pointers of every value inside `v` (not the root).
pub fn paths(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    out.push(p.clone());
                    walk(child, p, out);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    walk(child, p, out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    walk(v, String::new(), &mut out);
    if out.is_empty() {
        out.push(String::new());
    }
    out
}
