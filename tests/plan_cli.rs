//! `tlc collapse` and `tlc bench` end to end on checkpoints written here (no data needed).

use std::path::PathBuf;
use std::process::{Command, Output};
use tlc_engine::passes::collapse;
use tlc_engine::testing::assert_close;
use tlc_engine::tlc::{candidates, linearize, ChannelStats, LayerScore, ScoreSource};
use tlc_engine::{Model, Rng, Tensor};
use tlc_models::checkpoint::{Checkpoint, GraphSource};
use tlc_models::zoo::{build, Arch, ArchSpec};

const TLC: &str = env!("CARGO_BIN_EXE_tlc");

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlc-plan-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tlc(args: &[&str]) -> Output {
    Command::new(TLC)
        .args(args)
        .args(["--threads", "2"])
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = tlc(args);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "tlc {args:?}: {o}\n{e}");
    o
}

/// resnet18-cifar at width 0.125 with random BN statistics, every relu1 linearized by TLC.
fn linearized_resnet() -> (Model, ArchSpec) {
    let spec = ArchSpec {
        width: 0.125,
        image: [16, 16],
        ..ArchSpec::new(Arch::Resnet18Cifar)
    };
    let (g, init) = build(&spec).unwrap();
    let mut rng = Rng::new(3);
    let mut m = Model::init(g, init, &mut rng).unwrap();
    let names: Vec<String> = m.to_store().names().map(String::from).collect();
    for name in names {
        let shape = m.get(&name).unwrap().shape().to_vec();
        let range = match name.rsplit('.').next().unwrap() {
            "running_mean" | "bias" => (-0.3, 0.3),
            "running_var" => (0.5, 1.5),
            "weight" if shape.len() == 1 => (0.5, 1.5),
            _ => continue,
        };
        *m.get_mut(&name).unwrap() = Tensor::rand_uniform(&shape, range.0, range.1, &mut rng);
    }
    loop {
        let g = m.graph().clone();
        let next = candidates(&g).unwrap().into_iter().find(|c| {
            g.node(c.act).name.ends_with("relu1") && matches!(c.source, ScoreSource::BatchNorm(_))
        });
        let Some(c) = next else { break };
        let ScoreSource::BatchNorm(bn) = c.source else {
            unreachable!()
        };
        let bn = g.node(bn).name.clone();
        let stats = ChannelStats {
            shift: m.get(&format!("{bn}.bias")).unwrap().to_vec(),
            scale: m.get(&format!("{bn}.weight")).unwrap().to_vec(),
        };
        linearize(&mut m, &c, &LayerScore::new(&stats)).unwrap();
    }
    (m, spec)
}

