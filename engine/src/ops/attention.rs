//! Scaled-dot-product attention: `softmax(scale * q k^T + mask + bias) v` over `[B, H, L, d]`
//! heads, fused in one kernel (no `[Lq, Lk]` score tensor is kept), with its backward to q, k, v
//! and the bias.
//!
//! - `mask` is an additive constant broadcast to `[B, H, Lq, Lk]` (BERT's padding mask
//!   `[B, 1, 1, Lk]`, a causal `[Lq, Lk]`, Swin's shifted-window mask expanded to
//!   `[B * windows, 1, N, N]`); -inf entries hide keys. It receives no gradient, so a mask that
//!   requires grad is refused (pass a learned term as `bias`).
//! - `bias` is `[H, Lq, Lk]` (or `[1, H, Lq, Lk]`), shared across the batch (Swin's
//!   relative-position bias) and differentiated.
//!
//! This matches PyTorch's `scaled_dot_product_attention(q, k, v, attn_mask=mask + bias,
//! scale=scale)`, including zero output and gradients for a query row whose keys are all -inf.

use crate::autograd::{self, Backward};
use crate::error::{Error, Result};
use crate::shape::contiguous_strides;
use crate::tensor::Tensor;
use std::borrow::Cow;
use tlc_kernels::attention::{
    self as kernel, Attention, AttentionGrads, Dims, HeadsRef, ScoreTerm,
};

const OP: &str = "scaled_dot_product_attention";

/// A tensor's values as f32 with the layout addressing them: the storage itself when it is f32
/// (no copy, any strides), a dense copy otherwise.
struct Strided<'a> {
    data: Cow<'a, [f32]>,
    offset: usize,
    strides: Vec<usize>,
}

fn strided(t: &Tensor) -> Strided<'_> {
    match t.storage().as_f32() {
        Some(s) => Strided {
            data: Cow::Borrowed(s),
            offset: t.storage_offset(),
            strides: t.strides().to_vec(),
        },
        None => Strided {
            data: Cow::Owned(t.to_vec()),
            offset: 0,
            strides: contiguous_strides(t.shape()),
        },
    }
}

impl Strided<'_> {
    fn slice(&self) -> &[f32] {
        &self.data[self.offset.min(self.data.len())..]
    }

    /// The rank-4 view as the kernel reads it.
    fn heads(&self) -> HeadsRef<'_> {
        let s = &self.strides;
        HeadsRef {
            data: self.slice(),
            strides: [s[0], s[1], s[2], s[3]],
        }
    }
}

/// The mask in the form the kernel reads: an f32 tensor whose key rows are contiguous, and the
/// (batch, head, query) strides that broadcast it (0 on broadcast dimensions).
#[derive(Clone)]
struct PreparedMask {
    t: Tensor,
    strides: [usize; 3],
}

impl PreparedMask {
    fn term(&self) -> ScoreTerm<'_> {
        let s = self.t.storage().as_f32().expect("prepared masks are f32");
        ScoreTerm {
            data: &s[self.t.storage_offset()..],
            strides: self.strides,
        }
    }
}

