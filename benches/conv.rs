//! conv2d benchmarks (criterion): 3x3 pad 1 at ResNet-18 CIFAR shapes (each stage and the stride-2
//! transitions) at batch 1 and 32, forward + backward at batch 32 for the first stage, and
//! depthwise 3x3 at MobileNetV2 shapes (batch 1). The side-by-side PyTorch comparison is
//! benches/peers/conv_vs_torch.py.
//!
//! `cargo bench --bench conv -- --warm-up-time 1 --measurement-time 3 [filter]`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tlc::engine::{Conv2dParams, Rng, Tensor};

/// (in channels, spatial size, out channels, stride) of ResNet-18's CIFAR 3x3 convs.
const RESNET: [(usize, usize, usize, usize); 7] = [
    (64, 32, 64, 1),
    (64, 32, 128, 2),
    (128, 16, 128, 1),
    (128, 16, 256, 2),
    (256, 8, 256, 1),
    (256, 8, 512, 2),
    (512, 4, 512, 1),
];

/// (channels, spatial size, stride) of MobileNetV2's depthwise 3x3 convs at 224x224.
const MOBILENET_DW: [(usize, usize, usize); 10] = [
    (32, 112, 1),
    (96, 112, 2),
    (144, 56, 1),
    (144, 56, 2),
    (192, 28, 1),
    (192, 28, 2),
    (384, 14, 1),
    (576, 14, 1),
    (576, 14, 2),
    (960, 7, 1),
];

struct Case {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    params: Conv2dParams,
    macs: u64,
}

fn case(n: usize, cin: usize, hw: usize, cout: usize, s: usize, groups: usize, grad: bool) -> Case {
    let mut rng = Rng::new(1);
    let x = Tensor::randn(&[n, cin, hw, hw], &mut rng).with_requires_grad(grad);
    let w = Tensor::randn(&[cout, cin / groups, 3, 3], &mut rng).with_requires_grad(grad);
    let b = Tensor::randn(&[cout], &mut rng).with_requires_grad(grad);
    let o = (hw + 2 - 3) / s + 1;
    Case {
        x,
        w,
        b,
        params: Conv2dParams::default()
            .stride(s, s)
            .padding(1, 1)
            .groups(groups),
        macs: (n * cout * o * o * (cin / groups) * 9) as u64,
    }
}

fn forward(c: &mut Criterion, group: &str, cases: Vec<(String, Case)>) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    for (name, k) in cases {
        g.throughput(Throughput::Elements(k.macs));
        g.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.iter(|| k.x.conv2d(&k.w, Some(&k.b), k.params).unwrap())
        });
    }
    g.finish();
}

fn resnet(c: &mut Criterion) {
    for batch in [1, 32] {
        let cases = RESNET
            .iter()
            .map(|&(cin, hw, cout, s)| {
                let name = format!("{cin}to{cout}@{hw}_s{s}");
                (name, case(batch, cin, hw, cout, s, 1, false))
            })
            .collect();
        forward(c, &format!("conv3x3_resnet_b{batch}"), cases);
    }
    let k = case(32, 64, 32, 64, 1, 1, true);
    let mut g = c.benchmark_group("conv3x3_resnet_b32_fwdbwd");
    g.sample_size(10);
    g.throughput(Throughput::Elements(3 * k.macs));
    g.bench_function("64to64@32_s1", |bench| {
        bench.iter(|| {
            let y = k.x.conv2d(&k.w, Some(&k.b), k.params).unwrap();
            let ones = Tensor::ones(y.shape());
            y.backward_with(ones).unwrap()
        })
    });
    g.finish();
}

fn depthwise(c: &mut Criterion) {
    let cases = MOBILENET_DW
        .iter()
        .map(|&(ch, hw, s)| (format!("{ch}@{hw}_s{s}"), case(1, ch, hw, ch, s, ch, false)))
        .collect();
    forward(c, "conv3x3_depthwise_mobilenetv2_b1", cases);
}

criterion_group!(benches, resnet, depthwise);
criterion_main!(benches);
