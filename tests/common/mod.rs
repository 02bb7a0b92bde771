//! Helpers shared by the CLI end-to-end tests: run the `tlc` binary, check its exit, temporary
//! directories removed on drop.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};

pub const TLC: &str = env!("CARGO_BIN_EXE_tlc");

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("tlc-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tlc(args: &[&str]) -> Output {
    Command::new(TLC)
        .args(args)
        .args(["--threads", "2"])
        .output()
        .expect("the tlc binary runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn ok(args: &[&str]) -> String {
    let out = tlc(args);
    assert!(
        out.status.success(),
        "tlc {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn fails(args: &[&str]) -> String {
    let out = tlc(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "tlc {args:?}: {err}");
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    err
}

/// Run `tlc args` and kill it at the first stderr line for which `at` returns true (or give up
/// after `limit`); asserts it was killed and did not exit cleanly. Returns the lines seen.
pub fn kill_at(
    args: &[&str],
    limit: std::time::Duration,
    mut at: impl FnMut(&str) -> bool,
) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    let mut child = Command::new(TLC)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tlc binary runs");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + limit;
    let mut seen = vec![];
    let killed = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let now = at(&line);
                seen.push(line);
                if now {
                    child.kill().expect("kill the run");
                    break true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => break false,
        }
    };
    let status = child.wait().expect("wait for the run");
    reader.join().expect("the reader thread ends with the pipe");
    assert!(
        killed && !status.success(),
        "the run was not caught ({status}):\n{}",
        seen.join("\n")
    );
    seen
}
