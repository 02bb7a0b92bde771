//! GEMM tests: every path (blocked, direct small-m, pre-packed B) on every kernel family this CPU
//! runs, against the f64 naive triple loop, over edge shapes, strided operands, output strides,
//! beta, every epilogue step, and threads.

use super::*;
use crate::isa::Isa;

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// How an operand is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    /// Stored transposed (column-major), viewed through `.t()`.
    Transposed,
    /// Row-major with padding between rows.
    Padded,
    /// Neither stride is 1.
    Strided,
}

const LAYOUTS: [Layout; 4] = [
    Layout::RowMajor,
    Layout::Transposed,
    Layout::Padded,
    Layout::Strided,
];

/// Storage and strides for a `rows x cols` operand in `layout`.
fn operand(rows: usize, cols: usize, layout: Layout, seed: u64) -> (Vec<f32>, usize, usize) {
    let (rs, cs, len) = match layout {
        Layout::RowMajor => (cols, 1, rows * cols),
        Layout::Transposed => (1, rows, rows * cols),
        Layout::Padded => (cols + 3, 1, rows * (cols + 3)),
        Layout::Strided => (2 * cols + 1, 2, rows * (2 * cols + 1)),
    };
    (values(len.max(1), seed), rs, cs)
}

fn view(data: &[f32], rows: usize, cols: usize, rs: usize, cs: usize) -> MatRef<'_> {
    MatRef {
        data,
        rows,
        cols,
        row_stride: rs,
        col_stride: cs,
    }
}

