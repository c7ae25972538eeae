//! A throwaway PostgreSQL server for the tests: `initdb` into a temporary
//! directory, `pg_ctl start` on a free port (sockets in the same
//! directory), stopped and deleted on drop. Run as the `postgres` user when
//! the tests run as root (initdb refuses root).
//!
//! Without PostgreSQL installed, [`Pg::start`] returns `None` and the test
//! prints that it is skipped, unless `AUDITLOG_REQUIRE_POSTGRES=1` (set by
//! `.ci/run`), which makes a missing PostgreSQL a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Pg {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    as_postgres: bool,
    pub port: u16,
}

fn find_bindir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    });
    if let Some(dir) = on_path {
        // initdb on PATH is often a link into the real directory, which
        // also holds createdb and psql.
        return Some(
            std::fs::canonicalize(dir.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(dir),
        );
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()).then_some(dir)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pg {
    /// Starts a server, or `None` (after saying so) when PostgreSQL is not
    /// installed and not required.
    pub fn start(test: &str) -> Option<Pg> {
        let Some(bindir) = find_bindir() else {
            super::skip_unless_required(
                "AUDITLOG_REQUIRE_POSTGRES",
                test,
                "PostgreSQL (initdb, pg_ctl)",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success());
        }
        let mut pg = Pg {
            dir,
            bindir,
            as_postgres,
            port: 0,
        };
        let data = pg.data_dir();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A few tries: another process may take the port between the probe
        // and the start.
        for _ in 0..5 {
            pg.port = free_port();
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
                 -c max_connections=200",
                pg.port,
                pg.dir.path().display()
            );
            let log = pg.dir.path().join("server.log");
            let out = pg.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-o",
                    &opts,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "start",
                ],
            );
            if out.status.success() {
                return Some(pg);
            }
        }
        panic!(
            "pg_ctl start failed: {}",
            std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(Path::new("/")).output().unwrap()
    }

    /// The URL of database `db` (created by [`Pg::create_db`], or
    /// `postgres`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs a client tool (`createdb`, `psql`) against this server.
    fn client(&self, tool: &str, args: &[&str]) -> Output {
        let port = self.port.to_string();
        let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
        all.extend_from_slice(args);
        let out = self.run(tool, &all);
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Creates a database and returns its URL.
    pub fn create_db(&self, db: &str) -> String {
        self.client("createdb", &[db]);
        self.url(db)
    }

    /// Stops the server as a crash would (`-m immediate`: no shutdown
    /// checkpoint, every connection cut; recovery replays the WAL on start)
    /// and starts it again on the same port with the same options.
    pub fn crash_and_restart(&self) {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-l",
                log.to_str().unwrap(),
                "-w",
                "restart",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl restart: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The rows of database `db`'s `auditlog_*` tables (the schema
    /// version table left out) as SQL `INSERT`s, from `pg_dump`.
    /// Lines starting with a backslash are dropped (see below): a text
    /// value with such a line would lose it, and none in these tests has
    /// one (bytea values start on their `INSERT` line).
    pub fn dump_rows(&self, db: &str) -> String {
        let out = self.client(
            "pg_dump",
            &[
                "--data-only",
                "--inserts",
                "--table=auditlog_*",
                "--exclude-table=auditlog_schema",
                db,
            ],
        );
        // Newer pg_dump releases wrap the dump in psql meta-commands
        // (`\restrict`), which `psql -c` does not take: SQL only.
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('\\'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs SQL with psql (for tampering tests): stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.client(
            "psql",
            &["-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
