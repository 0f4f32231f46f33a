//! Bounded, deterministic fuzzing of the webhook parsers (`hooks::gitlab::parse_push`,
//! `hooks::harbor::parse`) with the hostile-input generator: no panic, and whatever a parser
//! accepts satisfies what the rest of Kiln relies on. `KILN_FUZZ_CASES` / `KILN_FUZZ_SEED` run it
//! longer or elsewhere (the tar reader's harness is in registry-sync's unit tests).

use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue};
use builder_api::hooks::gitlab::{parse_push, Decision};
use builder_api::hooks::harbor::{self, HarborEvent};
use builder_api::validate;
use rand::Rng;
use serde_json::Value;

use crate::support::fixtures::GitlabPush;
use crate::support::hostile::{self, Hostile};

const MAX_BODY: usize = 64 * 1024;
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn gitlab_parser_never_panics_and_accepts_only_safe_pushes() {
    let seed = hostile::seed();
    let mut h = Hostile::new(seed);
    let bases = [
        GitlabPush::branch("team/hello", "http://git.example/team/hello.git", "main", SHA).body(),
        GitlabPush::branch("team/hello", "http://git.example/team/hello.git", "feature/a-b", SHA).with_head_commit("Fix it\n\nbody", "Ada").body(),
        GitlabPush::tag("team/hello", "http://git.example/team/hello.git", "v1.2.3", SHA).body(),
        GitlabPush::branch("team/hello", "http://git.example/team/hello.git", "main", SHA).deleting().body(),
    ];
    let events = ["Push Hook", "Tag Push Hook", "Merge Request Hook", ""];
    let (mut pushes, mut decided, mut refused) = (0, 0, 0);
    let started = Instant::now();
    let cases = hostile::cases(20_000);
    for case in 0..cases {
        let valid = h.pick(&bases).clone();
        let body = if case % 10 == 0 { valid.to_string().into_bytes() } else { h.mutate(&valid, MAX_BODY) };
        let mut headers = HeaderMap::new();
        let event = if h.rng.random_bool(0.9) { HeaderValue::from_static(h.pick::<&str>(&events)) } else { h.header_value() };
        headers.insert("x-gitlab-event", event);
        let what = || format!("case {case} (seed {seed}): {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        match parse_push(&headers, &body) {
            Ok(d) => {
                assert!(!d.project.is_empty() || !d.urls.is_empty(), "{}", what());
                match d.push {
                    Ok(p) => {
                        pushes += 1;
                        validate::commit_sha(&p.commit).unwrap_or_else(|e| panic!("{e}: {}", what()));
                        validate::git_ref(&p.name).unwrap_or_else(|e| panic!("{e}: {}", what()));
                        let prefix = if p.is_tag { "refs/tags/" } else { "refs/heads/" };
                        assert_eq!(p.git_ref, format!("{prefix}{}", p.name), "{}", what());
                        assert!(!p.git_ref.chars().any(char::is_control), "{}", what());
                        // What the build page shows of the commit: text without control
                        // characters, a link only to a web address.
                        let info = &p.commit_info;
                        assert!(info.url.as_deref().is_none_or(|u| u.starts_with("http://") || u.starts_with("https://")), "{}", what());
                        assert!(info.author.iter().chain(&info.message).all(|t| !t.chars().any(|c| c.is_control() && c != '\n')), "{}", what());
                    }
                    Err(Decision::Ignore(r) | Decision::Reject(r)) => {
                        decided += 1;
                        assert!(!r.trim().is_empty(), "{}", what());
                    }
                }
            }
            Err(e) => {
                refused += 1;
                assert_eq!(e.status(), 400, "{}", what());
                assert!(!e.to_string().trim().is_empty(), "{}", what());
            }
        }
    }
    println!("gitlab parser: {cases} cases in {:?}: {pushes} pushes, {decided} ignored/rejected events, {refused} refused bodies", started.elapsed());
    assert!(pushes > cases / 20 && refused > cases / 4, "the generator reaches both sides: {pushes} pushes, {refused} refused");
}

#[test]
fn harbor_parser_never_panics_and_accepts_only_digests_and_clean_repositories() {
    let seed = hostile::seed();
    let mut h = Hostile::new(seed ^ 0x4841_5242);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/harbor");
    let mut bases: Vec<Value> =
        std::fs::read_dir(dir).unwrap().map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap()).collect();
    bases.sort_by_key(|v| v.to_string());
    let (mut pushed, mut ignored, mut refused, mut not_json) = (0, 0, 0, 0);
    let started = Instant::now();
    let cases = hostile::cases(20_000);
    for case in 0..cases {
        let valid = h.pick(&bases).clone();
        let body = if case % 10 == 0 { valid.to_string().into_bytes() } else { h.mutate(&valid, MAX_BODY) };
        let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
            not_json += 1;
            continue;
        };
        let what = || format!("case {case} (seed {seed}): {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        match harbor::parse(&payload) {
            Ok(HarborEvent::Pushed { images, .. }) => {
                pushed += 1;
                assert!(!images.is_empty(), "{}", what());
                for i in images {
                    let hex = i.digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{}", what()));
                    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", what());
                    validate::image_repository_path(&i.repository).unwrap_or_else(|e| panic!("{e}: {}", what()));
                    assert!(!i.registry.is_empty() && !i.registry.contains(['/', ' ', '\n', '\0']), "{}", what());
                    assert!(i.tag.as_deref().is_none_or(|t| !t.starts_with("sha256:")), "{}", what());
                }
            }
            Ok(HarborEvent::Ignored { reason, .. }) => {
                ignored += 1;
                assert!(!reason.trim().is_empty(), "{}", what());
            }
            Err(reason) => {
                refused += 1;
                assert!(!reason.to_string().trim().is_empty(), "{}", what());
            }
        }
    }
    println!(
        "harbor parser: {cases} cases in {:?}: {pushed} pushed, {ignored} ignored, {refused} refused, {not_json} not JSON",
        started.elapsed()
    );
    assert!(pushed > cases / 20 && refused > cases / 20, "the generator reaches both sides: {pushed} pushed, {refused} refused");
}