/// Asserts `got` matches the f64 reference within a tolerance that grows with the depth.
fn assert_close(got: &[f32], want: &[f32], k: usize, what: &str) {
    assert_eq!(got.len(), want.len());
    let tol = 2e-6 * (k as f32 + 4.0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

/// Which implementation a case runs.
#[derive(Clone, Copy, Debug)]
enum Path {
    Plain(&'static Spec),
    Packed(&'static Spec),
}

fn paths() -> Vec<Path> {
    spec::supported()
        .into_iter()
        .flat_map(|s| [Path::Plain(s), Path::Packed(s)])
        .collect()
}

/// One GEMM case: runs `path` and the naive reference on the same inputs and compares, including
/// that the padding between output rows is untouched.
struct Case<'e> {
    m: usize,
    k: usize,
    n: usize,
    la: Layout,
    lb: Layout,
    ldc_pad: usize,
    beta: f32,
    epi: &'e [EpilogueOp<'e>],
}

impl Case<'_> {
    fn new(m: usize, k: usize, n: usize) -> Self {
        Case {
            m,
            k,
            n,
            la: Layout::RowMajor,
            lb: Layout::RowMajor,
            ldc_pad: 0,
            beta: 0.0,
            epi: &[],
        }
    }

    fn run(&self, path: Path) {
        let Case { m, k, n, .. } = *self;
        let (ad, ars, acs) = operand(m, k, self.la, 1 + m as u64);
        let (bd, brs, bcs) = operand(k, n, self.lb, 2 + n as u64);
        let (a, b) = (view(&ad, m, k, ars, acs), view(&bd, k, n, brs, bcs));
        let ldc = n + self.ldc_pad;
        let mut c0 = values(m * ldc, 3);
        if self.beta == 0.0 {
            // beta == 0 must not read C: poison it.
            for (i, v) in c0.iter_mut().enumerate() {
                if i % ldc < n {
                    *v = f32::NAN;
                }
            }
        }
        let mut want = c0.clone();
        naive_gemm(
            a,
            b,
            self.beta,
            MatMut {
                data: &mut want,
                rows: m,
                cols: n,
                row_stride: ldc,
            },
            self.epi,
        );
        if self.beta == 0.0 {
            // naive_gemm never reads C when beta == 0 either, so NaN here means a NaN result.
            assert!(want.iter().all(|v| v.is_finite()));
        }
        let mut got = c0.clone();
        let out = MatMut {
            data: &mut got,
            rows: m,
            cols: n,
            row_stride: ldc,
        };
        match path {
            Path::Plain(s) => gemm_with(s, a, b, self.beta, out, self.epi),
            Path::Packed(s) => {
                let pb = pack_b_with(s, b);
                gemm_packed_with(s, a, &pb, self.beta, out, self.epi, usize::MAX)
            }
        }
        let what = format!(
            "{path:?} {m}x{k}x{n} A {:?} B {:?} ldc {ldc} beta {} epi {:?}",
            self.la, self.lb, self.beta, self.epi
        );
        assert_close(&got, &want, k, &what);
        for (i, (g, c)) in got.iter().zip(&c0).enumerate() {
            if i % ldc >= n {
                assert_eq!(
                    g.to_bits(),
                    c.to_bits(),
                    "{what}: row padding at {i} was written"
                );
            }
        }
    }

    fn run_all(&self) {
        for p in paths() {
            self.run(p);
        }
    }
}

#[test]
fn matches_naive_for_many_shapes() {
    let dims = [
        1, 2, 3, 5, 6, 7, 8, 12, 13, 16, 17, 24, 25, 31, 37, 48, 61, 70,
    ];
    for &m in &dims {
        for &n in &dims {
            for &k in &[1, 2, 7, 16, 33, 70] {
                Case::new(m, k, n).run_all();
            }
        }
    }
}

#[test]
fn tall_skinny_and_deep_shapes() {
    for (m, k, n) in [
        (1, 512, 300),
        (1, 1000, 1),
        (300, 5, 1),
        (1, 3, 400),
        (200, 1, 9),
        (9, 700, 13),
        (130, 530, 20),
        (40, 2000, 33),
        (3, 4099, 17),
        (97, 97, 97),
        (150, 257, 150),
    ] {
        Case::new(m, k, n).run_all();
    }
}

#[test]
fn empty_depth_scales_or_clears_c() {
    for beta in [0.0, 1.0, 0.5] {
        for (m, n) in [(1, 1), (3, 20), (30, 7)] {
            let bias: Vec<f32> = (0..n).map(|j| j as f32).collect();
            let epi = [
                EpilogueOp::BiasPerCol(&bias),
                EpilogueOp::Act(Activation::Relu),
            ];
            for epi in [&[][..], &epi[..]] {
                Case {
                    beta,
                    epi,
                    ldc_pad: 2,
                    ..Case::new(m, 0, n)
                }
                .run_all();
            }
        }
    }
}

#[test]
fn empty_outputs_do_nothing() {
    for (m, k, n) in [(0, 5, 5), (5, 5, 0), (0, 0, 0)] {
        Case::new(m, k, n).run_all();
    }
}

#[test]
fn transposed_and_strided_operands() {
    for la in LAYOUTS {
        for lb in LAYOUTS {
            for (m, k, n) in [
                (1, 37, 45),
                (5, 300, 19),
                (23, 17, 40),
                (40, 290, 35),
                (70, 9, 70),
            ] {
                Case {
                    la,
                    lb,
                    ..Case::new(m, k, n)
                }
                .run_all();
            }
        }
    }
}

#[test]
fn output_row_stride_and_beta() {
    for beta in [0.0, 1.0, 0.5, -2.0] {
        for ldc_pad in [0, 1, 9] {
            for (m, k, n) in [(1, 20, 33), (7, 300, 17), (50, 40, 50), (33, 600, 5)] {
                Case {
                    beta,
                    ldc_pad,
                    ..Case::new(m, k, n)
                }
                .run_all();
            }
        }
    }
}

#[test]
fn every_epilogue_op_and_combinations() {
    let (mm, nn) = (70, 70);
    let col_bias = values(nn, 7);
    let row_bias = values(mm, 8);
    let res_rm = values(mm * (nn + 2), 9);
    let res_t = values(mm * nn, 10);
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::Relu6,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Clamp { lo: -0.3, hi: 0.4 },
    ];
    for (m, k, n) in [(1, 30, 70), (6, 17, 33), (30, 300, 21), (70, 40, 70)] {
        let residual_rm = view(&res_rm, m, n, nn + 2, 1);
        let residual_t = view(&res_t, m, n, 1, mm);
        let mut lists: Vec<Vec<EpilogueOp>> = vec![
            vec![EpilogueOp::BiasPerCol(&col_bias[..n])],
            vec![EpilogueOp::BiasPerRow(&row_bias[..m])],
            vec![EpilogueOp::Add(residual_rm)],
            vec![EpilogueOp::Add(residual_t)],
            vec![
                EpilogueOp::BiasPerRow(&row_bias[..m]),
                EpilogueOp::Add(residual_t),
                EpilogueOp::Act(Activation::Relu6),
            ],
            vec![
                EpilogueOp::BiasPerCol(&col_bias[..n]),
                EpilogueOp::Act(Activation::Gelu),
                EpilogueOp::Add(residual_rm),
                EpilogueOp::Act(Activation::Relu),
            ],
        ];
        lists.extend(
            acts.iter()
                .map(|&a| vec![EpilogueOp::BiasPerCol(&col_bias[..n]), EpilogueOp::Act(a)]),
        );
        for epi in &lists {
            for beta in [0.0, 1.0] {
                Case {
                    beta,
                    epi,
                    ldc_pad: 3,
                    ..Case::new(m, k, n)
                }
                .run_all();
            }
        }
    }
}

