//! Fold an evaluation-mode batch-norm into the convolution or linear layer before it:
//! `W' = W * s`, `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)` per channel.

use super::rewrite::{rebuild, without};
use crate::error::Result;
use crate::graph::{Model, Op};

/// Fold every batch-norm whose input is a convolution or linear layer read by nothing else.
pub fn fold_batch_norms(model: &Model) -> Result<Model> {
    let mut g = model.graph().clone();
    let mut store = model.to_store();
    let consumers = g.consumers();
    let mut folded = vec![];
    for id in 0..g.nodes().len() {
        let Op::BatchNorm(bn) = &g.node(id).op else {
            continue;
        };
        let eps = bn.eps;
        let prod = g.node(id).inputs[0];
        if consumers[prod].len() != 1 || !matches!(g.node(prod).op, Op::Conv2d(_) | Op::Linear(_)) {
            continue;
        }
        let (bn_name, p_name) = (g.node(id).name.clone(), g.node(prod).name.clone());
        let get = |r: &str| store.get(&format!("{bn_name}.{r}")).map(|t| t.to_vec());
        let (gamma, beta, mean, var) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + eps).sqrt())
            .collect();
        let mut w = store.get(&format!("{p_name}.weight"))?.clone();
        let row = w.numel() / scale.len();
        w.update_data(|d| {
            for (o, s) in scale.iter().enumerate() {
                d[o * row..(o + 1) * row].iter_mut().for_each(|v| *v *= s);
            }
        });
        let bias_name = format!("{p_name}.bias");
        let old_b = store
            .try_get(&bias_name)
            .map(|t| t.to_vec())
            .unwrap_or_else(|| vec![0.0; scale.len()]);
        let b: Vec<f32> = (0..scale.len())
            .map(|o| (old_b[o] - mean[o]) * scale[o] + beta[o])
            .collect();
        store.insert(format!("{p_name}.weight"), w);
        store.insert(
            bias_name,
            crate::tensor::Tensor::from_vec(b, &[scale.len()])?,
        );
        match &mut g.node_mut(prod).op {
            Op::Conv2d(c) => c.bias = true,
            Op::Linear(l) => l.bias = true,
            _ => unreachable!("checked above"),
        }
        folded.push(id);
    }
    let mut drop = vec![false; g.nodes().len()];
    folded.into_iter().for_each(|id| drop[id] = true);
    rebuild(without(&g, &drop), &store)
}
