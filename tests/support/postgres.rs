//! A throwaway PostgreSQL cluster for the suite: Debian's `postgresql` package (`initdb`,
//! `postgres`), started once per test binary run on a free loopback port, each test's store in a
//! database of its own (`kiln_<n>`), so tests stay independent and run in parallel.
//!
//! `KILN_TEST_STORE=postgres` runs the whole suite on it: every [`TestKiln`](super::kiln) and
//! every `kiln serve` process of a test gets a fresh database instead of SQLite under its data
//! dir ([`database_for`]). Tests that need PostgreSQL whatever the switch says (the schema
//! comparison) take a database with [`fresh_database`].
//!
//! The cluster lives under `/tmp/kiln-test-pg-<pid of the test binary>`. Root may not run
//! PostgreSQL, so as root it runs as `nobody`, which owns that directory. The postmaster is a
//! child of a thread that lives as long as the test binary, with `PR_SET_PDEATHSIG` (setpriv
//! `--pdeathsig`): when the binary exits, however it exits, the kernel stops the cluster. A normal
//! exit also removes the directory; a run that was killed leaves it, and the next run removes it
//! (after stopping any postmaster still running there).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What the directories of the clusters are called, `<prefix><pid>`.
const ROOT_PREFIX: &str = "kiln-test-pg-";
/// The cluster's superuser, trusted on loopback (nothing but this machine reaches it).
const USER: &str = "kiln";
/// `nobody`: who runs the cluster when the tests run as root.
const NOBODY: u32 = 65534;

pub struct Cluster {
    pub port: u16,
    /// `/tmp/kiln-test-pg-<pid>`: the data directory `data`, the socket and the server's log.
    pub root: PathBuf,
    pub data: PathBuf,
    bin: PathBuf,
    next_database: AtomicUsize,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
/// A data dir's database, so that a Kiln restarted on the same data dir finds its store again.
static DATABASES: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();

/// Whether the suite runs its stores on PostgreSQL: `KILN_TEST_STORE=postgres` (unset or
/// `sqlite`: SQLite under each data dir).
pub fn enabled() -> bool {
    match std::env::var("KILN_TEST_STORE").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("KILN_TEST_STORE={other:?}: use postgres or sqlite"),
    }
}

/// The URL of the store of `data_dir` when the suite runs on PostgreSQL: a fresh database the
/// first time a data dir is asked for, the same one afterwards. None on SQLite.
pub fn database_for(data_dir: &Path) -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut databases = DATABASES.get_or_init(Mutex::default).lock().unwrap();
    Some(databases.entry(data_dir.to_path_buf()).or_insert_with(fresh_database).clone())
}

/// A new, empty database on the cluster (started on first use); its URL.
pub fn fresh_database() -> String {
    let cluster = cluster();
    let name = format!("kiln_{}", cluster.next_database.fetch_add(1, Ordering::SeqCst));
    cluster.psql("postgres", &format!("CREATE DATABASE {name}"));
    cluster.url(&name)
}