#[test]
fn simd_kernels_match_scalar_kernels() {
    let scalar = spec::for_isa(Isa::Scalar);
    for simd in spec::supported().into_iter().skip(1) {
        for (m, k, n) in [
            (1, 1, 1),
            (5, 3, 7),
            (13, 31, 29),
            (6, 256, 16),
            (23, 513, 47),
            (61, 67, 71),
        ] {
            let a = values(m * k, 11);
            let b = values(k * n, 12);
            let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let mut c1 = vec![0.0; m * n];
            let mut c2 = vec![0.0; m * n];
            gemm_with(simd, a, b, 0.0, MatMut::row_major(&mut c1, m, n), &[]);
            gemm_with(scalar, a, b, 0.0, MatMut::row_major(&mut c2, m, n), &[]);
            assert_close(&c1, &c2, k, &format!("{simd:?} vs scalar {m}x{k}x{n}"));
        }
    }
}

#[test]
fn packed_b_is_reusable_across_calls() {
    let (k, n) = (300, 45);
    let bd = values(k * n, 20);
    let b = MatRef::row_major(&bd, k, n);
    let pb = pack_b(b);
    assert_eq!((pb.rows(), pb.cols()), (k, n));
    for m in [1, 4, 30, 100] {
        let ad = values(m * k, 21 + m as u64);
        let a = MatRef::row_major(&ad, m, k);
        let mut got = vec![0.0; m * n];
        let mut want = vec![0.0; m * n];
        gemm_packed(a, &pb, 0.0, MatMut::row_major(&mut got, m, n), &[]);
        naive_gemm(a, b, 0.0, MatMut::row_major(&mut want, m, n), &[]);
        assert_close(&got, &want, k, &format!("packed reuse m={m}"));
    }
}

/// Runs `f` inside a rayon pool of `threads` threads.
fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn threaded_results_equal_single_threaded() {
    // Threads only change which task runs a tile, never its arithmetic: results are bitwise equal.
    let col_bias = values(600, 30);
    for (m, k, n) in [
        (1, 2000, 600),
        (8, 600, 290),
        (20, 600, 100),
        (200, 300, 150),
        (130, 170, 260),
    ] {
        let epi = [
            EpilogueOp::BiasPerCol(&col_bias[..n]),
            EpilogueOp::Act(Activation::Gelu),
        ];
        let ad = values(m * k, 31);
        let bd = values(k * n, 32);
        let (a, b) = (MatRef::row_major(&ad, m, k), MatRef::row_major(&bd, k, n));
        let bt_data: Vec<f32> = (0..k * n).map(|i| bd[(i % k) * n + i / k]).collect();
        let bt = view(&bt_data, k, n, 1, k);
        let run = |threads: usize, b: MatRef, packed: bool| {
            in_pool(threads, || {
                let mut c = vec![0.0; m * n];
                let out = MatMut::row_major(&mut c, m, n);
                if packed {
                    gemm_packed(a, &pack_b(b), 0.0, out, &epi);
                } else {
                    gemm(a, b, 0.0, out, &epi);
                }
                c
            })
        };
        for (bv, packed) in [(b, false), (bt, false), (b, true)] {
            let one = run(1, bv, packed);
            for threads in [2, 3] {
                assert_eq!(
                    one,
                    run(threads, bv, packed),
                    "{m}x{k}x{n} threads {threads} packed {packed}"
                );
            }
        }
    }
}

