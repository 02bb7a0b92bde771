//! `tlc compress` and `tlc scores` end to end on Fashion-MNIST: a small BN CNN trained for one
//! epoch goes through two TLC iterations, killed in the middle of the second and resumed; the
//! per-iteration checkpoints describe themselves (Identity nodes, OFF rows exactly zero after
//! fine-tuning, the state in `tlc.compress`), and the report files parse (JSON, CSV, SVG).
//!
//! Needs Fashion-MNIST in /usr/share/datasets/fashion-mnist (`apt-get install -y
//! dataset-fashion-mnist`; `.ci/run` installs it).

use std::path::Path;
use std::time::{Duration, Instant};
use tlc::engine::graph::Op;
use tlc::engine::TensorStore;
use tlc_models::checkpoint::Checkpoint;
use tlc_models::tlc::{report, stored_state, CompressState, StopReason};

mod common;
use common::{fails, kill_at, ok, TempDir};

/// Whether every element of an XML document is closed in order (no XML crate needed).
fn well_formed_xml(doc: &str) -> bool {
    let mut stack: Vec<String> = vec![];
    let mut rest = doc;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let Some(j) = rest.find('>') else {
            return false;
        };
        let tag = &rest[..j];
        rest = &rest[j + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name.trim()) {
                return false;
            }
        } else {
            stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    stack.is_empty() && doc.contains("<svg")
}

fn state_of(path: &Path) -> CompressState {
    let store = TensorStore::load(path).unwrap();
    stored_state(path, &store).unwrap().expect("tlc.compress")
}

