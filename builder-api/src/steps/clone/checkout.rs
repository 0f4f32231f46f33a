//! Writing the fetched commit into the work tree: HEAD, the files, and `.git/index`, with gix's
//! own checkout.

use std::{path::Path, sync::atomic::AtomicBool};

use gix::ObjectId;

use super::{error::CloneError, fetch::Scrubber};

pub(super) fn set_detached_head(
    repo: &gix::Repository,
    commit: ObjectId,
    scrub: &Scrubber,
    shown_url: &str,
) -> Result<(), CloneError> {
    use gix::refs::{
        transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog},
        Target,
    };
    repo.edit_reference(RefEdit {
        change: Change::Update {
            log: LogChange {
                mode: RefLog::AndReference,
                force_create_reflog: false,
                message: format!("kiln: checkout {commit}").into(),
            },
            expected: PreviousValue::Any,
            new: Target::Object(commit),
        },
        name: "HEAD".try_into().expect("valid ref name"),
        deref: false,
    })
    .map_err(|e| CloneError::Git {
        url: shown_url.to_owned(),
        message: scrub.clean(&format!("cannot set HEAD: {e}")),
    })?;
    Ok(())
}

/// Write `tree` into `dest`, which holds nothing but `.git`, and `.git/index` with the files'
/// stat data, so that `git status` in the checkout is clean (Go stamps `vcs.modified` from it)
/// without rehashing every file. Returns the number of files and symlinks written.
///
/// As with git: executable blobs get the executable bit, symlinks are links (created after all
/// files, and never followed), and a submodule is an empty directory. `.gitattributes` filters
/// apply, with no filter driver configured (the repository reads no system or user config).
pub(super) fn checkout(
    repo: &gix::Repository,
    tree: ObjectId,
    dest: &Path,
    scrub: &Scrubber,
    shown_url: &str,
) -> Result<u64, CloneError> {
    use gix::index::entry::Mode;

    let git_err = |what: &str, e: gix::Error| CloneError::Git {
        url: shown_url.to_owned(),
        message: scrub.clean(&format!("{what}: {}", chain(&e))),
    };
    let dest_err = |reason: String| CloneError::Destination {
        path: dest.to_owned(),
        reason: scrub.clean(&reason),
    };
    // Building the index validates every path component of the tree (no empty name, `.`, `..`,
    // `/`, or `.git` in any spelling that reaches the `.git` directory), so nothing lands outside
    // `dest` or inside `.git`.
    let mut index = repo.index_from_tree(&tree).map_err(|e| {
        if e.classify().is_validation() {
            dest_err(unsafe_path(&e))
        } else {
            git_err("cannot read the tree", e)
        }
    })?;
    let mut opts = repo
        .checkout_options(gix::worktree::stack::state::attributes::Source::IdMapping)
        .map_err(|e| git_err("cannot configure the checkout", e))?;
    // Every file is created exclusively and without following symlinks: whatever is already
    // there (another entry of a hostile tree at the same path) is a collision, never overwritten.
    opts.destination_is_initially_empty = true;
    let objects = repo
        .objects
        .clone()
        .into_arc()
        .map_err(|e| CloneError::Git {
            url: shown_url.to_owned(),
            message: scrub.clean(&format!("cannot share the object database: {e}")),
        })?;
    let outcome = gix::worktree::state::checkout(
        &mut index,
        dest,
        objects,
        &gix::progress::Discard,
        &gix::progress::Discard,
        &AtomicBool::new(false),
        opts,
    )
    .map_err(|e| {
        if errors(&e).any(|e| e.is::<std::io::Error>()) {
            dest_err(chain(&e))
        } else {
            git_err("cannot check out the tree", e)
        }
    })?;
    if let Some(collision) = outcome.collisions.first() {
        return Err(dest_err(format!(
            "refusing to check out {:?}: another entry of the tree is already there",
            collision.path
        )));
    }
    if let Some(failed) = outcome.errors.first() {
        return Err(dest_err(format!(
            "{:?}: {}",
            failed.path,
            chain(&failed.error)
        )));
    }
    index
        .write(Default::default())
        .map_err(|e| git_err("cannot write the index", e))?;
    let written = index
        .entries()
        .iter()
        .filter(|e| matches!(e.mode, Mode::FILE | Mode::FILE_EXECUTABLE | Mode::SYMLINK))
        .count();
    Ok(written as u64)
}