#[test]
fn nested_calls_from_rayon_workers() {
    use rayon::prelude::*;
    let (m, k, n) = (64, 96, 80);
    let ad = values(m * k, 40);
    let bd = values(k * n, 41);
    let (a, b) = (MatRef::row_major(&ad, m, k), MatRef::row_major(&bd, k, n));
    let mut want = vec![0.0; m * n];
    naive_gemm(a, b, 0.0, MatMut::row_major(&mut want, m, n), &[]);
    let outs: Vec<Vec<f32>> = in_pool(2, || {
        (0..8)
            .into_par_iter()
            .map(|_| {
                let mut c = vec![0.0; m * n];
                gemm(a, b, 0.0, MatMut::row_major(&mut c, m, n), &[]);
                c
            })
            .collect()
    });
    for c in &outs {
        assert_close(c, &want, k, "nested");
    }
}

#[test]
fn reference_gemm_agrees_with_naive() {
    let (m, k, n) = (33, 70, 41);
    let ad = values(m * k, 50);
    let bd = values(k * n, 51);
    let (a, b) = (MatRef::row_major(&ad, m, k), MatRef::row_major(&bd, k, n));
    let bias = values(n, 52);
    let epi = [
        EpilogueOp::BiasPerCol(&bias),
        EpilogueOp::Act(Activation::Tanh),
    ];
    let mut want = vec![0.0; m * n];
    let mut got = vec![0.0; m * n];
    naive_gemm(a, b, 0.0, MatMut::row_major(&mut want, m, n), &epi);
    reference_gemm(a, b, 0.0, MatMut::row_major(&mut got, m, n), &epi);
    assert_close(&got, &want, k, "reference");
}

