//! No allocation per inference after warm-up: a counting global allocator around `Plan::run`.
//!
//! After its first run a plan has grown every pool thread's kernel scratch to what its steps need
//! (`tlc_kernels::scratch::reserve_on_pool`), so every later run must allocate nothing at all — in
//! any step, in any run, on one thread and on a pool of two, with f32 and with 16-bit weights,
//! and with every convolution channels-last (patch gathering takes per-thread scratch too).
//!
//! The plan runs inside the pool (`install`), as a caller wanting no allocation must: called from
//! outside, each parallel kernel reaches the pool through rayon's injector queue, which allocates
//! a block every 63 jobs (one run in three or four of ResNet-18 on two threads).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use tlc_engine::plan::{Plan, PlanOptions, WeightDtype};
use tlc_engine::{Model, Rng, Tensor};
use tlc_models::zoo::{build, Arch, ArchSpec};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs counted after the warm-up run.
const RUNS: usize = 12;

fn model(arch: Arch, width: f32, image: usize) -> Model {
    let spec = ArchSpec {
        width,
        image: [image, image],
        classes: 10,
        ..ArchSpec::new(arch)
    };
    let (g, init) = build(&spec).unwrap();
    Model::init(g, init, &mut Rng::new(1)).unwrap()
}

/// Every allocation of `RUNS` runs after one warm-up run: (run, step name, kind, count).
fn allocations(m: &Model, batch: usize, options: &PlanOptions) -> Vec<(usize, String, String)> {
    let mut plan = Plan::compile_with(m, batch, options).unwrap();
    let mut shape = vec![batch];
    shape.extend_from_slice(plan.input_shape());
    let x = Tensor::randn(&shape, &mut Rng::new(2)).to_vec();
    plan.run(&x);
    let mut found = vec![];
    for run in 0..RUNS {
        let mut counts = vec![0; plan.len()];
        let mut before = ALLOCS.load(Ordering::SeqCst);
        plan.run_observed(&x, |i| {
            let now = ALLOCS.load(Ordering::SeqCst);
            counts[i] = now - before;
            before = now;
        });
        for (s, c) in plan.steps().zip(counts) {
            if c > 0 {
                found.push((run, s.name.clone(), format!("{} ({c}x)", s.kind)));
            }
        }
    }
    found
}

#[test]
fn steady_state_runs_do_not_allocate() {
    let pools = [1, 2].map(|t| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    });
    let resnet_cifar = model(Arch::Resnet18Cifar, 0.25, 32);
    let mobilenet = model(Arch::MobilenetV2, 0.25, 32);
    let resnet = model(Arch::Resnet18, 0.125, 64);
    let vgg = model(Arch::Vgg16Bn, 0.0625, 32);
    // At width 1/2 and batch 4 its 3x3s are large enough for Winograd (F4 at 32x32, F2 at 16x16
    // and 8x8, with f32 weights).
    let resnet_winograd = model(Arch::Resnet18Cifar, 0.5, 32);
    // At full width and 112x112 the first expansion (96 channels at 56x56) fuses with its
    // depthwise conv (f32 weights), NCHW when asked and channels-last on its own.
    let mobilenet_fused = model(Arch::MobilenetV2, 1.0, 112);
    let cases: [(&str, &Model, usize); 7] = [
        ("resnet18-cifar", &resnet_cifar, 1),
        ("resnet18-cifar", &resnet_cifar, 4),
        ("resnet18-cifar width 0.5 (Winograd)", &resnet_winograd, 4),
        ("mobilenet-v2", &mobilenet, 1),
        (
            "mobilenet-v2 112x112 (expansion + depthwise fused)",
            &mobilenet_fused,
            1,
        ),
        ("resnet18 (max-pool)", &resnet, 1),
        ("vgg16-bn (max-pools, adaptive 7x7)", &vgg, 2),
    ];
    let kinds: Vec<String> = Plan::compile(&resnet_winograd, 4)
        .unwrap()
        .steps()
        .map(|s| s.kind.clone())
        .collect();
    let fuse = PlanOptions {
        fuse_expand_dw: true,
        ..PlanOptions::default()
    };
    let fused = Plan::compile_with(&mobilenet_fused, 1, &fuse).unwrap();
    assert!(
        fused.steps().any(|s| s.kind.contains("> conv3x3/s2 dw")),
        "no fused expansion"
    );
    let cl = PlanOptions {
        channels_last: Some(true),
        ..PlanOptions::default()
    };
    let fused = Plan::compile_with(&mobilenet_fused, 1, &cl).unwrap();
    assert!(
        fused.steps().any(|s| s.kind.contains("> conv3x3/s2 dw cl")),
        "no fused channels-last expansion"
    );
    for tile in ["winograd-f4", "winograd-f2"] {
        assert!(kinds.iter().any(|k| k.contains(tile)), "{tile}: {kinds:?}");
    }
    let mut failures = vec![];
    for pool in &pools {
        let threads = pool.current_num_threads();
        pool.install(|| {
            for (name, m, batch) in cases {
                // NCHW with fusing allowed (only the model large enough for it fuses), in f32
                // and 16-bit weights; and every convolution channels-last.
                let layouts = [
                    (WeightDtype::F32, Some(false)),
                    (WeightDtype::F16, Some(false)),
                    (WeightDtype::Bf16, Some(false)),
                    (WeightDtype::F32, Some(true)),
                ];
                for (weights, channels_last) in layouts {
                    let options = PlanOptions {
                        weights,
                        fuse_expand_dw: channels_last == Some(false),
                        channels_last,
                        ..PlanOptions::default()
                    };
                    let found = allocations(m, batch, &options);
                    if !found.is_empty() {
                        failures.push(format!(
                            "{name}, batch {batch}, {weights:?} weights, channels-last \
                             {channels_last:?}, {threads} thread(s): {found:?}"
                        ));
                    }
                }
            }
        });
    }
    assert!(
        failures.is_empty(),
        "allocations after warm-up:\n{}",
        failures.join("\n")
    );
}
