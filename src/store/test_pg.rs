//! Test support: a throw-away PostgreSQL cluster, never a mock.
//!
//! One cluster per test process, started on first use: `initdb` into a temporary
//! directory, `pg_ctl` on a free loopback port, run as an unprivileged user when the
//! tests run as root (PostgreSQL refuses root), under `nice`. Every test takes a fresh
//! database of its own ([`fresh_database`]). A watchdog process stops the cluster and
//! deletes its directory once the test process is gone, however it ended.
//!
//! Where the PostgreSQL server binaries are missing, [`fresh_database`] prints a loud
//! `SKIPPED:` line and answers `None` (CI installs them: .ci/install-postgres.sh).
//!
//! Shared by the unit tests (`crate::store::test_pg`) and the integration tests
//! (tests/common includes this file), so it uses nothing of the crate.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use diesel::{Connection, PgConnection, RunQueryDsl};

/// A running throw-away cluster.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    dir: PathBuf,
    pg_ctl: PathBuf,
    user: Option<String>,
}

static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The URL of a new, empty database on this process's cluster (started on first use),
/// or `None` after printing `SKIPPED: <why>` when PostgreSQL is not installed. Panics
/// when it is installed but cannot be started: that is a failure, not a skip.
pub fn fresh_database(test: &str) -> Option<String> {
    let cluster = cluster(test)?;
    let name = format!(
        "vulcan_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = PgConnection::establish(&cluster.url("postgres"))
        .unwrap_or_else(|e| panic!("connect to the test cluster: {e}"));
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    Some(cluster.url(&name))
}

/// This process's cluster, started on first use (see [`fresh_database`]).
pub fn cluster(test: &str) -> Option<&'static PgCluster> {
    match CLUSTER.get_or_init(PgCluster::start) {
        Ok(c) => Some(c),
        Err(why) if why.starts_with("not installed") => {
            println!("SKIPPED: {test} on PostgreSQL: {why}");
            eprintln!("SKIPPED: {test} on PostgreSQL: {why}");
            None
        }
        Err(why) => panic!("cannot start the test PostgreSQL cluster: {why}"),
    }
}

/// The directory holding `initdb` and `pg_ctl`: on PATH, or Debian's
/// /usr/lib/postgresql/<version>/bin (newest version first).
fn bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Who runs the server: as root, the `postgres` user Debian's package creates (else
/// `nobody`); otherwise the current user.
fn server_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
}

/// `program args…`, as the server user when there is one, at low priority.
fn as_server_user(user: Option<&nix::unistd::User>, program: &Path) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10"]);
    if let Some(u) = user {
        cmd.args(["runuser", "-u", &u.name, "--"]);
    }
    cmd.arg(program);
    cmd.stdin(Stdio::null());
    cmd
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

impl PgCluster {
    fn start() -> Result<PgCluster, String> {
        let bin = bin_dir().ok_or_else(|| {
            "not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin; \
             apt-get install postgresql)"
                .to_string()
        })?;
        let user = server_user();
        let dir = tempfile::Builder::new()
            .prefix("vulcan-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        if let Some(u) = &user {
            std::os::unix::fs::chown(&dir, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let data = dir.join("data");
        let mut initdb = as_server_user(user.as_ref(), &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        // The watchdog: once this process is gone, stop the cluster and delete it.
        let pg_ctl = bin.join("pg_ctl");
        let runas = user
            .as_ref()
            .map(|u| format!("runuser -u {} -- ", u.name))
            .unwrap_or_default();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {runas}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = data.display(),
            dir = dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("watchdog: {e}"))?;
        // A free port can be taken between the probe and the bind: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let mut start = as_server_user(user.as_ref(), &pg_ctl);
            start
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off \
                     -c synchronous_commit=off -c full_page_writes=off \
                     -c max_connections=400 -c shared_buffers=32MB",
                    dir = dir.display()
                ))
                .arg("start");
            match run(start, "pg_ctl start") {
                Ok(()) => {
                    return Ok(PgCluster {
                        port,
                        dir,
                        pg_ctl,
                        user: user.map(|u| u.name),
                    })
                }
                Err(e) => last = e,
            }
        }
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        Err(format!("{last}\nserver log:\n{log}"))
    }

    /// The URL of database `db` on this cluster, as the superuser (`postgres` is the
    /// maintenance database).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The cluster's directory (data, socket, server log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Restart the server (`pg_ctl restart -m fast`: every connection is dropped, as in
    /// a real restart) and wait until it accepts connections again.
    pub fn restart(&self) {
        let user = self
            .user
            .as_deref()
            .and_then(|name| nix::unistd::User::from_name(name).ok().flatten());
        let mut cmd = as_server_user(user.as_ref(), &self.pg_ctl);
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-m", "fast", "restart"]);
        run(cmd, "pg_ctl restart").unwrap_or_else(|e| panic!("{e}"));
    }
}
