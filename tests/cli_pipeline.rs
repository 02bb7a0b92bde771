//! `tlc pipeline`: the whole story on a small Fashion-MNIST subset — train, TLC, calibrate,
//! collapse, measure — and a second start that resumes every stage instead of redoing it.

mod common;

use common::{fails, ok, TempDir};

#[test]
fn the_pipeline_runs_end_to_end_and_a_second_start_resumes() {
    let dir = TempDir::new("pipeline");
    let out = dir.path("run");
    let args = [
        "--threads",
        "2",
        "pipeline",
        "--out",
        out.to_str().unwrap(),
        "--width",
        "0.0625",
        "--epochs",
        "1",
        "--train-limit",
        "2000",
        "--target-removed",
        "1",
        "--final-epochs",
        "1",
        "--bench-seconds",
        "0.05",
    ];
    let first = ok(&args);
    for stage in [
        "$ tlc train",
        "$ tlc compress",
        "$ tlc calibrate",
        "$ tlc collapse",
        "TLC pipeline summary",
    ] {
        assert!(first.contains(stage), "`{stage}` missing from:\n{first}");
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["network"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["trained", "TLC (linearized)", "collapsed"]);
    let f = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    assert_eq!(f(0, "activations_removed"), 0.0);
    assert_eq!(f(1, "activations_removed"), 1.0);
    // Collapsing is exact: the linearized and collapsed networks classify alike (a tie broken
    // differently by rounding may flip an image).
    assert!(
        (f(1, "test_acc") - f(2, "test_acc")).abs() <= 2e-4,
        "{rows:?}"
    );
    // 16 steps of training: above chance (10 %), no more is asked of so short a run.
    assert!(f(1, "test_acc") > 0.15, "{rows:?}");
    // The collapse changed the network either way the cost model (timed here, so either may
    // win: 0.0082 against 0.0071 ms in one run) decides the one linear chain: merged, fewer
    // layers (two 3x3s become one wider kernel, which may hold more weights than both), or kept
    // apart with its OFF channels pruned, fewer parameters.
    assert!(
        f(2, "layers") < f(1, "layers") || f(2, "params") < f(1, "params"),
        "{rows:?}"
    );
    for r in 0..3 {
        assert!(f(r, "median_ms") > 0.0 && f(r, "p90_ms") >= f(r, "median_ms"));
    }
    assert!(std::fs::read_to_string(out.join("summary.md"))
        .unwrap()
        .contains("| collapsed |"));
    assert!(out.join("tlc/accuracy.svg").is_file());

    // Started again: training and TLC resume finished runs instead of redoing them.
    let again = ok(&args);
    assert!(again.contains("already finished 1 of 1 epochs"), "{again}");
    assert!(again.contains("resuming"), "{again}");
    assert!(!again.contains("== iteration 1"), "{again}");

    // A data set that is not there fails before any work, naming what to do.
    let missing = dir.path("nowhere");
    let e = fails(&[
        "pipeline",
        "--out",
        dir.path("other").to_str().unwrap(),
        "--data",
        missing.to_str().unwrap(),
    ]);
    assert!(e.contains("dataset-fashion-mnist"), "{e}");
}