fn prepare_mask(mask: &Tensor, dims: &Dims) -> Result<PreparedMask> {
    let target = [dims.batch, dims.heads, dims.lq, dims.lk];
    let ms = mask.shape();
    let lead = 4usize.saturating_sub(ms.len());
    if ms.len() > 4
        || ms
            .iter()
            .zip(&target[lead..])
            .any(|(&m, &t)| m != t && m != 1)
    {
        return Err(Error::shape(
            OP,
            format!("mask {ms:?} does not broadcast to [B, H, Lq, Lk] = {target:?}"),
        ));
    }
    if mask.requires_grad() && autograd::is_grad_enabled() {
        return Err(Error::invalid(
            OP,
            "the mask gets no gradient but requires grad; pass a learned additive term as `bias` \
             ([H, Lq, Lk]) or detach the mask",
        ));
    }
    let mut shape4 = [1usize; 4];
    let mut strides4 = [0usize; 4];
    for (i, (&d, &s)) in ms.iter().zip(mask.strides()).enumerate() {
        shape4[lead + i] = d;
        strides4[lead + i] = s;
    }
    let keys_dense = dims.lk <= 1 || (shape4[3] == dims.lk && strides4[3] == 1);
    let t = if mask.storage().as_f32().is_some() && keys_dense {
        mask.detach()
    } else {
        // Broadcast over keys, a strided key axis or a non-f32 mask: one dense f32 copy, with
        // the key axis spelled out so that every row of keys is contiguous.
        let shape4i: Vec<isize> = shape4.iter().map(|&d| d as isize).collect();
        let full = [shape4[0], shape4[1], shape4[2], dims.lk];
        let dense = mask.detach().reshape(&shape4i)?.expand(&full)?.to_vec();
        let t = Tensor::from_vec(dense, &full)?;
        shape4 = full;
        strides4.copy_from_slice(t.strides());
        t
    };
    let bstride = |i: usize| if shape4[i] == 1 { 0 } else { strides4[i] };
    Ok(PreparedMask {
        t,
        strides: [bstride(0), bstride(1), bstride(2)],
    })
}

/// Check q, k, v, bias and scale, returning the dimensions.
fn check_operands(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: Option<f32>,
) -> Result<Dims> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return Err(Error::shape(
            OP,
            format!("q, k, v must be [B, H, L, d]; got q {qs:?}, k {ks:?}, v {vs:?}"),
        ));
    }
    if qs[..2] != ks[..2] || qs[..2] != vs[..2] {
        return Err(Error::shape(
            OP,
            format!("batch and head dimensions differ: q {qs:?}, k {ks:?}, v {vs:?}"),
        ));
    }
    if qs[3] != ks[3] {
        return Err(Error::shape(
            OP,
            format!("q {qs:?} and k {ks:?} have different feature sizes"),
        ));
    }
    if ks[2] != vs[2] {
        return Err(Error::shape(
            OP,
            format!("k {ks:?} and v {vs:?} have different sequence lengths"),
        ));
    }
    let dims = Dims {
        batch: qs[0],
        heads: qs[1],
        lq: qs[2],
        lk: ks[2],
        d: qs[3],
        dv: vs[3],
    };
    if let Some(b) = bias {
        let want = [dims.heads, dims.lq, dims.lk];
        let bs = b.shape();
        if bs != want && !(bs.len() == 4 && bs[0] == 1 && bs[1..] == want) {
            return Err(Error::shape(
                OP,
                format!("bias {bs:?} must be [H, Lq, Lk] = {want:?} (or with a leading 1)"),
            ));
        }
    }
    if let Some(s) = scale {
        if !s.is_finite() {
            return Err(Error::invalid(OP, format!("scale {s} is not finite")));
        }
    }
    Ok(dims)
}

struct AttentionBackward {
    /// The forward's output (shares its storage) and each query row's log-sum-exp.
    out: Tensor,
    lse: Vec<f32>,
    mask: Option<PreparedMask>,
    scale: f32,
}

impl Backward for AttentionBackward {
    fn name(&self) -> &'static str {
        OP
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (q, k, v, bias) = (&inputs[0], &inputs[1], &inputs[2], inputs.get(3));
        let dims = check_operands(q, k, v, bias, None)?;
        let Dims {
            batch,
            heads,
            lq,
            lk,
            d,
            dv,
        } = dims;
        let (sq, sk, sv) = (strided(q), strided(k), strided(v));
        let bias_data = bias.map(|b| b.contiguous_data());
        let attn = Attention {
            dims,
            q: sq.heads(),
            k: sk.heads(),
            v: sv.heads(),
            mask: self.mask.as_ref().map(|m| m.term()),
            bias: bias_data.as_deref(),
            scale: self.scale,
        };
        let bhn = batch * heads;
        let want =
            |t: Option<&Tensor>, n: usize| t.filter(|t| t.requires_grad()).map(|_| vec![0.0; n]);
        let mut dq = want(Some(q), bhn * lq * d);
        let mut dk = want(Some(k), bhn * lk * d);
        let mut dvg = want(Some(v), bhn * lk * dv);
        let mut db = want(bias, heads * lq * lk);
        let go = grad.contiguous_data();
        let out = self.out.contiguous_data();
        kernel::backward(
            &attn,
            &out,
            &self.lse,
            &go,
            AttentionGrads {
                dq: dq.as_deref_mut(),
                dk: dk.as_deref_mut(),
                dv: dvg.as_deref_mut(),
                dbias: db.as_deref_mut(),
            },
        );
        let wrap =
            |g: Option<Vec<f32>>, shape: &[usize]| g.map(|g| Tensor::new_unchecked(g, shape));
        let mut grads = vec![
            wrap(dq, q.shape()),
            wrap(dk, k.shape()),
            wrap(dvg, v.shape()),
        ];
        if let Some(b) = bias {
            grads.push(wrap(db, b.shape()));
        }
        Ok(grads)
    }
}