/// A caller's tasks writing column blocks of the same rows through raw views (what a conv's
/// pixel ranges do) get what one call over the whole output gets, epilogue included, on every
/// path: the matrix-vector one (m = 1), the small-m direct one and the blocked one.
#[test]
fn raw_column_blocks_from_parallel_tasks_equal_one_whole_call() {
    use rayon::prelude::*;
    for (m, k, n) in [(1, 40, 300), (37, 53, 300), (150, 70, 300)] {
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let bias = values(m, 3);
        let res = values(m * n, 4);
        let ldc = n + 5;
        let epi_for = |c0: usize, cols: usize| {
            [
                EpilogueOp::BiasPerRow(&bias),
                EpilogueOp::Add(MatRef {
                    data: &res[c0..],
                    rows: m,
                    cols,
                    row_stride: n,
                    col_stride: 1,
                }),
                EpilogueOp::Act(Activation::Relu),
            ]
        };
        let mut want = vec![f32::NAN; m * ldc];
        naive_gemm(
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            0.0,
            MatMut {
                data: &mut want,
                rows: m,
                cols: n,
                row_stride: ldc,
            },
            &epi_for(0, n),
        );
        let mut got = vec![f32::NAN; m * ldc];
        let whole = MatPtr::from(MatMut {
            data: &mut got,
            rows: m,
            cols: n,
            row_stride: ldc,
        });
        let blocks = [(0, 75), (75, 64), (139, 1), (140, 160)];
        blocks.par_iter().for_each(|&(c0, cols)| {
            let bv = MatRef {
                data: &b[c0..],
                rows: k,
                cols,
                row_stride: n,
                col_stride: 1,
            };
            // SAFETY: `got` outlives the loop, and the blocks are disjoint columns of it.
            unsafe {
                gemm_serial_raw(
                    MatRef::row_major(&a, m, k),
                    bv,
                    0.0,
                    whole.block(0, c0, m, cols),
                    &epi_for(c0, cols),
                )
            }
        });
        for i in 0..m {
            for j in 0..n {
                let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{m}x{k}x{n} at ({i}, {j}): {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn indirect_rows_match_the_gathered_product() {
    // B's rows are windows of one slice at scattered (and overlapping) offsets, as a padded
    // convolution plane gives them.
    for spec in spec::supported()
        .into_iter()
        .filter(|s| !s.indirect.is_empty())
    {
        for (m, k, n) in [
            (1, 1, 1),
            (8, 9, 16),
            (13, 27, 56),
            (20, 40, 7),
            (64, 36, 28),
            // Runs of the wide tiles (two registers a row) and what follows them.
            (5, 10, 32),
            (16, 12, 47),
            (8, 147, 112),
        ] {
            let data = values(k * 7 + 64 + n, 41);
            let offs: Vec<u32> = (0..k as u32).map(|p| (p * 37) % (k as u32 * 5)).collect();
            let ad = values(m * k, 42);
            let a = MatRef::row_major(&ad, m, k);
            let gathered: Vec<f32> = (0..k * n)
                .map(|i| data[offs[i / n] as usize + i % n])
                .collect();
            let bias = values(m, 43);
            let epi = [
                EpilogueOp::BiasPerRow(&bias),
                EpilogueOp::Act(Activation::Relu),
            ];
            let mut want = vec![0.0; m * n];
            let b_gathered = MatRef::row_major(&gathered, k, n);
            naive_gemm(a, b_gathered, 0.0, MatMut::row_major(&mut want, m, n), &epi);
            let ldc = n + 3;
            let mut got = vec![f32::NAN; m * ldc];
            let b = OffsetRows {
                data: &data,
                offs: OffsetTable::new(&offs),
                cols: n,
            };
            let c = MatPtr {
                ptr: got.as_mut_ptr(),
                rows: m,
                cols: n,
                row_stride: ldc,
            };
            // SAFETY: `got` holds m rows of ldc floats and is this call's alone.
            unsafe { indirect::gemm_indirect_with(spec, a, b, c, &epi) };
            for i in 0..m {
                assert_close(
                    &got[i * ldc..i * ldc + n],
                    &want[i * n..(i + 1) * n],
                    k,
                    &format!("{spec:?} {m}x{k}x{n} row {i}"),
                );
                assert!(got[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
            }
        }
    }
}

#[test]
fn flushing_a_packed_b_zeroes_its_subnormals_only() {
    let (k, n) = (3, 20);
    let mut bd = values(k * n, 50);
    bd[7] = 1e-40;
    bd[45] = -3e-39;
    let mut pb = pack_b(MatRef::row_major(&bd, k, n));
    let before: Vec<f32> = pb.data().to_vec();
    assert_eq!(before.iter().filter(|x| x.is_subnormal()).count(), 2);
    pb.flush_subnormals();
    for (&old, &new) in before.iter().zip(pb.data()) {
        let want = if old.is_subnormal() { 0.0 } else { old };
        assert_eq!(new.to_bits(), want.to_bits());
    }
}

#[test]
fn pixel_major_tiles_match_the_gathered_product() {
    if !pixel_major::supported() {
        return;
    }
    // Pixel i's patch element p is data[offs[p] + i] at scattered, overlapping offsets; C is
    // channels x pixels with padded rows, computed for a sub-range of the weight panels.
    for (pixels, k, n, panels) in [
        (1, 1, 1, 0..1),
        (8, 9, 16, 0..1),
        (13, 27, 37, 0..3),
        (20, 40, 37, 1..3),
        (7, 130, 48, 2..3),
        // Rows split into even tiles (56 = 10 tiles of 5-6, 14 = 3 of 4-5 on the AVX2 tiles),
        // most stored 8 pixels wide, the last ones exactly.
        (56, 18, 16, 0..1),
        (14, 33, 20, 0..2),
    ] {
        let data = values(k * 7 + 64 + pixels, 61);
        let offs: Vec<u32> = (0..k as u32).map(|p| (p * 37) % (k as u32 * 5)).collect();
        let wd = values(k * n, 62);
        let w = PackedPanels::new(MatRef::row_major(&wd, k, n));
        let (c0, c1) = (panels.start * PANEL, n.min(panels.end * PANEL));
        let rows = c1 - c0;
        // C = W_T[:, c0..c1]^T x A_T^T, by the naive product of the gathered operands.
        let at: Vec<f32> = (0..k * pixels)
            .map(|i| data[offs[i / pixels] as usize + i % pixels])
            .collect();
        let wt = MatRef {
            data: &wd[c0..],
            rows,
            cols: k,
            row_stride: 1,
            col_stride: n,
        };
        let (bias, res) = (values(rows, 63), values(rows * pixels, 64));
        let residual = MatRef::row_major(&res, rows, pixels);
        let epilogues: [&[EpilogueOp]; 3] = [
            &[],
            &[
                EpilogueOp::BiasPerRow(&bias),
                EpilogueOp::Add(residual),
                EpilogueOp::Act(Activation::Relu6),
            ],
            &[
                EpilogueOp::Act(Activation::Sigmoid),
                EpilogueOp::BiasPerRow(&bias),
            ],
        ];
        for epi in epilogues {
            let mut want = vec![0.0; rows * pixels];
            let a = MatRef::row_major(&at, k, pixels);
            naive_gemm(wt, a, 0.0, MatMut::row_major(&mut want, rows, pixels), epi);
            let ldc = pixels + 3;
            let mut got = vec![f32::NAN; rows * ldc];
            let c = MatPtr {
                ptr: got.as_mut_ptr(),
                rows,
                cols: pixels,
                row_stride: ldc,
            };
            let a = PixelRows {
                data: &data,
                offs: OffsetTable::new(&offs),
                pixels,
            };
            // SAFETY: `got` holds `rows` rows of ldc floats and is this call's alone.
            unsafe { gemm_pixel_major_raw(a, &w, panels.clone(), c, epi) };
            for i in 0..rows {
                assert_close(
                    &got[i * ldc..i * ldc + pixels],
                    &want[i * pixels..(i + 1) * pixels],
                    k,
                    &format!("{pixels}x{k}x{n} {panels:?} channel {i} {} ops", epi.len()),
                );
                assert!(got[i * ldc + pixels..(i + 1) * ldc]
                    .iter()
                    .all(|v| v.is_nan()));
            }
        }
    }
}

#[test]
fn prepacked_rows_match_the_naive_product() {
    // Direct-path row counts (<= 24) and blocked ones (> 96), depths over one K block and under,
    // narrow B (<= 32 columns: the direct path at any row count), ragged last panels of rows and
    // columns, row offsets, beta and a residual epilogue.
    let spec = spec::current();
    let mr = spec.mr;
    for (m, k, n) in [
        (7, 19, 5),
        (24, 300, 49),
        (130, 37, 600),
        (200, 700, 49),
        (300, 40, 600),
        (97, 1, 3),
        (250, 900, 20),
        (130, 37, 32),
    ] {
        let ad = values(m * k, 60 + m as u64);
        let packed = PackedRows::new(MatRef::row_major(&ad, m, k));
        assert_eq!(
            (packed.rows(), packed.depth(), packed.row_quantum()),
            (m, k, mr)
        );
        let bd = values(k * n, 61);
        let b = MatRef::row_major(&bd, k, n);
        for r0 in [0, mr, 2 * mr] {
            if r0 >= m {
                continue;
            }
            let rows = (m - r0).min(m / 2 + 1);
            let a = MatRef::row_major(&ad[r0 * k..(r0 + rows) * k], rows, k);
            let bias = values(rows, 62);
            let res = values(rows * n, 63);
            let epi = [
                EpilogueOp::BiasPerRow(&bias),
                EpilogueOp::Add(MatRef::row_major(&res, rows, n)),
                EpilogueOp::Act(Activation::Relu),
            ];
            for beta in [0.0, 0.5] {
                let init = values(rows * n, 64);
                let mut want = init.clone();
                naive_gemm(a, b, beta, MatMut::row_major(&mut want, rows, n), &epi);
                let mut got = init.clone();
                let c = MatPtr::from(MatMut::row_major(&mut got, rows, n));
                // SAFETY: `c` is `got`, borrowed for this call alone.
                unsafe { gemm_prepacked_serial_raw(&packed, r0, rows, b, beta, c, &epi) };
                assert_close(
                    &got,
                    &want,
                    k,
                    &format!("{m}x{k}x{n} rows {r0}+{rows} beta {beta}"),
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "packed rows")]
fn prepacked_rows_refuse_a_start_inside_a_panel() {
    let ad = values(20 * 8, 65);
    let packed = PackedRows::new(MatRef::row_major(&ad, 20, 8));
    let bd = values(8 * 4, 66);
    let mut out = vec![0.0; 4 * 4];
    let c = MatPtr::from(MatMut::row_major(&mut out, 4, 4));
    // SAFETY: `c` is `out`, borrowed for this call alone (which panics before writing).
    unsafe { gemm_prepacked_serial_raw(&packed, 1, 4, MatRef::row_major(&bd, 8, 4), 0.0, c, &[]) };
}
