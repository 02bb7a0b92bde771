//! An inverted residual's expansion and depthwise layers in one pass: a 1x1 convolution that
//! widens the channels (MobileNetV2's `t = 6` expansion: 16 -> 96 channels at 112x112 is a 4.8 MB
//! output) followed by a 3x3 depthwise convolution (stride 1 or 2, padding 1) that reads it.
//!
//! Run as two layers, the wide intermediate is a buffer of the plan's arena and crosses memory
//! twice. Here each task takes a block of channels and walks the image in bands of output rows:
//! it computes the expansion for the input rows a band reads (one GEMM against the weights packed
//! once, bias and activation on its store) into a buffer that stays in L2, runs the depthwise
//! kernel on that buffer and copies the band's output rows into place. The intermediate never
//! exists whole: MobileNetV2 at 224 needs a 3.9 MB activation arena instead of 8.4. On the Zen 3
//! machine of BENCHMARKS.md (32 MB of L3) that bought no time: the network ran as fast as with
//! the separate layers on two threads and ~10 % slower on one (each band's GEMM is short: 48
//! channels by 8 rows), so the plan fuses only when asked (`PlanOptions::fuse_expand_dw`).
//!
//! The band buffer holds the rows a band reads, with a zero row where the window reaches past the
//! image (the depthwise layer pads its *input* with zeros, and the expansion of a padded pixel
//! would be `act(bias)`), so the depthwise kernel runs on it with horizontal padding only. The
//! rows two bands share (two at stride 1, one at stride 2) move from the end of one band's buffer
//! to the start of the next, so every row is expanded once.

use super::{depthwise, Conv2dParams, Conv2dShape, ConvEpilogueOp, Weights};
use crate::activation::Activation;
use crate::gemm::{gemm_prepacked_serial_raw, EpilogueOp, MatPtr, MatRef, PackedRows};
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::with_fused;

/// Floats of band buffer per task: the expanded rows and the band's output, within L2 beside the
/// expansion's weight panels and the depthwise kernel's padded plane.
const BAND_FLOATS: usize = 48 * 1024;

/// Output rows a band should have at least (the channel blocks narrow to fit them).
const MIN_BAND: usize = 8;

/// Whether [`forward`] computes `expand` followed by `dw`: a 1x1 convolution (stride 1, no
/// padding, one group) whose output a 3x3 depthwise convolution (stride 1 or 2, padding 1, no
/// dilation, one channel per group) reads.
pub fn supports(expand: &Conv2dShape, dw: &Conv2dShape) -> bool {
    let e = &expand.params;
    let d = &dw.params;
    expand.kernel_h == 1
        && expand.kernel_w == 1
        && *e == Conv2dParams::default()
        && dw.batch == expand.batch
        && (dw.in_channels, dw.in_h, dw.in_w) == (expand.out_channels, expand.in_h, expand.in_w)
        && dw.out_channels == dw.in_channels
        && d.groups == dw.in_channels
        && (dw.kernel_h, dw.kernel_w) == (3, 3)
        && d.padding == (1, 1)
        && d.dilation == (1, 1)
        && matches!(d.stride, (1, 1) | (2, 2))
        && dw.out_hw() != (0, 0)
}

/// One layer's epilogue: per-channel bias, then an activation.
#[derive(Clone, Debug, Default)]
pub struct Stage {
    pub bias: Option<Vec<f32>>,
    pub act: Option<Activation>,
}

impl Stage {
    /// `f` of the epilogue as conv epilogue ops (bias, then activation), held on the stack.
    pub fn with_ops<R>(&self, f: impl FnOnce(&[ConvEpilogueOp]) -> R) -> R {
        self.with_ops_adding(None, f)
    }

    /// [`Stage::with_ops`] with `residual` (of the output's shape) added between the bias and
    /// the activation.
    pub fn with_ops_adding<R>(
        &self,
        residual: Option<&[f32]>,
        f: impl FnOnce(&[ConvEpilogueOp]) -> R,
    ) -> R {
        let mut ops = [ConvEpilogueOp::Act(Activation::Identity); 3];
        let mut n = 0;
        if let Some(b) = &self.bias {
            ops[n] = ConvEpilogueOp::Bias(b);
            n += 1;
        }
        if let Some(r) = residual {
            ops[n] = ConvEpilogueOp::Add(r);
            n += 1;
        }
        if let Some(a) = self.act {
            ops[n] = ConvEpilogueOp::Act(a);
            n += 1;
        }
        f(&ops[..n])
    }
}

