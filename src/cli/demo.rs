//! `tlc demo`: the engine end to end in a few seconds, no data set needed. A tiny CNN, built as a
//! graph by hand, learns to tell the orientation of bars on noise with tlc's autograd and SGD; the
//! loss falls and the held-out accuracy rises epoch by epoch.

use super::progress::{pct, ProgressMode, Reporter};
use super::{group_digits, CliError, Result};
use clap::Args;
use tlc_engine::graph::{ActKind, BatchNormSpec, ConvSpec, Graph, LinearInit, LinearSpec, Op};
use tlc_engine::graph::{NodeId, PoolSpec};
use tlc_engine::{Model, Rng};
use tlc_models::train::{
    evaluate, synthetic, synthetic::Difficulty, AugmentConfig, Schedule, Silent, Splits,
    TrainConfig, Trainer,
};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Epochs over the synthetic training images.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Synthetic training images (a fifth as many are held out for testing).
    #[arg(long, default_value_t = 6000)]
    pub images: usize,
    /// Seed of the data and the initialisation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

const SIDE: usize = 16;

/// conv-bn-relu x3 (two 2x2 max-pools between), global average pool, linear: 4 classes.
fn tiny_cnn() -> Graph {
    let mut g = Graph::new(&[1, SIDE, SIDE]);
    let mut x: NodeId = 0;
    let mut in_ch = 1;
    for (i, out_ch) in [8, 16, 32].into_iter().enumerate() {
        x = g.push(
            format!("features.{i}.conv"),
            Op::Conv2d(ConvSpec::new(in_ch, out_ch, 3, 1, 1)),
            &[x],
        );
        x = g.push(
            format!("features.{i}.bn"),
            Op::BatchNorm(BatchNormSpec {
                channels: out_ch,
                eps: 1e-5,
                momentum: 0.1,
            }),
            &[x],
        );
        x = g.push(
            format!("features.{i}.relu"),
            Op::Activation { act: ActKind::Relu },
            &[x],
        );
        if i < 2 {
            x = g.push(
                format!("features.{i}.pool"),
                Op::MaxPool(PoolSpec::new(2, 2, 0)),
                &[x],
            );
        }
        in_ch = out_ch;
    }
    x = g.push("avgpool", Op::AdaptiveAvgPool { out: [1, 1] }, &[x]);
    x = g.push("flatten", Op::Flatten { start: 1 }, &[x]);
    g.push(
        "fc",
        Op::Linear(LinearSpec {
            in_f: in_ch,
            out_f: synthetic::CLASSES.len(),
            bias: true,
        }),
        &[x],
    );
    g
}

pub fn run(args: DemoArgs) -> Result<()> {
    if args.images < 64 || args.epochs == 0 {
        return Err(CliError::Usage(
            "the demo needs at least 64 --images and 1 --epochs".into(),
        ));
    }
    let train = synthetic::bars(args.images, SIDE, args.seed, Difficulty::Hard);
    let test = synthetic::bars(
        args.images / 5,
        SIDE,
        args.seed.wrapping_add(1),
        Difficulty::Hard,
    );
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: 32,
        lr: 0.05,
        weight_decay: 1e-4,
        schedule: Schedule::Cosine,
        seed: args.seed,
        val_fraction: 0.0,
        // Mirroring swaps the two diagonals, so only shifts are safe for this task.
        augment: AugmentConfig {
            crop_padding: 1,
            hflip: false,
        },
        ..TrainConfig::default()
    };
    let splits = Splits::new(train, Some(test), &cfg)?;
    let model = Model::init(tiny_cnn(), LinearInit::Uniform, &mut Rng::new(args.seed))?;
    outln!(
        "tlc demo: a {}-parameter CNN learns the orientation of bars ({}) in {SIDE}x{SIDE} noisy \
         images: {} training, {} test images, SGD with momentum, cosine learning rate",
        group_digits(model.num_params() as u64),
        synthetic::CLASSES.join(", "),
        splits.train.len(),
        splits.test.as_ref().map_or(0, |t| t.len()),
    );
    let test = splits.test.clone().expect("the demo has a test set");
    let norm = splits.norm.clone();
    let before = evaluate(&model, &test, &norm, 500, "test", &mut Silent)?;
    outln!(
        "before training: test loss {:.4}, accuracy {} (chance: 25%)",
        before.loss,
        pct(before.accuracy)
    );
    let mut trainer = Trainer::new(model, None, cfg, splits, None)?;
    trainer.run(&mut Reporter::new(args.progress))?;
    let after = trainer
        .state()
        .history
        .last()
        .and_then(|m| m.test_acc)
        .unwrap_or(0.0);
    outln!("after training: test accuracy {}", pct(after));
    Ok(())
}
