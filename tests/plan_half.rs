//! 16-bit weight storage on whole zoo models: the f16 and bf16 plans against the f32 plan on the
//! same input, within the rounding each format implies, at half the weight bytes.

use tlc_engine::plan::{Plan, PlanOptions, WeightDtype};
use tlc_engine::{Model, Rng, Tensor};
use tlc_models::zoo::{randomized, Arch};

fn model(arch: Arch, width: f32, image: usize) -> Model {
    randomized(arch, width, image, 10, 8).unwrap()
}

/// Largest difference of `a` from `b` relative to `b`'s largest magnitude (per-element relative
/// differences blow up on logits near zero).
fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |s, v| s.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs()));
    diff / scale
}

/// The relative logit differences of the f16 and bf16 plans from the f32 plan (checked against
/// `limits`), with the weight bytes of each halved.
fn check(m: &Model, batch: usize, limits: [f32; 2], what: &str) -> [f32; 2] {
    let mut shape = vec![batch];
    shape.extend_from_slice(m.graph().input_shape());
    let x = Tensor::randn(&shape, &mut Rng::new(9)).to_vec();
    let mut f32_plan = Plan::compile(m, batch).unwrap();
    let want = f32_plan.run(&x).to_vec();
    let mut diffs = [0.0; 2];
    for (i, dtype) in [WeightDtype::F16, WeightDtype::Bf16]
        .into_iter()
        .enumerate()
    {
        let options = PlanOptions {
            weights: dtype,
            ..PlanOptions::default()
        };
        let mut plan = Plan::compile_with(m, batch, &options).unwrap();
        assert_eq!(2 * plan.weight_bytes(), f32_plan.weight_bytes(), "{what}");
        assert!(
            plan.param_bytes() < f32_plan.param_bytes() * 51 / 100,
            "{what}"
        );
        let got = plan.run(&x).to_vec();
        diffs[i] = relative_diff(&got, &want);
        eprintln!(
            "{what}, batch {batch}, {dtype:?}: relative logit difference {:.2e}",
            diffs[i]
        );
        assert!(
            diffs[i] > 0.0 && diffs[i] <= limits[i],
            "{what}, batch {batch}, {dtype:?}: {:.2e} (limit {:.0e})",
            diffs[i],
            limits[i]
        );
    }
    assert!(
        diffs[0] < diffs[1],
        "{what}: bf16 keeps fewer bits than f16"
    );
    diffs
}

/// f16 rounds each weight by at most 2^-11 (4.9e-4) relatively, bf16 by 2^-8 (3.9e-3); through
/// a network the logits move by about that much (errors of many weights partly cancel).
const LIMITS: [f32; 2] = [2e-3, 2e-2];

#[test]
fn resnet18_cifar_half_weights() {
    let m = model(Arch::Resnet18Cifar, 0.25, 32);
    for batch in [1, 4] {
        check(&m, batch, LIMITS, "resnet18-cifar");
    }
}

#[test]
fn mobilenet_v2_half_weights() {
    check(
        &model(Arch::MobilenetV2, 0.5, 32),
        1,
        LIMITS,
        "mobilenet-v2",
    );
}

#[test]
fn vgg16_bn_half_weights() {
    check(
        &model(Arch::Vgg16BnCifar, 0.125, 32),
        2,
        LIMITS,
        "vgg16-bn-cifar",
    );
}
