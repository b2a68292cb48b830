//! The real `engram` binary, started on a free 127.0.0.1 port for a test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; killed (SIGKILL) when dropped unless stopped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Self::try_start(dir, &[]).expect("server started")
    }

    /// Starts the server with `extra` arguments. Unless they choose an embedder, the
    /// hashing one: a model the machine happens to have cached would change the default
    /// dimension the tests expect.
    pub fn try_start(dir: &Path, extra: &[&str]) -> Result<Server, String> {
        Self::try_start_with(dir, extra, &[], Stdio::inherit())
    }

    /// [`Server::try_start`] with more environment variables, and stderr (the logs) sent to
    /// `stderr`.
    pub fn try_start_with(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Result<Server, String> {
        let chooses = extra.iter().any(|a| a.starts_with("--embedder"));
        let default: &[&str] = if chooses {
            &[]
        } else {
            &["--embedder", "hashing"]
        };
        // A free port unless the test chose one.
        let port: &[&str] = if extra.contains(&"--port") {
            &[]
        } else {
            &["--port", "0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
            .arg("start")
            .args(port)
            .arg("--data-dir")
            .arg(dir)
            .args(default)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            // Logs go to the test's output by default (a pipe nobody drains could fill and
            // block it).
            .stderr(stderr)
            .spawn()
            .expect("spawn engram");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("engram listening on http://") => {
                let base = line
                    .trim()
                    .trim_start_matches("engram listening on ")
                    .to_string();
                Ok(Server { child, base })
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("no listening line ({other:?}); see the log above"))
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
