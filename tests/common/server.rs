//! A real `auditlog serve` in a child process on a free port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use auditlog::core::note::VerifierKey;
use auditlog::proto::audit_log_client::AuditLogClient;

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data: tempfile::TempDir,
}

pub fn start(config: Option<&str>) -> Server {
    start_in(tempfile::tempdir().unwrap(), config, &[])
}

/// Starts a server on an existing data directory, with extra environment.
pub fn start_in(data: tempfile::TempDir, config: Option<&str>, env: &[(&str, &str)]) -> Server {
    start_with(data, config, env, &[])
}

/// Starts a server with extra environment and arguments.
pub fn start_with(
    data: tempfile::TempDir,
    config: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditlog"));
    cmd.envs(env.iter().copied());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(c) = config {
        let path = data.path().join("auditlog.toml");
        std::fs::write(&path, c).unwrap();
        cmd.arg("--config").arg(path);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_owned();
    Server { child, addr, data }
}

impl Server {
    pub async fn client(&self) -> AuditLogClient<tonic::transport::Channel> {
        AuditLogClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }
    pub fn verifier(&self) -> VerifierKey {
        auditlog::keys::load_verifiers(&self.data.path().join("keys/verifier.pub")).unwrap()[0]
            .clone()
    }
    pub fn stop(mut self) -> tempfile::TempDir {
        let pid = self.child.id() as i32;
        // SIGTERM: drain and exit cleanly.
        assert_eq!(send_sigterm(pid), 0);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }
}

impl Server {
    /// The data directory of a server that has exited (or is killed now).
    pub fn into_data(mut self) -> tempfile::TempDir {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }
}

impl Drop for Server {
    /// A test that fails before `stop` leaves no server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn send_sigterm(pid: i32) -> i32 {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .code()
        .unwrap()
}

impl Server {
    /// Runs the CLI against this server: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
            .args(args)
            .args(["--server", &format!("http://{}", self.addr)])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}