#[test]
fn collapse_writes_a_self_describing_checkpoint_and_bench_runs_it() {
    let dir = tmp("collapse");
    let (m, spec) = linearized_resnet();
    let src = dir.join("linearized.safetensors");
    Checkpoint::of_model(m.clone(), Some(spec.clone()))
        .save(&src)
        .unwrap();
    let out = dir.join("collapsed.safetensors");
    let text = ok(&[
        "collapse",
        "--checkpoint",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--merge-all",
    ]);
    assert!(text.contains("folded 20 batch-norm(s)"), "{text}");
    assert!(
        text.contains("merged 3 layers into layer1.0.conv1+conv2+residual: conv 5x5/s1"),
        "{text}"
    );
    assert!(
        text.contains("merged 3 layers into layer2.0.conv1+conv2+0: conv 7x7/s2"),
        "{text}"
    );
    assert!(text.contains("absorbed 8 add(s)"), "{text}");
    assert!(text.contains("relative"), "{text}");

    // The stored graph wins over the spec, loaded with or without the architecture flags.
    let loaded = Checkpoint::load(&out, None).unwrap();
    assert_eq!(loaded.graph_source, GraphSource::Stored);
    let c = &loaded.checkpoint.model;
    assert_eq!(c.graph(), collapse(&m).unwrap().graph());
    assert_eq!(
        Checkpoint::load(&out, Some(&spec)).unwrap().graph_source,
        GraphSource::Stored
    );
    let x = Tensor::randn(&[2, 3, 16, 16], &mut Rng::new(4));
    assert_close(
        &c.eval(&x).unwrap(),
        &m.eval(&x).unwrap(),
        1e-4,
        "collapsed file",
    );

    // Bench, text and JSON.
    let text = ok(&[
        "bench",
        "--checkpoint",
        out.to_str().unwrap(),
        "--iters",
        "5",
        "--eval",
    ]);
    assert!(text.contains("latency: median"), "{text}");
    assert!(text.contains("Model::eval: median"), "{text}");
    assert!(text.contains("conv5x5/s1 +bias+relu"), "{text}");
    let json = ok(&[
        "bench",
        "--checkpoint",
        src.to_str().unwrap(),
        "--iters",
        "5",
        "--batch",
        "2",
        "--input-shape",
        "3,24,24",
        "--json",
    ]);
    assert_eq!(json.trim().lines().count(), 1, "{json}");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    for key in ["median_ms", "p90_ms"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {json}");
    }
    assert!(v["median_ms"].as_f64() <= v["p90_ms"].as_f64());
    assert!(v["peak_rss_mb"].as_f64().unwrap_or(1.0) > 0.0);
    assert_eq!(v["batch"], 2);
    assert_eq!(v["input_shape"], serde_json::json!([3, 24, 24]));
    let steps = v["steps"].as_array().unwrap();
    assert!(steps.len() > 10);
    assert!(steps
        .iter()
        .all(|s| s["name"].is_string() && s["median_ms"].is_f64()));
    assert_eq!(v["in_pool"], false);

    // Timed from a pool thread: the same report, flagged.
    let json = ok(&[
        "bench",
        "--checkpoint",
        src.to_str().unwrap(),
        "--iters",
        "5",
        "--in-pool",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["in_pool"], true, "{json}");
    assert!(v["runs"].as_u64().unwrap() >= 5, "{json}");
    assert!(v["steps"].as_array().unwrap().len() == steps.len());

    let err = tlc(&[
        "bench",
        "--checkpoint",
        src.to_str().unwrap(),
        "--input-shape",
        "5,16,16",
    ]);
    assert_eq!(err.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The number after `word ` in the `test: ` summary line of `tlc eval`.
fn eval_number(stdout: &str, word: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("test: "))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let rest = line.split(&format!("{word} ")).nth(1).unwrap();
    let num = rest
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('%');
    num.parse().unwrap()
}

#[test]
fn sixteen_bit_weights_in_bench_and_eval() {
    let dir = tmp("half");
    let (m, spec) = linearized_resnet();
    let ckpt = dir.join("linearized.safetensors");
    Checkpoint::of_model(m, Some(spec)).save(&ckpt).unwrap();
    let ckpt_s = ckpt.to_str().unwrap();

    let text = ok(&[
        "bench",
        "--checkpoint",
        ckpt_s,
        "--iters",
        "5",
        "--weights",
        "f16",
    ]);
    for want in [
        "weights: f16",
        "as f32",
        "logits vs the f32 plan",
        "conv3x3/s1 f16",
    ] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }
    let json = ok(&[
        "bench",
        "--checkpoint",
        ckpt_s,
        "--iters",
        "5",
        "--batch",
        "2",
        "--weights",
        "bf16",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["weights"], "bf16");
    let (bytes, f32_bytes) = (
        v["weight_bytes"].as_u64().unwrap(),
        v["f32_weight_bytes"].as_u64(),
    );
    assert_eq!(Some(2 * bytes), f32_bytes, "{json}");
    assert!(v["param_bytes"].as_u64().unwrap() > bytes);
    let rel = v["max_rel_diff"].as_f64().unwrap();
    assert!(rel > 0.0 && rel < 2e-2, "{json}");
    assert!(v["max_abs_diff"].as_f64().unwrap() > 0.0);
    // f32 is the default, and has nothing to compare with.
    let json = ok(&["bench", "--checkpoint", ckpt_s, "--iters", "5", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["weights"], "f32");
    assert!(v.get("max_rel_diff").is_none());
    let err = tlc(&["bench", "--checkpoint", ckpt_s, "--weights", "f8"]);
    assert_eq!(
        err.status.code(),
        Some(2),
        "clap rejects an unknown storage"
    );

    // eval through the plan on Fashion-MNIST (a random 1-channel 28x28 network: the losses are
    // what can be compared; accuracies near chance flip with any rounding).
    let spec = ArchSpec {
        width: 0.125,
        in_ch: 1,
        image: [28, 28],
        ..ArchSpec::new(Arch::Resnet18Cifar)
    };
    let (g, init) = build(&spec).unwrap();
    let m = Model::init(g, init, &mut Rng::new(5)).unwrap();
    let fm = dir.join("fmnist.safetensors");
    Checkpoint::of_model(m, Some(spec)).save(&fm).unwrap();
    let fm_s = fm.to_str().unwrap();
    let eval = |weights: Option<&str>| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            fm_s,
            "--data",
            "fashion-mnist",
            "--limit",
            "300",
            "--batch",
            "128",
        ];
        if let Some(w) = weights {
            args.extend(["--weights", w]);
        }
        ok(&args)
    };
    let executor = eval(None);
    let plan = eval(Some("f32"));
    let bf16 = eval(Some("bf16"));
    assert!(!executor.contains("inference plan"), "{executor}");
    assert!(plan.contains("(inference plan, f32 weights)"), "{plan}");
    assert!(bf16.contains("(inference plan, bf16 weights)"), "{bf16}");
    let loss = |s: &str| eval_number(s, "loss");
    assert_eq!(loss(&plan), loss(&executor), "{plan}\n{executor}");
    assert!(
        (eval_number(&plan, "accuracy") - eval_number(&executor, "accuracy")).abs() <= 0.34,
        "at most one of 300 images may flip: {plan}\n{executor}"
    );
    assert!(
        (loss(&bf16) - loss(&plan)).abs() <= 0.01 * loss(&plan),
        "{bf16}\n{plan}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A report into a pipe its reader closed early (`tlc bench | head -1`) ends the process with
/// SIGPIPE's status, 141, and no panic.
#[test]
fn closed_stdout_pipe_ends_quietly() {
    use std::process::Stdio;
    let mut child = Command::new(TLC)
        .args([
            "bench",
            "--model",
            "resnet18-cifar",
            "--width",
            "0.125",
            "--seconds",
            "0.05",
        ])
        .args(["--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nothing is read: the report's first write after this fails with a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
