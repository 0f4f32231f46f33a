//! Branch (and tag) filters: the glob an app's `branch_filter` and a subscription's `glob` policy
//! are written in. A leaf: GitLab push intake and rollout policies both use it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use globset::GlobMatcher;

/// Glob over the branch name: `*` matches within one path segment, `**` across. A filter is
/// compiled once per process, not on every push: compiling is the costly part of a match, and
/// every push of a busy repository matches the same few filters. A filter that does not compile
/// matches nothing.
pub fn matches(filter: &str, branch: &str) -> bool {
    /// Filters are per app: a few thousand at most. Past that the cache starts over.
    const MOST: usize = 4096;
    static COMPILED: OnceLock<Mutex<HashMap<String, Option<GlobMatcher>>>> = OnceLock::new();
    let matcher = {
        let mut compiled = COMPILED.get_or_init(Default::default).lock().unwrap();
        match compiled.get(filter) {
            Some(m) => m.clone(),
            None => {
                if compiled.len() >= MOST {
                    compiled.clear();
                }
                let m = globset::GlobBuilder::new(filter).literal_separator(true).build().ok().map(|g| g.compile_matcher());
                compiled.insert(filter.to_string(), m.clone());
                m
            }
        }
    };
    matcher.is_some_and(|m| m.is_match(branch))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn branch_filters() {
        assert!(matches("*", "main"));
        assert!(!matches("*", "feature/x"));
        assert!(matches("**", "feature/x"));
        assert!(matches("release/*", "release/1.2"));
        assert!(!matches("main", "mainline"));
        // A filter that does not compile matches nothing, also the second time (from the cache).
        assert!(!matches("[", "main"));
        assert!(!matches("[", "main"));
    }
}