/// The files that hold a database's data: its own directory and the cluster's write-ahead log
/// (shared by every database of the cluster). What a scan for secrets at rest reads.
pub fn database_files(url: &str) -> Vec<PathBuf> {
    let cluster = cluster();
    let name = url.rsplit('/').next().expect("a database URL");
    let oid = cluster.psql("postgres", &format!("SELECT oid FROM pg_database WHERE datname = '{name}'"));
    let mut files = vec![];
    for dir in [cluster.data.join("base").join(oid.trim()), cluster.data.join("pg_wal")] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

impl Cluster {
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs one SQL command with `psql`; its output (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", USER, "-d", database, "-c", sql])
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start() -> Cluster {
        let bin = server_bin_dir();
        remove_stale_clusters();
        let root = std::env::temp_dir().join(format!("{ROOT_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let data = root.join("data");
        let out = server_command(&bin, "initdb", as_root)
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"])
            .current_dir(&root)
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // A port taken between choosing it and binding it: try another.
        for _ in 0..5 {
            let port = super::registry::free_port();
            if let Some(cluster) = Cluster::run(&bin, &root, &data, port, as_root) {
                let cleanup: extern "C" fn() = stop_at_exit;
                unsafe { libc::atexit(cleanup) };
                return cluster;
            }
        }
        panic!("PostgreSQL did not start; its log: {}", std::fs::read_to_string(root.join("postgres.log")).unwrap_or_default());
    }

    /// Starts the postmaster on `port` and waits until it answers; None when it exited (its port
    /// was taken).
    fn run(bin: &Path, root: &Path, data: &Path, port: u16, as_root: bool) -> Option<Cluster> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("postgres.log")).unwrap();
        let mut command = server_command(bin, "postgres", as_root);
        command
            .arg("-D")
            .arg(data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(root)
            // Throwaway data: no fsync (commits still write the WAL to the files, so a scan of
            // them sees every committed row). Every parallel test's Kilns hold connections.
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=500", "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning"])
            // `scripts/bench intake` with KILN_BENCH_PG_STATEMENTS=1 prints where PostgreSQL's time went.
            .args(if std::env::var_os("KILN_BENCH_PG_STATEMENTS").is_some() { &["-c", "shared_preload_libraries=pg_stat_statements", "-c", "pg_stat_statements.track_planning=on"][..] } else { &[][..] })
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // The postmaster's parent is this thread, which never ends: the death signal comes when
        // the test binary exits.
        let (started, child) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut child = command.spawn();
            let pid = child.as_ref().map(|c| c.id()).map_err(|e| e.to_string());
            started.send(pid).unwrap();
            if let Ok(child) = &mut child {
                let _ = child.wait();
            }
            // Ended (a taken port, or the cluster stopped at exit): park, so that a postmaster
            // started by a later try is not this thread's child.
            loop {
                std::thread::park();
            }
        });
        let pid = child.recv().unwrap().expect("start postgres");
        let cluster = Cluster { port, root: root.into(), data: data.into(), bin: bin.into(), next_database: AtomicUsize::new(1) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if !alive(pid) {
                return None;
            }
            let ready = Command::new(bin.join("pg_isready")).args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]).status();
            if ready.is_ok_and(|s| s.success()) {
                *POSTMASTER.lock().unwrap() = Some((pid, root.to_path_buf()));
                return Some(cluster);
            }
            assert!(Instant::now() < deadline, "PostgreSQL on port {port} not ready after 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The running postmaster and the directory to remove at exit.
static POSTMASTER: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

/// At the test binary's exit: stops the cluster (SIGQUIT: immediate shutdown, the data is
/// thrown away anyway) and removes its directory.
extern "C" fn stop_at_exit() {
    let Some((pid, root)) = POSTMASTER.lock().ok().and_then(|mut p| p.take()) else { return };
    stop(pid);
    let _ = std::fs::remove_dir_all(root);
}

fn stop(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGQUIT) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Whether `pid` runs (a zombie, exited but not reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// The clusters of earlier runs whose test binary is gone (killed before it could clean up):
/// their postmaster, if it still runs, is stopped and their directory removed.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.strip_prefix(ROOT_PREFIX).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if alive(owner) {
            continue;
        }
        let pid_file = entry.path().join("data").join("postmaster.pid");
        let postmaster = std::fs::read_to_string(pid_file).ok().and_then(|t| t.lines().next()?.trim().parse::<u32>().ok());
        if let Some(pid) = postmaster {
            let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres");
            if is_postgres {
                stop(pid);
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// `/usr/lib/postgresql/<newest>/bin`.
fn server_bin_dir() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok().into_iter().flatten().flatten();
    let newest = versions
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(v, _)| *v);
    newest.map(|(_, bin)| bin).expect("no /usr/lib/postgresql/*/bin/initdb: install Debian's postgresql (scripts/install-deps does)")
}

/// A server program, as `nobody` when the tests run as root (PostgreSQL refuses to run as root),
/// with a death signal for when its parent ends.
fn server_command(bin: &Path, program: &str, as_root: bool) -> Command {
    let mut command = Command::new("setpriv");
    if as_root {
        command.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups"]);
    }
    command.args(["--pdeathsig", "QUIT", "--"]).arg(bin.join(program));
    command
}