#[test]
fn two_iterations_killed_and_resumed_with_reports() {
    let start = Instant::now();
    let dir = TempDir::new("e2e");
    let base = dir.path("base");
    let base_s = base.to_str().unwrap();
    // A ResNet-18 (CIFAR form) at 1/16 width: 44,550 parameters, 17 candidates.
    ok(&[
        "train",
        "--model",
        "resnet18-cifar",
        "--width",
        "0.0625",
        "--in-ch",
        "1",
        "--data",
        "fashion-mnist",
        "--epochs",
        "1",
        "--train-limit",
        "3000",
        "--val-fraction",
        "0.2",
        "--test-limit",
        "500",
        "--batch",
        "32",
        "--lr",
        "0.05",
        "--progress",
        "quiet",
        "--out",
        base_s,
    ]);
    let ckpt = base.join("last.safetensors");
    let ckpt_s = ckpt.to_str().unwrap();

    // scores: the table without data; --json holds only the array.
    let rows: serde_json::Value =
        serde_json::from_str(&ok(&["scores", "--checkpoint", ckpt_s, "--json"])).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 17);
    for r in rows {
        for f in [
            "act",
            "bn",
            "channels",
            "on",
            "off",
            "entropy",
            "mean_error",
        ] {
            assert!(r.get(f).is_some(), "{f} missing in {r}");
        }
        let n = |f: &str| r[f].as_u64().unwrap();
        assert_eq!(n("on") + n("off"), n("channels"));
        let h = r["entropy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&h));
    }
    assert_eq!(rows[16]["act"], "layer4.1.relu2");
    assert_eq!(rows[16]["bn"], "layer4.1.bn2");
    let table = ok(&["scores", "--checkpoint", ckpt_s]);
    assert!(
        table.contains("layer2.0.relu1") && table.contains("entropy"),
        "{table}"
    );

    let out = dir.path("run");
    let out_s = out.to_str().unwrap().to_string();
    let fast = [
        "--rank-batches",
        "1",
        "--eval-batch",
        "200",
        "--epochs",
        "1",
        "--train-eval-limit",
        "500",
    ];

    // --rank-only prints one iteration's ranking and decision, and writes nothing.
    let rank_args = [
        &["compress", "--checkpoint", ckpt_s, "--rank-only"],
        &fast[..],
    ]
    .concat();
    let ranking = ok(&rank_args);
    assert!(ranking.contains("decision: remove "), "{ranking}");
    assert_eq!(
        ranking.matches("<- remove").count(),
        ranking.lines().last().unwrap().split(", ").count()
    );

    // Two iterations, killed in the middle of the second one's ranking.
    let args = [
        &[
            "compress",
            "--checkpoint",
            ckpt_s,
            "--out",
            &out_s,
            "--max-iters",
            "2",
        ],
        &fast[..],
        &["--progress", "plain", "--threads", "2"],
    ]
    .concat();
    kill_at(&args, Duration::from_secs(300), |line| {
        line.starts_with("iteration 2 rank trial 3/")
    });
    // The run holds iteration 1, whole.
    let s1 = state_of(&out.join("last.safetensors"));
    assert_eq!(s1.iterations.len(), 2, "iterations 0 and 1");
    assert!(out.join("iter-01.safetensors").is_file());
    assert!(!out.join("iter-02.safetensors").exists());
    let first: Vec<String> = s1.removed();
    assert!(!first.is_empty());

    // A new run into the same directory is refused; --resume keeps the stored options.
    let e = fails(&args[..args.len() - 2]);
    assert!(e.contains("--resume"), "{e}");
    let e = fails(&["compress", "--out", &out_s, "--resume", "--lr", "0.1"]);
    assert!(e.contains("finetune.lr (stored 0.01, given 0.1)"), "{e}");
    let stdout = ok(&["compress", "--out", &out_s, "--resume"]);
    assert!(
        stdout.contains("resuming") && stdout.contains("after iteration 1"),
        "{stdout}"
    );
    assert!(stdout.contains("stopped: --max-iters"), "{stdout}");

    // The state: iterations 0, 1, 2; iteration 2 ranked what iteration 1 left.
    let s = state_of(&out.join("last.safetensors"));
    assert_eq!(s.iterations.len(), 3);
    assert_eq!(s.stopped, Some(StopReason::MaxIters));
    assert_eq!(s.iterations[1].removed, s1.iterations[1].removed);
    let r2 = s.iterations[2].ranking.as_ref().unwrap();
    assert_eq!(r2.entries.len(), 17 - first.len());
    assert!(r2.entries.iter().all(|e| !first.contains(&e.row.act)));
    let removed = s.removed();
    assert_eq!(s.iterations[2].removed_total, removed.len());
    assert_eq!(s.iterations[2].activations_left, 17 - removed.len());
    for it in &s.iterations[1..] {
        assert_eq!(it.fine_tune.len(), 1, "one fine-tuning epoch");
        assert!(it.val_acc_before_ft.is_some() && it.test_acc.is_some() && it.train_acc.is_some());
    }
    // Passable after one epoch of training on 2400 images (measured ~65-70 %).
    assert!(
        s.iterations[2].val_acc > 0.5,
        "{:?}",
        s.iterations[2].val_acc
    );

    // The last checkpoint: removed activations are Identity, OFF rows exactly zero after
    // fine-tuning, and `tlc eval` reproduces the reported test accuracy from the file alone.
    let last = Checkpoint::load(out.join("iter-02.safetensors"), None).unwrap();
    let model = &last.checkpoint.model;
    for a in &removed {
        let id = model.graph().find(a).unwrap();
        assert_eq!(model.graph().node(id).op, Op::Identity, "{a}");
    }
    let masks = s.masks();
    for m in &masks {
        let t = model.get(&m.param).unwrap();
        let row = t.numel() / t.shape()[0];
        let v = t.to_vec();
        for &c in &m.channels {
            assert!(
                v[c * row..(c + 1) * row].iter().all(|x| *x == 0.0),
                "{}[{c}]",
                m.param
            );
        }
    }
    let best = out.join("compressed.safetensors");
    let ev = ok(&[
        "eval",
        "--checkpoint",
        best.to_str().unwrap(),
        "--limit",
        "500",
    ]);
    let line = ev.lines().find(|l| l.starts_with("test: ")).unwrap();
    let acc: f64 = line
        .rsplit("accuracy ")
        .next()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    let reported = s.iterations[s.best].test_acc.unwrap();
    assert!(
        (acc / 100.0 - reported).abs() < 1e-4,
        "{line} vs {reported}"
    );
    let after = ok(&["scores", "--checkpoint", best.to_str().unwrap(), "--json"]);
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(
        after.as_array().unwrap().len(),
        17 - s.iterations[s.best].removed_total
    );

    // The report: JSON (the state), CSV (a row per iteration, a row per ranked layer), SVG.
    let json: CompressState =
        serde_json::from_str(&std::fs::read_to_string(out.join(report::REPORT_JSON)).unwrap())
            .unwrap();
    assert_eq!(json, s);
    let csv = std::fs::read_to_string(out.join(report::REPORT_CSV)).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], report::REPORT_COLUMNS.join(","));
    assert_eq!(lines.len(), 4);
    for (i, l) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), report::REPORT_COLUMNS.len(), "{l}");
        assert_eq!(f[0], i.to_string());
        let val: f64 = f[6].parse().unwrap();
        assert!((val - s.iterations[i].val_acc).abs() < 1e-12);
    }
    let scores = std::fs::read_to_string(out.join(report::SCORES_CSV)).unwrap();
    let lines: Vec<&str> = scores.lines().collect();
    assert_eq!(lines[0], report::SCORES_COLUMNS.join(","));
    assert_eq!(lines.len(), 1 + 17 + r2.entries.len());
    assert!(lines[1..]
        .iter()
        .all(|l| l.split(',').count() == report::SCORES_COLUMNS.len()));
    for (name, want) in [
        (report::ACCURACY_SVG, "activations removed"),
        (report::ENTROPY_SVG, "layer4.1.relu2"),
    ] {
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(well_formed_xml(&svg), "{name} is not well-formed");
        assert!(svg.contains(want), "{name} lacks `{want}`");
    }
    eprintln!(
        "compress end to end: {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn compress_usage_errors() {
    let e = fails(&["compress", "--out", "/nonexistent/x"]);
    assert!(e.contains("--checkpoint"), "{e}");
    let e = fails(&["compress", "--out", "/nonexistent/x", "--resume"]);
    assert!(e.contains("nothing to resume"), "{e}");
    let e = fails(&["scores", "--checkpoint", "/nonexistent.safetensors"]);
    assert!(e.contains("/nonexistent.safetensors"), "{e}");
}
