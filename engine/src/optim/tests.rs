//! Optimizers against torch.optim, resuming from saved state, and the error paths.

use super::*;
use crate::error::Error;
use crate::io::atomic::tests::TempDir;
use crate::io::TensorStore;
use crate::rng::Rng;
use crate::testing::{assert_close, Fixture};
use serde_json::Value;

fn optimizer_from_meta(meta: &Value) -> Box<dyn Optimizer> {
    let f = |k: &str, d: f64| meta[k].as_f64().unwrap_or(d);
    let decay: Vec<bool> = meta["decay"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    match meta["optim"].as_str().unwrap() {
        "sgd" => {
            let c = SgdConfig::new(f("lr", 0.0))
                .momentum(f("momentum", 0.0))
                .dampening(f("dampening", 0.0))
                .nesterov(meta["nesterov"].as_bool().unwrap_or(false))
                .weight_decay(f("weight_decay", 0.0));
            Box::new(Sgd::new(c).unwrap().with_decay_mask(decay))
        }
        "adamw" => {
            let d = AdamWConfig::default();
            let betas = meta["betas"].as_array();
            let beta = |i: usize, d: f64| betas.map_or(d, |b| b[i].as_f64().unwrap());
            let c = AdamWConfig::new(f("lr", d.lr))
                .betas(beta(0, d.beta1), beta(1, d.beta2))
                .eps(f("eps", d.eps))
                .weight_decay(f("weight_decay", d.weight_decay));
            Box::new(AdamW::new(c).unwrap().with_decay_mask(decay))
        }
        k => panic!("unknown optimizer {k}"),
    }
}

#[test]
fn pytorch_parity() {
    let fx = Fixture::load("optim").unwrap();
    let mut n = 0;
    for case in fx.cases() {
        if !(case.starts_with("sgd_") || case.starts_with("adamw_")) {
            continue;
        }
        let meta = fx.meta(&case).unwrap();
        let mut opt = optimizer_from_meta(&meta);
        let num = meta["params"].as_u64().unwrap() as usize;
        let lrs = meta["lrs"].as_array().unwrap();
        let mut params: Vec<Tensor> = (0..num)
            .map(|i| {
                fx.tensor(&case, &format!("p{i}"))
                    .unwrap()
                    .with_requires_grad(true)
            })
            .collect();
        for s in 1..=meta["steps"].as_u64().unwrap() as usize {
            opt.set_lr(lrs[s - 1].as_f64().unwrap());
            let mut grads = Gradients::default();
            for (i, p) in params.iter().enumerate() {
                if let Some(g) = fx.try_tensor(&case, &format!("g{s}_{i}")) {
                    grads.insert(p, g);
                }
            }
            opt.step(&mut params, &grads).unwrap();
            for (i, p) in params.iter().enumerate() {
                let want = fx.tensor(&case, &format!("out{s}_{i}")).unwrap();
                assert_close(p, &want, 1e-6, &format!("{case} step {s} param {i}"));
            }
        }
        n += 1;
    }
    assert_eq!(n, 13, "optimizer cases in the fixture");
}

/// A small non-linear problem: loss = sum((x W)^2 . c) over a fixed batch, params [W, c-ish b].
struct Problem {
    x: Tensor,
    ones: Tensor,
}

impl Problem {
    fn new() -> Problem {
        let mut rng = Rng::new(7);
        Problem {
            x: Tensor::randn(&[4, 5], &mut rng),
            ones: Tensor::ones(&[3, 1]),
        }
    }

    fn params(&self) -> Vec<Tensor> {
        let mut rng = Rng::new(8);
        vec![
            Tensor::randn(&[5, 3], &mut rng).with_requires_grad(true),
            Tensor::randn(&[3], &mut rng).with_requires_grad(true),
        ]
    }

    fn grads(&self, params: &[Tensor]) -> Gradients {
        let h = self.x.matmul(&params[0]).unwrap().add(&params[1]).unwrap();
        let sq = h.mul(&h).unwrap();
        let row = Tensor::ones(&[1, 4]);
        let loss = row.matmul(&sq).unwrap().matmul(&self.ones).unwrap();
        loss.backward().unwrap()
    }
}

fn run(opt: &mut dyn Optimizer, problem: &Problem, params: &mut [Tensor], steps: usize) {
    for _ in 0..steps {
        let g = problem.grads(params);
        opt.step(params, &g).unwrap();
    }
}

fn bits(ts: &[Tensor]) -> Vec<Vec<u32>> {
    ts.iter()
        .map(|t| t.to_vec().iter().map(|v| v.to_bits()).collect())
        .collect()
}

fn resume_check(make: impl Fn() -> Box<dyn Optimizer>) {
    let problem = Problem::new();
    // Uninterrupted: 6 steps.
    let mut a = make();
    let mut pa = problem.params();
    run(a.as_mut(), &problem, &mut pa, 6);

    // 3 steps, checkpoint to a file (params + optimizer), fresh objects, 3 more steps.
    let mut b = make();
    let mut pb = problem.params();
    run(b.as_mut(), &problem, &mut pb, 3);
    let dir = TempDir::new("optim-resume");
    let path = dir.path("ckpt.safetensors");
    let mut store = TensorStore::new();
    store.insert("w", pb[0].clone());
    store.insert("b", pb[1].clone());
    b.state().save_into(&mut store, "optim.");
    store.save(&path).unwrap();
    drop((b, pb));

    let loaded = TensorStore::load(&path).unwrap();
    let mut pc = vec![
        loaded.get("w").unwrap().with_requires_grad(true),
        loaded.get("b").unwrap().with_requires_grad(true),
    ];
    let mut c = make();
    c.load_state(&OptimState::load_from(&loaded, "optim.").unwrap())
        .unwrap();
    run(c.as_mut(), &problem, &mut pc, 3);
    assert_eq!(bits(&pa), bits(&pc), "resumed run differs");
    // And the run moved: the check is not vacuous.
    assert_ne!(bits(&pa), bits(&problem.params()));
}

#[test]
fn sgd_resumes_bit_identically() {
    resume_check(|| {
        let c = SgdConfig::new(0.01)
            .momentum(0.9)
            .nesterov(true)
            .weight_decay(1e-3);
        Box::new(Sgd::new(c).unwrap().with_decay_mask(vec![true, false]))
    });
}

#[test]
fn adamw_resumes_bit_identically() {
    resume_check(|| Box::new(AdamW::new(AdamWConfig::new(0.01).weight_decay(0.1)).unwrap()));
}

#[test]
fn state_round_trips_lr_and_step_counts() {
    let problem = Problem::new();
    let mut opt = AdamW::new(AdamWConfig::new(0.01)).unwrap();
    let mut p = problem.params();
    let g = problem.grads(&p);
    opt.step(&mut p, &g).unwrap();
    // Only the first parameter gets a gradient on step 2: its count goes to 2, the other's stays.
    let mut g2 = problem.grads(&p);
    g2.remove(&p[1]);
    opt.set_lr(0.003);
    opt.step(&mut p, &g2).unwrap();
    let st = opt.state();
    assert_eq!(st.kind, "adamw");
    assert_eq!(st.lr, 0.003);
    assert_eq!(st.num_params, 2);
    assert_eq!(st.counters["step.0"], 2);
    assert_eq!(st.counters["step.1"], 1);
    let mut store = TensorStore::new();
    st.save_into(&mut store, "opt/");
    let back = OptimState::load_from(&store, "opt/").unwrap();
    let mut fresh = AdamW::new(AdamWConfig::new(1.0)).unwrap();
    fresh.load_state(&back).unwrap();
    assert_eq!(fresh.lr(), 0.003);
    assert_eq!(fresh.state().counters, st.counters);
}

#[test]
fn steps_keep_parameter_identity_and_skip_parameters_without_gradients() {
    let problem = Problem::new();
    let mut p = problem.params();
    let ids: Vec<_> = p.iter().map(|t| t.grad_id()).collect();
    let frozen = p[1].to_vec();
    let mut g = problem.grads(&p);
    g.remove(&p[1]);
    let mut opt = Sgd::new(SgdConfig::new(0.1).momentum(0.5)).unwrap();
    opt.step(&mut p, &g).unwrap();
    assert_eq!(p.iter().map(|t| t.grad_id()).collect::<Vec<_>>(), ids);
    assert_eq!(p[1].to_vec(), frozen);
    // The gradient set still finds the updated parameter.
    assert!(g.get(&p[0]).is_some());
    assert_eq!(opt.state().tensors.len(), 1);
}

#[test]
fn decay_mask_helper() {
    let p = vec![
        Tensor::zeros(&[3, 4]),
        Tensor::zeros(&[4]),
        Tensor::zeros(&[2, 3, 3, 3]),
    ];
    assert_eq!(decay_matrices_only(&p), vec![true, false, true]);
}

#[test]
fn rejects_bad_configurations() {
    let cases: Vec<(Result<()>, &str)> = vec![
        (Sgd::new(SgdConfig::new(-0.1)).map(drop), "learning rate"),
        (
            Sgd::new(SgdConfig::new(f64::NAN)).map(drop),
            "learning rate",
        ),
        (
            Sgd::new(SgdConfig::new(0.1).momentum(-1.0)).map(drop),
            "momentum",
        ),
        (
            Sgd::new(SgdConfig::new(0.1).weight_decay(-1.0)).map(drop),
            "weight_decay",
        ),
        (
            Sgd::new(SgdConfig::new(0.1).nesterov(true)).map(drop),
            "Nesterov",
        ),
        (
            Sgd::new(
                SgdConfig::new(0.1)
                    .momentum(0.9)
                    .dampening(0.1)
                    .nesterov(true),
            )
            .map(drop),
            "Nesterov",
        ),
        (
            AdamW::new(AdamWConfig::new(0.1).betas(1.0, 0.9)).map(drop),
            "beta1",
        ),
        (
            AdamW::new(AdamWConfig::new(0.1).betas(0.9, -0.1)).map(drop),
            "beta2",
        ),
        (AdamW::new(AdamWConfig::new(0.1).eps(-1.0)).map(drop), "eps"),
        (
            AdamW::new(AdamWConfig::new(0.1).weight_decay(-1.0)).map(drop),
            "weight_decay",
        ),
    ];
    for (r, what) in cases {
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains(what), "{msg}");
    }
}

