//! Physically remove dead channels: output channels of a convolution or linear layer whose weight
//! rows and bias are all zero (TLC's OFF channels once batch-norms are folded) produce exactly 0,
//! so they can be cut from that layer and, as input channels, from every layer reading them —
//! when every reader is a dense convolution or a linear layer, possibly through element-wise nodes
//! that map 0 to 0 (identity, dropout, ReLU-family activations).

use super::rewrite::rebuild;
use crate::error::Result;
use crate::graph::{ActKind, Graph, Model, NodeId, Op};
use crate::io::TensorStore;
use crate::tensor::Tensor;

/// Whether a node maps an all-zero channel to an all-zero channel without parameters.
fn keeps_zero(op: &Op) -> bool {
    match op {
        Op::Identity | Op::Dropout { .. } => true,
        Op::Activation { act } => !matches!(act, ActKind::Sigmoid),
        _ => false,
    }
}

/// The layers that read `id`'s channels (through zero-keeping element-wise nodes), and the
/// element-wise nodes on the way; `None` if some reader cannot drop an input channel.
fn readers(g: &Graph, consumers: &[Vec<NodeId>], id: NodeId) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
    let (mut layers, mut passing, mut todo) = (vec![], vec![], vec![id]);
    while let Some(n) = todo.pop() {
        if n == g.output() {
            return None;
        }
        for &c in &consumers[n] {
            match &g.node(c).op {
                Op::Conv2d(cs) if cs.groups == 1 => layers.push(c),
                Op::Linear(_) if matches!(g.node(id).op, Op::Linear(_)) => layers.push(c),
                op if keeps_zero(op) => {
                    passing.push(c);
                    todo.push(c);
                }
                _ => return None,
            }
        }
    }
    (!layers.is_empty()).then_some((layers, passing))
}

/// Keep rows `keep` (along dimension `axis` of size `len`) of a tensor.
fn select(t: &Tensor, axis: usize, keep: &[usize]) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    let (outer, inner): (usize, usize) = (
        shape[..axis].iter().product(),
        shape[axis + 1..].iter().product(),
    );
    let d = t.to_vec();
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            out.extend_from_slice(&d[(o * shape[axis] + k) * inner..][..inner]);
        }
    }
    let mut s = shape;
    s[axis] = keep.len();
    Tensor::from_vec(out, &s)
}

/// Remove every dead output channel that all its readers can drop. At least one channel is kept
/// per layer so shapes stay valid.
pub fn prune_dead_channels(model: &Model) -> Result<Model> {
    let mut g = model.graph().clone();
    let mut store: TensorStore = model.to_store();
    let consumers = g.consumers();
    for id in 0..g.nodes().len() {
        let (rows, name) = match &g.node(id).op {
            Op::Conv2d(c) if c.groups == 1 => (c.out_ch, g.node(id).name.clone()),
            Op::Linear(l) => (l.out_f, g.node(id).name.clone()),
            _ => continue,
        };
        let w = store.get(&format!("{name}.weight"))?.to_vec();
        let b = store.try_get(&format!("{name}.bias")).map(|t| t.to_vec());
        let row = w.len() / rows;
        let dead = |o: usize| {
            w[o * row..][..row].iter().all(|v| *v == 0.0) && b.as_ref().is_none_or(|b| b[o] == 0.0)
        };
        let keep: Vec<usize> = (0..rows).filter(|&o| !dead(o)).collect();
        let keep = if keep.is_empty() { vec![0] } else { keep };
        if keep.len() == rows {
            continue;
        }
        let Some((layers, _)) = readers(&g, &consumers, id) else {
            continue;
        };
        for role in ["weight", "bias"] {
            let key = format!("{name}.{role}");
            if let Some(t) = store.try_get(&key) {
                let t = select(t, 0, &keep)?;
                store.insert(key, t);
            }
        }
        match &mut g.node_mut(id).op {
            Op::Conv2d(c) => c.out_ch = keep.len(),
            Op::Linear(l) => l.out_f = keep.len(),
            _ => unreachable!("matched above"),
        }
        for r in layers {
            let key = format!("{}.weight", g.node(r).name);
            let t = select(store.get(&key)?, 1, &keep)?;
            store.insert(key, t);
            match &mut g.node_mut(r).op {
                Op::Conv2d(c) => c.in_ch = keep.len(),
                Op::Linear(l) => l.in_f = keep.len(),
                _ => unreachable!("readers are convolutions and linear layers"),
            }
        }
    }
    rebuild(g, &store)
}