impl Tensor {
    /// Scaled-dot-product attention with `self` as the queries `[B, H, Lq, d]`, keys `k`
    /// `[B, H, Lk, d]` and values `v` `[B, H, Lk, dv]`, giving `[B, H, Lq, dv]`:
    /// `softmax(scale * q k^T + mask + bias) v` along the keys.
    ///
    /// `mask` broadcasts to `[B, H, Lq, Lk]` and is a constant (no gradient; -inf hides a key);
    /// `bias` is `[H, Lq, Lk]` (or `[1, H, Lq, Lk]`), shared over the batch and differentiated.
    /// `scale` defaults to `1 / sqrt(d)`. Inputs may be strided views (heads permuted out of a
    /// `[B, L, H, d]` projection are read in place). A query row whose scores are all -inf gets
    /// zeros, as PyTorch's SDPA gives.
    pub fn scaled_dot_product_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        bias: Option<&Tensor>,
        scale: Option<f32>,
    ) -> Result<Tensor> {
        let q = self;
        let dims = check_operands(q, k, v, bias, scale)?;
        let mask = mask.map(|m| prepare_mask(m, &dims)).transpose()?;
        let scale = scale.unwrap_or_else(|| kernel::default_scale(dims.d));
        let (sq, sk, sv) = (strided(q), strided(k), strided(v));
        let bias_data = bias.map(|b| b.contiguous_data());
        let attn = Attention {
            dims,
            q: sq.heads(),
            k: sk.heads(),
            v: sv.heads(),
            mask: mask.as_ref().map(|m| m.term()),
            bias: bias_data.as_deref(),
            scale,
        };
        let Dims {
            batch,
            heads,
            lq,
            dv,
            ..
        } = dims;
        let mut inputs = vec![q, k, v];
        inputs.extend(bias);
        let recording = autograd::is_grad_enabled() && inputs.iter().any(|t| t.requires_grad());
        let mut out = vec![0.0f32; batch * heads * lq * dv];
        let mut lse = recording.then(|| vec![0.0f32; batch * heads * lq]);
        kernel::forward(&attn, &mut out, lse.as_deref_mut());
        let out = Tensor::new_unchecked(out, &[batch, heads, lq, dv]);
        let saved = out.clone();
        Ok(Tensor::record(out, &inputs, || AttentionBackward {
            out: saved,
            lse: lse.unwrap_or_default(),
            mask,
            scale,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    /// BERT's padding mask `[B, 1, 1, Lk]`: batch b hides its last b keys.
    fn padding_mask(b: usize, lk: usize) -> Tensor {
        let mut m = vec![0.0; b * lk];
        for i in 0..b {
            for j in lk - i.min(lk - 1)..lk {
                m[i * lk + j] = f32::NEG_INFINITY;
            }
        }
        Tensor::from_vec(m, &[b, 1, 1, lk]).unwrap()
    }

    #[test]
    fn values() {
        // Zero queries: a uniform average of the values.
        let q = Tensor::zeros(&[1, 1, 2, 3]);
        let k = Tensor::from_vec((0..12).map(|x| x as f32).collect(), &[1, 1, 4, 3]).unwrap();
        let v =
            Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[1, 1, 4, 2]).unwrap();
        let o = q
            .scaled_dot_product_attention(&k, &v, None, None, None)
            .unwrap();
        assert_eq!(o.shape(), &[1, 1, 2, 2]);
        assert_close(
            &o,
            &Tensor::from_vec(vec![4.0, 5.0, 4.0, 5.0], &[1, 1, 2, 2]).unwrap(),
            1e-6,
            "uniform",
        );
        // An [Lq, Lk] mask broadcast over B and H: row 0 sees only key 2, row 1 only key 0.
        let ninf = f32::NEG_INFINITY;
        let m =
            Tensor::from_vec(vec![ninf, ninf, 0.0, ninf, 0.0, ninf, ninf, ninf], &[2, 4]).unwrap();
        let o = q
            .scaled_dot_product_attention(&k, &v, Some(&m), None, None)
            .unwrap();
        assert_eq!(o.to_vec(), vec![5.0, 6.0, 1.0, 2.0]);
        // A huge bias picks one key; a fully masked row gives zeros (PyTorch's SDPA does too).
        let mut bias = vec![0.0; 8];
        bias[3] = 1e4;
        let bias = Tensor::from_vec(bias, &[1, 2, 4]).unwrap();
        let m =
            Tensor::from_vec(vec![0.0, 0.0, 0.0, 0.0, ninf, ninf, ninf, ninf], &[2, 4]).unwrap();
        let o = q
            .scaled_dot_product_attention(&k, &v, Some(&m), Some(&bias), Some(0.5))
            .unwrap();
        assert_eq!(o.to_vec(), vec![7.0, 8.0, 0.0, 0.0]);
        // f16 storage goes through the copying path.
        let v16: Vec<half::f16> = v.to_vec().into_iter().map(half::f16::from_f32).collect();
        let v16 = Tensor::from_storage(Storage::F16(v16), &[1, 1, 4, 2]).unwrap();
        let o = q
            .scaled_dot_product_attention(&k, &v16, None, None, None)
            .unwrap();
        assert_eq!(o.to_vec(), vec![4.0, 5.0, 4.0, 5.0]);
    }

    #[test]
    fn errors_name_the_shapes() {
        let mut rng = Rng::new(1);
        let q = Tensor::randn(&[2, 3, 4, 8], &mut rng);
        let k = Tensor::randn(&[2, 3, 5, 8], &mut rng);
        let v = Tensor::randn(&[2, 3, 5, 6], &mut rng);
        let sdpa = |q: &Tensor, k: &Tensor, v: &Tensor, m: Option<&Tensor>, b: Option<&Tensor>| {
            q.scaled_dot_product_attention(k, v, m, b, None)
                .unwrap_err()
                .to_string()
        };
        let r = |s: &[usize]| Tensor::zeros(s);
        let e = sdpa(&r(&[3, 4, 8]), &k, &v, None, None);
        assert!(e.contains(OP) && e.contains("[3, 4, 8]"), "{e}");
        let e = sdpa(&q, &r(&[1, 3, 5, 8]), &v, None, None);
        assert!(
            e.contains("batch and head") && e.contains("[1, 3, 5, 8]"),
            "{e}"
        );
        let e = sdpa(&q, &k, &r(&[2, 2, 5, 6]), None, None);
        assert!(e.contains("batch and head"), "{e}");
        let e = sdpa(&q, &r(&[2, 3, 5, 7]), &v, None, None);
        assert!(e.contains("feature sizes"), "{e}");
        let e = sdpa(&q, &k, &r(&[2, 3, 6, 6]), None, None);
        assert!(e.contains("sequence lengths"), "{e}");
        for bad in [&[2, 1, 1, 6][..], &[3, 1, 4, 5], &[1, 2, 3, 4, 5], &[4, 4]] {
            let e = sdpa(&q, &k, &v, Some(&r(bad)), None);
            assert!(e.contains("mask") && e.contains(&format!("{bad:?}")), "{e}");
        }
        for bad in [&[3, 4][..], &[2, 3, 4, 5], &[3, 5, 4], &[1, 1, 4, 5]] {
            let e = sdpa(&q, &k, &v, None, Some(&r(bad)));
            assert!(e.contains("bias") && e.contains(&format!("{bad:?}")), "{e}");
        }
        let e = q
            .scaled_dot_product_attention(&k, &v, None, None, Some(f32::NAN))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scale"), "{e}");
        let m = r(&[2, 1, 1, 5]).with_requires_grad(true);
        let e = sdpa(&q, &k, &v, Some(&m), None);
        assert!(e.contains("mask") && e.contains("bias"), "{e}");
        // Under no_grad the same mask is just a constant.
        assert!(
            crate::no_grad(|| q.scaled_dot_product_attention(&k, &v, Some(&m), None, None)).is_ok()
        );
    }

    #[test]
    fn masks_of_every_broadcast_form_agree_with_the_dense_one() {
        let mut rng = Rng::new(4);
        let (b, h, lq, lk) = (2, 3, 4, 5);
        let q = Tensor::randn(&[b, h, lq, 8], &mut rng);
        let k = Tensor::randn(&[b, h, lk, 8], &mut rng);
        let v = Tensor::randn(&[b, h, lk, 3], &mut rng);
        for shape in [
            &[b, 1, 1, lk][..],
            &[lk],
            &[lq, 1],
            &[1, h, lq, 1],
            &[b, h, lq, lk],
            &[h, 1, lk],
        ] {
            let m = Tensor::randn(shape, &mut rng);
            let dense = m.expand(&[b, h, lq, lk]).unwrap().contiguous();
            let got = q
                .scaled_dot_product_attention(&k, &v, Some(&m), None, None)
                .unwrap();
            let want = q
                .scaled_dot_product_attention(&k, &v, Some(&dense), None, None)
                .unwrap();
            assert_close(&got, &want, 1e-6, &format!("mask {shape:?}"));
        }
        // A transposed (strided-keys) mask.
        let m = Tensor::randn(&[lk, lq], &mut rng).transpose(0, 1).unwrap();
        let got = q
            .scaled_dot_product_attention(&k, &v, Some(&m), None, None)
            .unwrap();
        let want = q
            .scaled_dot_product_attention(&k, &v, Some(&m.contiguous()), None, None)
            .unwrap();
        assert_close(&got, &want, 1e-6, "transposed mask");
        // An f16 mask is read through one f32 copy.
        let m: Vec<half::f16> = (0..b * lk)
            .map(|i| half::f16::from_f32(if i % 4 == 3 { -1e4 } else { 0.5 }))
            .collect();
        let m16 = Tensor::from_storage(Storage::F16(m), &[b, 1, 1, lk]).unwrap();
        let m32 = Tensor::from_vec(m16.to_vec(), &[b, 1, 1, lk]).unwrap();
        let sdpa = |m: &Tensor| q.scaled_dot_product_attention(&k, &v, Some(m), None, None);
        assert_close(&sdpa(&m16).unwrap(), &sdpa(&m32).unwrap(), 1e-6, "f16 mask");
    }

    #[test]
    fn gradcheck_shapes_and_options() {
        let mut rng = Rng::new(7);
        // (B, H, Lq, Lk, d, dv)
        let shapes = [
            (1, 1, 3, 4, 5, 2),
            (2, 3, 5, 7, 4, 6),
            (2, 2, 1, 6, 8, 3),
            (1, 2, 9, 3, 3, 5),
        ];
        let o = GradcheckOptions::default();
        for (i, &(b, h, lq, lk, d, dv)) in shapes.iter().enumerate() {
            let q = Tensor::randn(&[b, h, lq, d], &mut rng);
            let k = Tensor::randn(&[b, h, lk, d], &mut rng);
            let v = Tensor::randn(&[b, h, lk, dv], &mut rng);
            let bias = Tensor::randn(&[h, lq, lk], &mut rng);
            let mask = padding_mask(b, lk);
            let scale = (i % 2 == 1).then_some(0.7);
            let name = format!("sdpa {:?}", shapes[i]);
            gradcheck(
                &name,
                |t| t[0].scaled_dot_product_attention(&t[1], &t[2], None, None, scale),
                &[q.clone(), k.clone(), v.clone()],
                &o,
            )
            .unwrap();
            gradcheck(
                &format!("{name} mask"),
                |t| t[0].scaled_dot_product_attention(&t[1], &t[2], Some(&mask), None, scale),
                &[q.clone(), k.clone(), v.clone()],
                &o,
            )
            .unwrap();
            gradcheck(
                &format!("{name} bias"),
                |t| t[0].scaled_dot_product_attention(&t[1], &t[2], None, Some(&t[3]), scale),
                &[q.clone(), k.clone(), v.clone(), bias.clone()],
                &o,
            )
            .unwrap();
            gradcheck(
                &format!("{name} mask+bias"),
                |t| {
                    t[0].scaled_dot_product_attention(&t[1], &t[2], Some(&mask), Some(&t[3]), scale)
                },
                &[q.clone(), k.clone(), v.clone(), bias.unsqueeze(0).unwrap()],
                &o,
            )
            .unwrap();
        }
    }

    #[test]
    fn gradcheck_strided_heads_and_shared_inputs() {
        let mut rng = Rng::new(9);
        // Heads permuted out of a [B, L, H, d] projection: read in place, gradients dense.
        let x = Tensor::randn(&[2, 5, 3, 4], &mut rng);
        let kx = Tensor::randn(&[2, 6, 3, 4], &mut rng);
        let o = GradcheckOptions::default();
        gradcheck(
            "sdpa strided",
            |t| {
                let q = t[0].permute(&[0, 2, 1, 3])?;
                let k = t[1].permute(&[0, 2, 1, 3])?;
                q.scaled_dot_product_attention(&k, &k, None, None, None)
            },
            &[x.clone(), kx],
            &o,
        )
        .unwrap();
        // Self-attention with q = k = v: three gradients accumulate into one.
        gradcheck(
            "sdpa self",
            |t| {
                let a = t[0].permute(&[0, 2, 1, 3])?;
                a.scaled_dot_product_attention(&a, &a, Some(&padding_mask(2, 5)), None, None)
            },
            &[x],
            &o,
        )
        .unwrap();
    }

    #[test]
    fn gradients_skip_inputs_that_do_not_require_them() {
        let mut rng = Rng::new(5);
        let q = Tensor::randn(&[1, 2, 3, 4], &mut rng);
        let k = Tensor::randn(&[1, 2, 5, 4], &mut rng).with_requires_grad(true);
        let v = Tensor::randn(&[1, 2, 5, 4], &mut rng);
        let bias = Tensor::randn(&[2, 3, 5], &mut rng);
        let out = q
            .scaled_dot_product_attention(&k, &v, None, Some(&bias), None)
            .unwrap();
        assert!(out.requires_grad());
        let g = out.backward_with(Tensor::ones(out.shape())).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g.get(&k).unwrap().shape(), k.shape());
        // Nothing requires grad: nothing is recorded.
        let plain = q
            .scaled_dot_product_attention(&k.detach(), &v, None, None, None)
            .unwrap();
        assert!(!plain.requires_grad());
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("attention").unwrap();
        for case in fx.cases() {
            let leaf = |role: &str| fx.tensor(&case, role).unwrap().with_requires_grad(true);
            let (q, k, v) = (leaf("q"), leaf("k"), leaf("v"));
            let bias = fx
                .try_tensor(&case, "bias")
                .map(|t| t.with_requires_grad(true));
            let mask = fx.try_tensor(&case, "mask");
            let scale = fx.meta(&case).unwrap()["scale"].as_f64().map(|s| s as f32);
            let out = q
                .scaled_dot_product_attention(&k, &v, mask.as_ref(), bias.as_ref(), scale)
                .unwrap();
            assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
            let g = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            let mut checks = vec![(&q, "grad_q"), (&k, "grad_k"), (&v, "grad_v")];
            if let Some(b) = &bias {
                checks.push((b, "grad_bias"));
            }
            for (t, role) in checks {
                let what = format!("{case} {role}");
                assert_close(
                    g.get(t).unwrap(),
                    &fx.tensor(&case, role).unwrap(),
                    1e-4,
                    &what,
                );
            }
        }
    }
}
