//! Embedding lookup: rows of a `[V, D]` weight gathered by integer ids into `[*ids_shape, D]`.
//! The backward scatter-adds each output row's gradient into its weight row (repeated ids
//! accumulate); with a `padding_idx`, that row gets no gradient (its forward value is still
//! looked up, as in PyTorch).

use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::shape::numel;
use crate::tensor::Tensor;

struct EmbeddingBackward {
    ids: Vec<usize>,
    padding_idx: Option<usize>,
}

impl Backward for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let w = &inputs[0];
        let d = w.shape()[1];
        let g = grad.contiguous_data();
        let mut dw = vec![0.0f32; w.numel()];
        for (&id, row) in self.ids.iter().zip(g.chunks_exact(d.max(1))) {
            if Some(id) == self.padding_idx {
                continue;
            }
            dw[id * d..(id + 1) * d]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
        Ok(vec![Some(Tensor::new_unchecked(dw, w.shape()))])
    }
}

impl Tensor {
    /// Look up rows of this `[V, D]` weight: `ids` (each below V, row-major over `ids_shape`)
    /// give a `[*ids_shape, D]` tensor.
    pub fn embedding(&self, ids: &[usize], ids_shape: &[usize]) -> Result<Tensor> {
        self.embedding_with_padding(ids, ids_shape, None)
    }

    /// [`Tensor::embedding`] where row `padding_idx` (if any) receives no gradient.
    pub fn embedding_with_padding(
        &self,
        ids: &[usize],
        ids_shape: &[usize],
        padding_idx: Option<usize>,
    ) -> Result<Tensor> {
        let ws = self.shape();
        if ws.len() != 2 {
            return Err(Error::shape(
                "embedding",
                format!("weight must be [vocabulary, dim], got {ws:?}"),
            ));
        }
        let (v, d) = (ws[0], ws[1]);
        if numel(ids_shape) != ids.len() {
            return Err(Error::shape(
                "embedding",
                format!("{} ids cannot have shape {ids_shape:?}", ids.len()),
            ));
        }
        if let Some((pos, &id)) = ids.iter().enumerate().find(|(_, &id)| id >= v) {
            return Err(Error::invalid(
                "embedding",
                format!("id {id} at position {pos} is out of range for a vocabulary of {v}"),
            ));
        }
        if let Some(p) = padding_idx.filter(|&p| p >= v) {
            return Err(Error::invalid(
                "embedding",
                format!("padding_idx {p} is out of range for a vocabulary of {v}"),
            ));
        }
        let w = self.contiguous_data();
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            out.extend_from_slice(&w[id * d..(id + 1) * d]);
        }
        let mut shape = ids_shape.to_vec();
        shape.push(d);
        let out = Tensor::new_unchecked(out, &shape);
        Ok(Tensor::record(out, &[self], || EmbeddingBackward {
            ids: ids.to_vec(),
            padding_idx,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    #[test]
    fn values_and_repeated_ids_accumulate() {
        let w = Tensor::from_vec((0..8).map(|v| v as f32).collect(), &[4, 2])
            .unwrap()
            .with_requires_grad(true);
        let e = w.embedding(&[2, 0, 2], &[3]).unwrap();
        assert_eq!(e.shape(), &[3, 2]);
        assert_eq!(e.to_vec(), vec![4.0, 5.0, 0.0, 1.0, 4.0, 5.0]);
        let g = e.backward_with(Tensor::ones(&[3, 2])).unwrap();
        assert_eq!(
            g.get(&w).unwrap().to_vec(),
            vec![1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0]
        );
        let p = w
            .embedding_with_padding(&[2, 0, 2, 1], &[2, 2], Some(2))
            .unwrap();
        assert_eq!(p.shape(), &[2, 2, 2]);
        let g = p.backward_with(Tensor::ones(&[2, 2, 2])).unwrap();
        assert_eq!(
            g.get(&w).unwrap().to_vec(),
            vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        );
        // Scalar ids shape and a transposed weight.
        let wt = Tensor::from_vec((0..8).map(|v| v as f32).collect(), &[2, 4])
            .unwrap()
            .transpose(0, 1)
            .unwrap();
        assert_eq!(wt.embedding(&[3], &[]).unwrap().to_vec(), vec![3.0, 7.0]);
    }

    #[test]
    fn errors() {
        let w = Tensor::zeros(&[4, 2]);
        let e = w.embedding(&[1, 4], &[2]).unwrap_err().to_string();
        assert!(
            e.contains("embedding") && e.contains("id 4") && e.contains("vocabulary of 4"),
            "{e}"
        );
        let e = w.embedding(&[1, 2], &[3]).unwrap_err().to_string();
        assert!(e.contains("2 ids") && e.contains("[3]"), "{e}");
        assert!(Tensor::zeros(&[4]).embedding(&[0], &[1]).is_err());
        assert!(w.embedding_with_padding(&[0], &[1], Some(4)).is_err());
    }

    #[test]
    fn gradcheck_in_several_shapes() {
        let mut rng = Rng::new(8);
        let opts = GradcheckOptions::default();
        let cases: [(usize, usize, &[usize]); 4] = [
            (5, 3, &[4]),
            (7, 1, &[2, 3]),
            (3, 6, &[2, 2, 2]),
            (10, 4, &[]),
        ];
        for (v, d, ids_shape) in cases {
            let w = Tensor::randn(&[v, d], &mut rng);
            let ids: Vec<usize> = (0..numel(ids_shape)).map(|_| rng.below(v)).collect();
            gradcheck(
                "embedding",
                |t| t[0].embedding(&ids, ids_shape),
                &[w.clone()],
                &opts,
            )
            .unwrap();
            // padding_idx deliberately breaks the finite-difference match for its row: the
            // gradient must equal the unpadded one elsewhere and be 0 there.
            let pad = ids[0];
            let grad_of = |p: Option<usize>| {
                let w = w.with_requires_grad(true);
                let out = w.embedding_with_padding(&ids, ids_shape, p).unwrap();
                let up = Tensor::randn(out.shape(), &mut Rng::new(1));
                out.backward_with(up).unwrap().get(&w).unwrap().to_vec()
            };
            let (full, padded) = (grad_of(None), grad_of(Some(pad)));
            for (k, (a, b)) in full.iter().zip(&padded).enumerate() {
                assert_eq!(*b, if k / d == pad { 0.0 } else { *a });
            }
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("embedding").unwrap();
        for case in fx.cases() {
            let meta = fx.meta(&case).unwrap();
            let w = fx.tensor(&case, "weight").unwrap().with_requires_grad(true);
            let ids_t = fx.tensor(&case, "ids").unwrap();
            let ids: Vec<usize> = ids_t.to_vec().iter().map(|&v| v as usize).collect();
            let pad = meta["padding_idx"].as_u64().map(|p| p as usize);
            let out = w.embedding_with_padding(&ids, ids_t.shape(), pad).unwrap();
            assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
            let g = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            assert_close(
                g.get(&w).unwrap(),
                &fx.tensor(&case, "grad_weight").unwrap(),
                1e-4,
                &case,
            );
        }
    }
}
