//! Removing one activation: the node becomes an identity; its OFF channels are zeroed in the layer
//! that produces them and in the batch-norm (and must stay zero while fine-tuning: see
//! [`ChannelMask`]); and when the removal leaves two convolutions with nothing non-linear between
//! them, the second one's zero padding moves onto the first, so that a later merge of the pair is
//! exact at the borders (TLC.md, "Borders").

use super::candidates::{Candidate, ScoreSource};
use super::scores::LayerScore;
use crate::error::{Error, Result};
use crate::graph::{Graph, Model, NodeId, Op};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Output channels (rows along dimension 0) of a parameter that are held at zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelMask {
    /// Full parameter name, e.g. `layer1.0.conv1.weight`.
    pub param: String,
    pub channels: Vec<usize>,
}

impl ChannelMask {
    /// Zero the masked rows of `t` (a parameter, its gradient or an optimizer buffer).
    pub fn apply(&self, t: &mut Tensor) {
        let rows = t.shape().first().copied().unwrap_or(1).max(1);
        let row = t.numel() / rows;
        t.update_data(|d| {
            for &c in &self.channels {
                d[c * row..(c + 1) * row].fill(0.0);
            }
        });
    }
}

/// What removing one activation changed, for the checkpoint and the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linearized {
    /// The activation's node name.
    pub act: String,
    /// Channels decided OFF.
    pub off_channels: Vec<usize>,
    /// Parameters with rows held at zero.
    pub masks: Vec<ChannelMask>,
    /// `(first conv, second conv)` when padding moved from the second onto the first.
    pub relocated_padding: Option<(String, String)>,
}

/// The only consumer of `id`, if it has exactly one.
fn sole_consumer(consumers: &[Vec<NodeId>], id: NodeId) -> Option<NodeId> {
    match consumers[id].as_slice() {
        [c] => Some(*c),
        _ => None,
    }
}

/// Move the padding of the convolution after `act` onto the convolution producing `act`'s input,
/// when they form a private chain `conv1 -> [bn] -> act -> conv2` with unit dilations.
fn relocate_padding(g: &mut Graph, cand: &Candidate) -> Option<(String, String)> {
    let consumers = g.consumers();
    let first = cand.producer?;
    if cand.residual.is_some() {
        return None;
    }
    let mut next = sole_consumer(&consumers, first)?;
    if let ScoreSource::BatchNorm(bn) = cand.source {
        if next != bn {
            return None;
        }
        next = sole_consumer(&consumers, bn)?;
    }
    if next != cand.act {
        return None;
    }
    let second = sole_consumer(&consumers, cand.act)?;
    let (Op::Conv2d(c1), Op::Conv2d(c2)) = (&g.node(first).op, &g.node(second).op) else {
        return None;
    };
    if c1.dilation != [1, 1] || c2.dilation != [1, 1] || c2.padding == [0, 0] {
        return None;
    }
    let padding = [
        c1.padding[0] + c1.stride[0] * c2.padding[0],
        c1.padding[1] + c1.stride[1] * c2.padding[1],
    ];
    if let Op::Conv2d(c) = &mut g.node_mut(first).op {
        c.padding = padding;
    }
    if let Op::Conv2d(c) = &mut g.node_mut(second).op {
        c.padding = [0, 0];
    }
    Some((g.node(first).name.clone(), g.node(second).name.clone()))
}

/// Remove `cand`'s activation from `model` with the channel decisions of `score`.
pub fn linearize(model: &mut Model, cand: &Candidate, score: &LayerScore) -> Result<Linearized> {
    let mut g = model.graph().clone();
    let act = g.node(cand.act);
    if !matches!(act.op, Op::Activation { .. }) {
        return Err(Error::invalid(
            "tlc",
            format!("node `{}` is not an activation", act.name),
        ));
    }
    if score.on.len() != cand.channels {
        return Err(Error::shape(
            "tlc",
            format!(
                "{} channel decisions for `{}`, which has {} channels",
                score.on.len(),
                act.name,
                cand.channels
            ),
        ));
    }
    let act_name = act.name.clone();
    g.node_mut(cand.act).op = Op::Identity;
    let relocated_padding = relocate_padding(&mut g, cand);
    model.set_graph(g)?;

    let off: Vec<usize> = score
        .on
        .iter()
        .enumerate()
        .filter(|(_, &on)| !on)
        .map(|(i, _)| i)
        .collect();
    let mut owners: Vec<NodeId> = cand.producer.into_iter().collect();
    if let ScoreSource::BatchNorm(bn) = cand.source {
        owners.push(bn);
    }
    let mut masks = vec![];
    if !off.is_empty() {
        for id in owners {
            let node = model.graph().node(id);
            for role in node.op.param_roles() {
                masks.push(ChannelMask {
                    param: format!("{}.{role}", node.name),
                    channels: off.clone(),
                });
            }
        }
    }
    for m in &masks {
        let t = model
            .get_mut(&m.param)
            .expect("mask names come from the graph's own parameters");
        m.apply(t);
    }
    Ok(Linearized {
        act: act_name,
        off_channels: off,
        masks,
        relocated_padding,
    })
}