/// The two layers: the expansion's weights packed as GEMM rows (`[Cexp x Cin]`), the depthwise
/// weights `[Cexp, 1, 3, 3]` (an inference plan holds one per fused step).
pub struct ExpandDw {
    pub expand: Conv2dShape,
    pub expand_w: PackedRows,
    pub expand_epi: Stage,
    pub dw: Conv2dShape,
    pub dw_w: Vec<f32>,
    pub dw_epi: Stage,
}

impl ExpandDw {
    /// Bytes of the two layers' weights (biases not counted).
    pub fn weight_bytes(&self) -> usize {
        4 * (self.expand_w.rows() * self.expand_w.depth() + self.dw_w.len())
    }

    /// Floats of the two layers' biases.
    pub fn bias_len(&self) -> usize {
        [&self.expand_epi.bias, &self.dw_epi.bias]
            .iter()
            .map(|b| b.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

/// `y = dw(expand(x))` with both epilogues; `x` is the expansion's input, `y` the depthwise
/// output. Panics unless [`supports`] holds and the buffers and weights have their shapes.
pub fn forward(f: &ExpandDw, x: &[f32], y: &mut [f32]) {
    forward_with(f, x, y, BAND_FLOATS)
}

/// [`forward`] with `band_floats` of band buffer per task (tests use small bands to cross band
/// boundaries on small images).
pub fn forward_with(f: &ExpandDw, x: &[f32], y: &mut [f32], band_floats: usize) {
    let (e, d) = (&f.expand, &f.dw);
    assert!(supports(e, d), "expand_dw: unsupported layer pair");
    assert_eq!(x.len(), e.input_len(), "expand_dw: input length");
    assert_eq!(y.len(), d.output_len(), "expand_dw: output length");
    assert_eq!(f.dw_w.len(), d.weight_len(), "expand_dw: depthwise weights");
    let c = e.out_channels;
    assert_eq!(
        (f.expand_w.rows(), f.expand_w.depth()),
        (c, e.in_channels),
        "expand_dw: expansion weights"
    );
    for (b, what) in [
        (&f.expand_epi.bias, "expansion"),
        (&f.dw_epi.bias, "depthwise"),
    ] {
        assert!(
            b.as_ref().is_none_or(|b| b.len() == c),
            "expand_dw: {what} bias length"
        );
    }
    let q = f.expand_w.row_quantum();
    let par = parallel::worth_splitting(e.macs() + d.macs(), CONV_PAR_MIN_MACS);
    let (oh, ow) = d.out_hw();
    // Channel blocks of whole weight panels: about four per thread in all, and narrow enough
    // that a band of MIN_BAND output rows fits the buffer (short bands expand their shared rows
    // again and again: one-row bands at stride 1 expand every row three times).
    let want = if par { 4 * parallel::num_threads() } else { 1 };
    let per_image = want.div_ceil(e.batch).clamp(1, c.div_ceil(q));
    let s = d.params.stride.0;
    let tall = MIN_BAND.min(oh);
    let per_channel = ((tall - 1) * s + 3) * e.in_w + tall * ow;
    let fit = (band_floats / per_channel).max(q) / q * q;
    let cb = c.div_ceil(per_image).next_multiple_of(q).min(fit).min(c);
    let blocks = c.div_ceil(cb);
    let plane_out = oh * ow;
    let out = MatPtr {
        ptr: y.as_mut_ptr(),
        rows: 1,
        cols: y.len(),
        row_stride: y.len(),
    };
    parallel::for_each_index(e.batch * blocks, par, |t| {
        let (n, c0) = (t / blocks, (t % blocks) * cb);
        let cb = cb.min(c - c0);
        let dst = out.block(0, (n * c + c0) * plane_out, 1, cb * plane_out);
        // SAFETY: task t alone writes image n's channels c0..c0 + cb of `y`, the range `dst`
        // covers.
        unsafe { channel_block(f, x, n, c0, cb, dst, band_floats) }
    });
}

/// Image `n`, channels `c0..c0 + cb`, band by band, into `dst` (those channels' output planes).
///
/// # Safety
/// `dst` is valid for writes of `cb` output planes and is this call's alone.
unsafe fn channel_block(
    f: &ExpandDw,
    x: &[f32],
    n: usize,
    c0: usize,
    cb: usize,
    dst: MatPtr,
    band_floats: usize,
) {
    let (e, d) = (&f.expand, &f.dw);
    let (h, w, s) = (e.in_h, e.in_w, d.params.stride.0);
    let (oh, ow) = d.out_hw();
    // Output rows per band: as many as fit the buffer beside their own output.
    let per_out_row = cb * (s * w + ow);
    let band = (band_floats.saturating_sub(cb * (3 - s) * w) / per_out_row).clamp(1, oh);
    let rows_in = (band - 1) * s + 3;
    let plane = h * w;
    let x_img = &x[n * e.in_channels * plane..(n + 1) * e.in_channels * plane];
    let dw_w = &f.dw_w[c0 * 9..(c0 + cb) * 9];
    // Fixed-size lists: a plan's steady-state runs allocate nothing.
    let mut expand_epi = [EpilogueOp::Act(Activation::Identity); 2];
    let mut ne = 0;
    if let Some(b) = &f.expand_epi.bias {
        expand_epi[ne] = EpilogueOp::BiasPerRow(&b[c0..c0 + cb]);
        ne += 1;
    }
    if let Some(a) = f.expand_epi.act {
        expand_epi[ne] = EpilogueOp::Act(a);
        ne += 1;
    }
    let expand_epi = &expand_epi[..ne];
    let mut dw_epi = [ConvEpilogueOp::Act(Activation::Identity); 2];
    let mut nd = 0;
    if let Some(b) = &f.dw_epi.bias {
        dw_epi[nd] = ConvEpilogueOp::Bias(&b[c0..c0 + cb]);
        nd += 1;
    }
    if let Some(a) = f.dw_epi.act {
        dw_epi[nd] = ConvEpilogueOp::Act(a);
        nd += 1;
    }
    let dw_epi = &dw_epi[..nd];
    with_fused(cb * rows_in * w + cb * band * ow, |buf| {
        let (ebuf, obuf) = buf.split_at_mut(cb * rows_in * w);
        // Rows the previous band expanded that this one reads again (its last 3 - s).
        let mut carried = 0;
        let mut prev_rin = 0;
        for r0 in (0..oh).step_by(band) {
            let rows_out = band.min(oh - r0);
            let rin = (rows_out - 1) * s + 3;
            // Input rows r0 * s - 1 ..= (r0 + rows_out - 1) * s + 1, clipped to the image;
            // `lead` is 1 when the window starts above the image.
            let top = r0 * s;
            let lead = usize::from(top == 0);
            let last = (top + rin - 2).min(h - 1);
            // Band rows lead.. hold image rows top - 1 + lead..; the first `carried` of them
            // move down from the end of the previous band (channel by channel in increasing
            // order: each channel's rows move to a lower offset, past no later channel's).
            if carried > 0 {
                for ch in 0..cb {
                    let from = (ch * prev_rin + prev_rin - carried) * w;
                    ebuf.copy_within(from..from + carried * w, ch * rin * w);
                }
            }
            let first = top + lead + carried - 1;
            let rows = last + 1 - first;
            let e_band = &mut ebuf[..cb * rin * w];
            let filled = lead + carried + rows;
            for ch in e_band.chunks_exact_mut(rin * w) {
                ch[..lead * w].fill(0.0);
                ch[filled * w..].fill(0.0);
            }
            let b = MatRef {
                data: &x_img[first * w..],
                rows: e.in_channels,
                cols: rows * w,
                row_stride: plane,
                col_stride: 1,
            };
            let c = MatPtr {
                ptr: e_band[(lead + carried) * w..].as_mut_ptr(),
                rows: cb,
                cols: rows * w,
                row_stride: rin * w,
            };
            // SAFETY: `c` covers rows `lead + carried..filled` of each channel's band in
            // `e_band`, which this call holds; `c0` is a multiple of the weights' row quantum
            // (blocks are).
            unsafe {
                gemm_prepacked_serial_raw(&f.expand_w, c0, cb, b, 0.0, c, expand_epi);
            }
            (carried, prev_rin) = (3 - s, rin);
            let band_shape = Conv2dShape {
                batch: 1,
                in_channels: cb,
                in_h: rin,
                in_w: w,
                out_channels: cb,
                kernel_h: 3,
                kernel_w: 3,
                params: Conv2dParams::default()
                    .stride(s, s)
                    .padding(0, 1)
                    .groups(cb),
            };
            let o_band = &mut obuf[..cb * rows_out * ow];
            depthwise::forward(&band_shape, e_band, Weights::F32(dw_w), o_band, dw_epi);
            for (k, rows) in o_band.chunks_exact(rows_out * ow).enumerate() {
                // SAFETY: channel k's rows r0..r0 + rows_out lie inside `dst`'s plane k.
                unsafe {
                    let p = dst.ptr.add(k * oh * ow + r0 * ow);
                    std::ptr::copy_nonoverlapping(rows.as_ptr(), p, rows.len());
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{forward_weights, Conv2dParams};

    /// Deterministic values in [-0.5, 0.5).
    fn data(n: usize, seed: u64) -> Vec<f32> {
        crate::simd::test_bits(seed)
            .take(n)
            .map(|b| (b >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }

    /// (batch, Cin, Cexp, H, W, stride)
    const CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
        (1, 3, 12, 9, 11, 1),
        (1, 3, 12, 9, 11, 2),
        (2, 5, 18, 8, 7, 2),
        (1, 4, 20, 1, 1, 1),
        (1, 4, 20, 2, 3, 2),
        (1, 16, 96, 24, 24, 2),
        (2, 8, 30, 17, 13, 1),
    ];

    #[test]
    fn matches_the_two_layers_at_every_band_size() {
        for (i, &(batch, cin, cexp, h, w, s)) in CASES.iter().enumerate() {
            let e = Conv2dShape {
                batch,
                in_channels: cin,
                in_h: h,
                in_w: w,
                out_channels: cexp,
                kernel_h: 1,
                kernel_w: 1,
                params: Conv2dParams::default(),
            };
            let d = Conv2dShape {
                batch,
                in_channels: cexp,
                in_h: h,
                in_w: w,
                out_channels: cexp,
                kernel_h: 3,
                kernel_w: 3,
                params: Conv2dParams::default()
                    .stride(s, s)
                    .padding(1, 1)
                    .groups(cexp),
            };
            assert!(supports(&e, &d));
            let seed = 10 * i as u64;
            let x = data(e.input_len(), seed);
            let ew = data(e.weight_len(), seed + 1);
            let dw = data(d.weight_len(), seed + 2);
            // A bias that makes the expansion of a zero pixel non-zero: padding must stay zero.
            let eb: Vec<f32> = data(cexp, seed + 3).iter().map(|v| v + 0.7).collect();
            let db = data(cexp, seed + 4);
            let act = Some(Activation::Relu6);
            let mut mid = vec![0.0; e.output_len()];
            let e_epi = [
                ConvEpilogueOp::Bias(&eb),
                ConvEpilogueOp::Act(Activation::Relu6),
            ];
            forward_weights(&e, &x, Weights::F32(&ew), &mut mid, &e_epi);
            let mut want = vec![0.0; d.output_len()];
            let d_epi = [
                ConvEpilogueOp::Bias(&db),
                ConvEpilogueOp::Act(Activation::Relu6),
            ];
            forward_weights(&d, &mid, Weights::F32(&dw), &mut want, &d_epi);
            let packed = PackedRows::new(MatRef::row_major(&ew, cexp, cin));
            let f = ExpandDw {
                expand: e,
                expand_w: packed,
                expand_epi: Stage {
                    bias: Some(eb.clone()),
                    act,
                },
                dw: d,
                dw_w: dw.clone(),
                dw_epi: Stage {
                    bias: Some(db.clone()),
                    act,
                },
            };
            // One output row per band, a few, and the whole image in one band.
            for band_floats in [1, 3 * cexp * (2 * w + w), 1 << 20] {
                let mut got = vec![f32::NAN; d.output_len()];
                forward_with(&f, &x, &mut got, band_floats);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "case {i} band {band_floats}: element {j} is {g}, expected {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn supports_only_the_fused_pair() {
        let e = Conv2dShape {
            batch: 1,
            in_channels: 4,
            in_h: 8,
            in_w: 8,
            out_channels: 8,
            kernel_h: 1,
            kernel_w: 1,
            params: Conv2dParams::default(),
        };
        let d = Conv2dShape {
            in_channels: 8,
            kernel_h: 3,
            kernel_w: 3,
            params: Conv2dParams::default().padding(1, 1).groups(8),
            ..e
        };
        assert!(supports(&e, &d));
        let dense = Conv2dShape {
            params: Conv2dParams::default().padding(1, 1),
            ..d
        };
        assert!(!supports(&e, &dense));
        let strided = Conv2dShape {
            params: Conv2dParams::default().stride(2, 2),
            ..e
        };
        assert!(!supports(&strided, &d));
        let s3 = Conv2dShape {
            params: Conv2dParams::default().padding(1, 1).groups(8).stride(3, 3),
            ..d
        };
        assert!(!supports(&e, &s3));
    }
}
