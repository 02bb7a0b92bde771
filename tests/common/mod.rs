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