#[test]
fn step_errors_name_the_problem() {
    let problem = Problem::new();
    let mut p = problem.params();
    let g = problem.grads(&p);
    for opt in [
        &mut Sgd::new(SgdConfig::new(0.1).momentum(0.9)).unwrap() as &mut dyn Optimizer,
        &mut AdamW::new(AdamWConfig::new(0.1)).unwrap(),
    ] {
        // A gradient of the wrong shape.
        let mut bad = Gradients::default();
        bad.insert(&p[0], Tensor::zeros(&[3, 5]));
        let e = opt.step(&mut p, &bad).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        assert!(
            e.to_string().contains("[5, 3]") && e.to_string().contains("[3, 5]"),
            "{e}"
        );

        opt.step(&mut p, &g).unwrap();
        // A different number of parameters than before.
        let e = opt.step(&mut p[..1], &g).unwrap_err().to_string();
        assert!(
            e.contains("1 parameters") && e.contains("state for 2"),
            "{e}"
        );
        // A parameter whose shape changed under its state.
        let mut swapped = vec![Tensor::zeros(&[3]).with_requires_grad(true), p[1].clone()];
        let mut g2 = Gradients::default();
        g2.insert(&swapped[0], Tensor::zeros(&[3]));
        let e = opt.step(&mut swapped, &g2).unwrap_err().to_string();
        assert!(e.contains("optimizer state"), "{e}");
        // A negative learning rate set by a buggy schedule.
        opt.set_lr(-1.0);
        assert!(opt.step(&mut p, &g).is_err());
        opt.set_lr(0.1);
    }
    let mut masked = Sgd::new(SgdConfig::new(0.1))
        .unwrap()
        .with_decay_mask(vec![true]);
    let e = masked.step(&mut p, &g).unwrap_err().to_string();
    assert!(e.contains("mask has 1 entries for 2 parameters"), "{e}");
}

