//! `tlc calibrate` and the latency-aware `tlc collapse --cost-table` end to end: a quick table
//! written here, a TLC-linearized ResNet collapsed by it (decisions as the engine makes them,
//! result exact), and the errors a user meets with a missing or broken table.

use tlc_engine::graph::Op;
use tlc_engine::passes::{
    collapse_with, priced_convs, ConvKind, CostModel, CostTable, DeadChannels, DecisionKind,
};
use tlc_engine::testing::{assert_close, randomize_model};
use tlc_engine::tlc::{candidates, linearize, ChannelStats, LayerScore, ScoreSource};
use tlc_engine::{Model, Rng, Tensor};
use tlc_models::checkpoint::Checkpoint;
use tlc_models::zoo::{build, Arch, ArchSpec};

mod common;
use common::{fails, ok, tlc, TempDir};

/// resnet18-cifar at an eighth of the width on 16x16 inputs, random BN statistics and shifts (so
/// channels are ON and OFF), every block's relu1 linearized by TLC's own decisions.
fn linearized_resnet() -> (Model, ArchSpec) {
    let spec = ArchSpec {
        width: 0.125,
        image: [16, 16],
        ..ArchSpec::new(Arch::Resnet18Cifar)
    };
    let (g, init) = build(&spec).unwrap();
    let mut rng = Rng::new(3);
    let mut m = Model::init(g, init, &mut rng).unwrap();
    randomize_model(&mut m, false, &mut rng);
    loop {
        let g = m.graph().clone();
        let next = candidates(&g).unwrap().into_iter().find(|c| {
            g.node(c.act).name.ends_with("relu1") && matches!(c.source, ScoreSource::BatchNorm(_))
        });
        let Some(c) = next else { break };
        let ScoreSource::BatchNorm(bn) = c.source else {
            unreachable!("matched above")
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

/// The `relative` error `tlc collapse` reports for its random-input check.
fn relative_error(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("check on 2 random inputs"))
        .unwrap_or_else(|| panic!("no check line in {stdout}"));
    line.rsplit("relative ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap()
}

#[test]
fn calibrate_writes_a_table_and_collapse_decides_each_chain_by_it() {
    let dir = TempDir::new("calibrate");
    let table_path = dir.path("costs.json");
    let t = table_path.to_str().unwrap();
    let text = ok(&["calibrate", "--quick", "--out", t]);
    assert!(
        text.contains("calibrating") && text.contains("wrote "),
        "{text}"
    );
    let table = CostTable::load(&table_path).unwrap();
    assert_eq!((table.threads, table.batch), (2, 1));
    for kind in ConvKind::ALL {
        assert!(table.entries.iter().any(|e| e.kind == kind), "{kind:?}");
    }
    assert!(table.entries.iter().all(|e| e.ms > 0.0));
    assert!(
        std::fs::read_dir(&dir.0).unwrap().count() == 1,
        "a temporary file was left"
    );

    let (m, spec) = linearized_resnet();
    let src = dir.path("linearized.safetensors");
    Checkpoint::of_model(m.clone(), Some(spec))
        .save(&src)
        .unwrap();
    let out = dir.path("collapsed.safetensors");
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());

    // --checkpoint adds every convolution collapsing that model prices.
    let grid_len = table.entries.len();
    let text = ok(&["calibrate", "--quick", "--checkpoint", s, "--out", t]);
    assert!(
        text.contains("more convolutions: the ones collapsing"),
        "{text}"
    );
    let table = CostTable::load(&table_path).unwrap();
    assert!(table.entries.len() > grid_len);
    // Priced both ways `collapse` may ask: pruned (default) and `--no-prune`.
    for dead in [DeadChannels::Pruned, DeadChannels::Kept] {
        for (spec, hw) in priced_convs(&m, dead).unwrap() {
            let spec = spec.with_bias(true);
            assert!(
                table
                    .entries
                    .iter()
                    .any(|e| e.spec() == spec && e.in_hw == hw),
                "{spec:?} on {hw:?} ({dead:?}) was not measured"
            );
        }
    }

    let text = ok(&["collapse", "--checkpoint", s, "--out", o, "--cost-table", t]);
    eprintln!("{text}");
    assert!(
        text.contains("cost model: measured kernel times from"),
        "{text}"
    );
    assert!(relative_error(&text) < 1e-4, "{text}");

    // The CLI reports what the engine decides with the same table, one line per chain.
    let (expected, decisions) =
        collapse_with(&m, &CostModel::Measured(table), DeadChannels::Pruned).unwrap();
    let chains: Vec<&str> = text.lines().filter(|l| l.starts_with("chain ")).collect();
    assert_eq!(chains.len(), 8, "{text}");
    // Two-layer chains, and the main/downsample branches a merged block may sum (a kind of its
    // own, printed as `branches A + B`).
    for d in decisions.iter().filter(|d| d.layers.len() == 2) {
        let (head, merged) = match d.kind {
            DecisionKind::Chain => (
                format!("chain {} > {} (channels ", d.layers[0], d.layers[1]),
                "-> merge",
            ),
            DecisionKind::Branches => (
                format!("branches {} + {}: ", d.layers[0], d.layers[1]),
                "-> sum",
            ),
        };
        let line = text
            .lines()
            .find(|l| l.starts_with(&head))
            .unwrap_or_else(|| panic!("no line for {head} in {text}"));
        let choice = if d.merges_all() {
            merged
        } else {
            "-> keep apart"
        };
        assert!(
            line.ends_with(choice) && line.contains(" ms"),
            "{line} vs {d:?}"
        );
    }
    let written = Checkpoint::load(&out, None).unwrap().checkpoint.model;
    let pruned = tlc_engine::passes::prune_dead_channels(&expected).unwrap();
    assert_eq!(written.graph(), pruned.graph());
    let x = Tensor::randn(&[2, 3, 16, 16], &mut Rng::new(4));
    assert_close(
        &written.eval(&x).unwrap(),
        &m.eval(&x).unwrap(),
        1e-4,
        "cost-aware collapse vs linearized",
    );
    // A chain kept apart is two convolutions in the result, a merged one is one.
    let convs = |g: &tlc_engine::Graph| {
        g.nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Conv2d(_)))
            .count()
    };
    let kept = decisions
        .iter()
        .filter(|d| d.layers.len() == 2 && d.keeps_all())
        .count();
    assert!(convs(written.graph()) >= kept * 2, "{text}");

    // Without a table, MAC counts decide, and say so.
    let text = ok(&["collapse", "--checkpoint", s, "--out", o]);
    assert!(
        text.contains("cost model: multiply-accumulate counts"),
        "{text}"
    );
    assert!(text.contains("MMAC"), "{text}");
    assert!(relative_error(&text) < 1e-4, "{text}");
    // --merge-all merges every exact chain and takes no table.
    let text = ok(&["collapse", "--checkpoint", s, "--out", o, "--merge-all"]);
    assert!(
        text.contains("merged 3 layers into layer1.0.conv1+conv2+residual"),
        "{text}"
    );
    let both = tlc(&[
        "collapse",
        "--checkpoint",
        s,
        "--out",
        o,
        "--merge-all",
        "--cost-table",
        t,
    ]);
    assert!(!both.status.success());
}

