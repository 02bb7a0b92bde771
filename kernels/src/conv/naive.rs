//! Naive direct convolution in f64 loops: the ground truth every path is tested against. Slow by
//! design; no tiling, no SIMD, no threads.

use super::{Conv2dShape, ConvEpilogueOp};

/// Visit every (image, output channel, output pixel, input channel, ky, kx) with the flat indices
/// of the output, input and weight elements involved (taps in the padding are skipped).
fn for_each_tap(s: &Conv2dShape, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = s.out_hw();
    let p = &s.params;
    let (cin_g, cout_g) = (s.in_per_group(), s.out_per_group());
    for n in 0..s.batch {
        for oc in 0..s.out_channels {
            let gi = oc / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = ((n * s.out_channels + oc) * oh + oy) * ow + ox;
                    for ci in 0..cin_g {
                        let c = gi * cin_g + ci;
                        for ky in 0..s.kernel_h {
                            let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize
                                - p.padding.0 as isize;
                            if iy < 0 || iy >= s.in_h as isize {
                                continue;
                            }
                            for kx in 0..s.kernel_w {
                                let ix = (ox * p.stride.1 + kx * p.dilation.1) as isize
                                    - p.padding.1 as isize;
                                if ix < 0 || ix >= s.in_w as isize {
                                    continue;
                                }
                                let i = ((n * s.in_channels + c) * s.in_h + iy as usize) * s.in_w
                                    + ix as usize;
                                let wi = ((oc * cin_g + ci) * s.kernel_h + ky) * s.kernel_w + kx;
                                f(o, i, wi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Forward, then the epilogue (in f64 up to the activation).
pub fn forward(s: &Conv2dShape, x: &[f32], w: &[f32], out: &mut [f32], epi: &[ConvEpilogueOp]) {
    let mut acc = vec![0.0f64; s.output_len()];
    for_each_tap(s, |o, i, wi| acc[o] += x[i] as f64 * w[wi] as f64);
    let (oh, ow) = s.out_hw();
    let plane = oh * ow;
    for (o, v) in out.iter_mut().zip(&acc) {
        *o = *v as f32;
    }
    for op in epi {
        for (idx, o) in out.iter_mut().enumerate() {
            let oc = (idx / plane.max(1)) % s.out_channels;
            match *op {
                ConvEpilogueOp::Bias(b) => *o = (*o as f64 + b[oc] as f64) as f32,
                ConvEpilogueOp::Add(r) => *o = (*o as f64 + r[idx] as f64) as f32,
                ConvEpilogueOp::Act(a) => *o = a.apply(*o),
            }
        }
    }
}

/// Input gradient.
pub fn backward_input(s: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let mut acc = vec![0.0f64; s.input_len()];
    for_each_tap(s, |o, i, wi| acc[i] += dy[o] as f64 * w[wi] as f64);
    dx.iter_mut().zip(&acc).for_each(|(d, v)| *d = *v as f32);
}

/// Weight gradient.
pub fn backward_weight(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let mut acc = vec![0.0f64; s.weight_len()];
    for_each_tap(s, |o, i, wi| acc[wi] += dy[o] as f64 * x[i] as f64);
    dw.iter_mut().zip(&acc).for_each(|(d, v)| *d = *v as f32);
}
