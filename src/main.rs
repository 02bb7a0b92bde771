//! The `tlc` command line: train, evaluate, inspect, run and compress (TLC) image classifiers,
//! and a quick demo of the engine.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // The CLI is the application: training's per-step buffers stay in the process (see the doc).
    tlc_kernels::alloc::keep_freed_memory();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