#[test]
fn load_state_rejects_foreign_or_corrupt_state() {
    let problem = Problem::new();
    let mut p = problem.params();
    let g = problem.grads(&p);
    let mut sgd = Sgd::new(SgdConfig::new(0.1).momentum(0.9)).unwrap();
    sgd.step(&mut p, &g).unwrap();
    let mut adam = AdamW::new(AdamWConfig::new(0.1)).unwrap();
    let e = adam.load_state(&sgd.state()).unwrap_err().to_string();
    assert!(e.contains("`sgd`") && e.contains("`adamw`"), "{e}");

    let mut st = sgd.state();
    st.tensors.push(("velocity.0".into(), Tensor::zeros(&[1])));
    let e = sgd.load_state(&st).unwrap_err().to_string();
    assert!(e.contains("velocity.0"), "{e}");
    let mut st = sgd.state();
    st.tensors[0].0 = "momentum_buffer.7".into();
    assert!(sgd.load_state(&st).is_err());

    adam.step(&mut p, &g).unwrap();
    let mut st = adam.state();
    st.counters.clear();
    let e = adam.load_state(&st).unwrap_err().to_string();
    assert!(e.contains("step.0"), "{e}");
    let mut st = adam.state();
    st.tensors.retain(|(n, _)| n != "exp_avg_sq.1");
    assert!(adam.load_state(&st).is_err());

    let empty = TensorStore::new();
    let e = OptimState::load_from(&empty, "optim.").unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    let mut junk = TensorStore::new();
    junk.set_metadata("optim.optimizer", "{not json");
    assert!(matches!(
        OptimState::load_from(&junk, "optim.").unwrap_err(),
        Error::Format { .. }
    ));
}

#[test]
fn non_finite_gradients_flow_through_and_are_detectable() {
    let p0 = Tensor::from_vec(vec![1.0, 2.0], &[2])
        .unwrap()
        .with_requires_grad(true);
    let mut p = vec![p0];
    let mut g = Gradients::default();
    g.insert(&p[0], Tensor::from_vec(vec![f32::NAN, 1.0], &[2]).unwrap());
    assert!(!g.all_finite());
    let mut opt = Sgd::new(SgdConfig::new(0.1)).unwrap();
    opt.step(&mut p, &g).unwrap();
    let v = p[0].to_vec();
    assert!(v[0].is_nan() && (v[1] - 1.9).abs() < 1e-6);
}