#[test]
fn a_missing_or_broken_cost_table_is_refused_with_a_clear_error() {
    let dir = TempDir::new("bad-table");
    let (m, spec) = linearized_resnet();
    let src = dir.path("linearized.safetensors");
    Checkpoint::of_model(m, Some(spec)).save(&src).unwrap();
    let s = src.to_str().unwrap();
    let out = dir.path("out.safetensors");
    let o = out.to_str().unwrap();
    let collapse_with_table = |table: &str| {
        fails(&[
            "collapse",
            "--checkpoint",
            s,
            "--out",
            o,
            "--cost-table",
            table,
        ])
    };

    let missing = dir.path("missing.json");
    let err = collapse_with_table(missing.to_str().unwrap());
    assert!(
        err.contains("--cost-table") && err.contains("does not exist"),
        "{err}"
    );

    let broken = dir.path("broken.json");
    std::fs::write(&broken, "{ \"format\": \"tlc-cost-table\", ").unwrap();
    let err = collapse_with_table(broken.to_str().unwrap());
    assert!(err.contains("not a tlc cost table"), "{err}");
    assert!(err.contains("tlc calibrate"), "{err}");

    let quick = dir.path("quick.json");
    ok(&["calibrate", "--quick", "--out", quick.to_str().unwrap()]);
    let mut table = CostTable::load(&quick).unwrap();
    table.entries.retain(|e| e.kind != ConvKind::Depthwise);
    let partial = dir.path("partial.json");
    std::fs::write(&partial, table.to_json()).unwrap();
    let err = collapse_with_table(partial.to_str().unwrap());
    assert!(err.contains("no depthwise convolution measured"), "{err}");
    assert!(!out.exists(), "nothing is written on a bad table");

    let err = fails(&["calibrate", "--quick", "--batch", "0", "--out", o]);
    assert!(err.contains("--batch must be at least 1"), "{err}");
    let nowhere = dir.path("no/such/dir/t.json");
    let err = fails(&["calibrate", "--quick", "--out", nowhere.to_str().unwrap()]);
    assert!(err.contains("no/such/dir"), "{err}");
}

#[test]
fn calibrate_measures_a_mobilenet_in_the_layout_its_plan_runs() {
    // A MobileNetV2's plan runs channels-last where the CPU has the tiles, its merged dense convs
    // too, so the table collapsing it is measured that way (and `--layout nchw` overrides).
    let spec = ArchSpec {
        width: 0.25,
        image: [32, 32],
        ..ArchSpec::new(Arch::MobilenetV2)
    };
    let (g, init) = build(&spec).unwrap();
    let m = Model::init(g, init, &mut Rng::new(1)).unwrap();
    let dir = TempDir::new("calibrate-layout");
    let src = dir.path("mobilenet.safetensors");
    Checkpoint::of_model(m, Some(spec)).save(&src).unwrap();
    let table = dir.path("costs.json");
    let (s, t) = (src.to_str().unwrap(), table.to_str().unwrap());
    let text = ok(&["calibrate", "--quick", "--checkpoint", s, "--out", t]);
    let fast = tlc_kernels::conv::channels_last::fast();
    assert_eq!(text.contains("measuring channels-last"), fast, "{text}");
    let args = ["calibrate", "--quick", "--checkpoint", s, "--out", t];
    let text = ok(&[&args[..], &["--layout", "nchw"]].concat());
    assert!(!text.contains("measuring channels-last"), "{text}");
    assert!(CostTable::load(&table).unwrap().entries.len() > 40);
}