/// `refusing to check out unsafe path "src/.git": The .git name may never be used`, from the
/// error gix raises while building the index.
fn unsafe_path(err: &gix::Error) -> String {
    let (mut path, mut why) = (None, None);
    for e in errors(err) {
        let text = e.to_string();
        if let Some(p) = text
            .strip_prefix("The path ")
            .and_then(|t| t.strip_suffix(" is invalid"))
        {
            path.get_or_insert(p.to_owned());
        }
        if let Some(component) = e.downcast_ref::<gix::validate::path::component::Error>() {
            why.get_or_insert(component.to_string());
        }
    }
    match (path, why) {
        (Some(path), Some(why)) => format!("refusing to check out unsafe path {path}: {why}"),
        _ => format!("refusing to check out unsafe path: {}", chain(err)),
    }
}

/// A gix error and all its sources.
fn errors(err: &gix::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    err.iter_errors()
        .flat_map(|e| std::iter::successors(Some(e), |e| e.source()))
}

/// `a: b: c` from a gix error and its sources, each message once.
fn chain(err: &gix::Error) -> String {
    let texts: Vec<String> = errors(err).map(|e| e.to_string()).collect();
    super::fetch::dedup_chain(&texts)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

    use gix::objs::tree::{Entry, EntryKind};

    use super::*;

    fn scrub() -> Scrubber {
        Scrubber::new("http://git.example/r.git", None, "http://git.example/r.git")
    }

    /// A fresh repository (as the clone step makes it) in a new temporary directory.
    fn new_repo() -> (tempfile::TempDir, gix::Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = super::super::fetch::init_repo(dir.path()).unwrap();
        (dir, repo)
    }

    fn blob(repo: &gix::Repository, data: &str) -> ObjectId {
        repo.write_blob(data).unwrap().detach()
    }

    /// A tree object with exactly these entries, whatever their names (as a hostile server may
    /// send them).
    fn tree(repo: &gix::Repository, entries: &[(&str, EntryKind, ObjectId)]) -> ObjectId {
        let mut entries: Vec<Entry> = entries
            .iter()
            .map(|(name, kind, oid)| Entry {
                mode: (*kind).into(),
                filename: (*name).into(),
                oid: *oid,
            })
            .collect();
        entries.sort();
        repo.write_object(gix::objs::Tree { entries })
            .unwrap()
            .detach()
    }

    /// The checkout under test, as the clone calls it.
    fn check_out(repo: &gix::Repository, root: gix::ObjectId, dir: &Path) -> Result<u64, CloneError> {
        checkout(repo, root, dir, &scrub(), "http://git.example/r.git")
    }

    fn git_in(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every path under `dir` other than `.git`, relative, sorted.
    fn listing(dir: &Path) -> Vec<PathBuf> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path == root.join(".git") {
                    continue;
                }
                out.push(path.strip_prefix(root).unwrap().to_owned());
                if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                    walk(root, &path, out);
                }
            }
        }
        let mut out = vec![];
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[test]
    fn files_links_and_submodules_are_checked_out_and_git_status_is_clean() {
        let (dir, repo) = new_repo();
        let readme = blob(&repo, "hello\n");
        let script = blob(&repo, "#!/bin/sh\necho build\n");
        let main = blob(&repo, "package main\n");
        let link = blob(&repo, "README.md");
        let src = tree(&repo, &[("main.go", EntryKind::Blob, main)]);
        let submodule = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").unwrap();
        let vendor = tree(&repo, &[("lib", EntryKind::Commit, submodule)]);
        let root = tree(
            &repo,
            &[
                ("README.md", EntryKind::Blob, readme),
                ("build.sh", EntryKind::BlobExecutable, script),
                ("link", EntryKind::Link, link),
                ("src", EntryKind::Tree, src),
                ("vendor", EntryKind::Tree, vendor),
            ],
        );
        let kiln = gix::actor::SignatureRef {
            name: "kiln".into(),
            email: "kiln@localhost".into(),
            time: "1700000000 +0000",
        };
        let commit = repo
            .new_commit_as(kiln, kiln, "test", root, None::<ObjectId>)
            .unwrap()
            .id;
        set_detached_head(&repo, commit, &scrub(), "http://git.example/r.git").unwrap();

        let files = check_out(&repo, root, dir.path())
        .unwrap();
        assert_eq!(files, 4, "three files and a symlink");
        let path = |p: &str| dir.path().join(p);
        assert_eq!(
            std::fs::read_to_string(path("README.md")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            std::fs::read_to_string(path("src/main.go")).unwrap(),
            "package main\n"
        );
        let mode = |p: &str| std::fs::metadata(path(p)).unwrap().permissions().mode();
        assert_ne!(mode("build.sh") & 0o111, 0, "build.sh is executable");
        assert_eq!(mode("README.md") & 0o111, 0, "README.md is not executable");
        assert!(std::fs::symlink_metadata(path("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_link(path("link")).unwrap(),
            Path::new("README.md")
        );
        assert!(
            path("vendor/lib").is_dir(),
            "a submodule is an empty directory"
        );
        assert_eq!(std::fs::read_dir(path("vendor/lib")).unwrap().count(), 0);
        // The index holds the stat data of what was written: git finds nothing to rehash or report.
        let index = gix::open(dir.path()).unwrap().open_index().unwrap();
        assert_eq!(index.entries().len(), 5);
        for (entry, path) in index.entries().iter().map(|e| (e, e.path(&index))) {
            if entry.mode == gix::index::entry::Mode::COMMIT {
                continue;
            }
            let meta = std::fs::symlink_metadata(dir.path().join(path.to_string())).unwrap();
            assert_eq!(u64::from(entry.stat.size), meta.len(), "{path}");
            assert!(
                entry.stat.mtime.secs > 0 && entry.stat.ino > 0,
                "{path}: {:?}",
                entry.stat
            );
        }
        assert_eq!(git_in(dir.path(), &["status", "--porcelain"]), "");
        assert_eq!(git_in(dir.path(), &["diff-files", "--name-only"]), "");
        assert_eq!(
            git_in(dir.path(), &["rev-parse", "HEAD"]).trim(),
            commit.to_string()
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            ".git",
            ".GIT",
            "a/b",
            "/etc/passwd",
            "../outside",
        ] {
            let (dir, repo) = new_repo();
            let content = blob(&repo, "x\n");
            let root = tree(&repo, &[(bad, EntryKind::Blob, content)]);
            let err = check_out(&repo, root, dir.path())
            .expect_err(bad);
            println!("{bad:?}: {err}");
            assert!(
                matches!(err, CloneError::Destination { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(
                err.to_string().starts_with(&format!(
                    "cannot check out into {}: refusing to check out unsafe path {bad:?}: ",
                    dir.path().display()
                )),
                "{bad:?}: {err}"
            );
            assert_eq!(
                listing(dir.path()),
                Vec::<PathBuf>::new(),
                "{bad:?}: nothing written"
            );
        }
        // Deeper down, and as a directory: `src/.git/config` would write into a repository.
        let (dir, repo) = new_repo();
        let config = blob(&repo, "[core]\n");
        let dot_git = tree(&repo, &[("config", EntryKind::Blob, config)]);
        let src = tree(&repo, &[(".git", EntryKind::Tree, dot_git)]);
        let root = tree(&repo, &[("src", EntryKind::Tree, src)]);
        let err = check_out(&repo, root, dir.path())
        .unwrap_err();
        assert!(matches!(err, CloneError::Destination { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("refusing to check out unsafe path"),
            "{err}"
        );
        assert!(
            err.to_string().contains("src/.git"),
            "the message names the path: {err}"
        );
        assert_eq!(listing(dir.path()), Vec::<PathBuf>::new());

        // Names that merely look alike are fine.
        let (dir, repo) = new_repo();
        let content = blob(&repo, "target\n");
        let src = tree(&repo, &[("main.go", EntryKind::Blob, content)]);
        let root = tree(
            &repo,
            &[
                (".gitignore", EntryKind::Blob, content),
                ("src", EntryKind::Tree, src),
            ],
        );
        let files = check_out(&repo, root, dir.path())
        .unwrap();
        assert_eq!(files, 2);
    }

    /// A hostile tree that holds a symlink and a directory of the same name: the files are
    /// written first, the link then collides, and nothing is written through it.
    #[test]
    fn a_symlink_is_never_written_through() {
        let outside = tempfile::tempdir().unwrap();
        let (dir, repo) = new_repo();
        let target = blob(&repo, outside.path().to_str().unwrap());
        let content = blob(&repo, "pwned\n");
        let sub = tree(&repo, &[("x", EntryKind::Blob, content)]);
        let root = tree(
            &repo,
            &[("a", EntryKind::Link, target), ("a", EntryKind::Tree, sub)],
        );
        let err = check_out(&repo, root, dir.path())
        .unwrap_err();
        assert!(matches!(err, CloneError::Destination { .. }), "{err:?}");
        println!("{err}");
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing outside"
        );
        assert!(std::fs::symlink_metadata(dir.path().join("a"))
            .unwrap()
            .is_dir());
    }
}
