//! Which activations TLC may remove, and what scores each: every activation node is a candidate;
//! it is scored through the batch-norm feeding it — directly, or through a residual add, taking
//! the add's deepest batch-norm input (the main branch; a downsample shortcut is shallower) — or,
//! with no batch-norm in front, through statistics measured on calibration batches.

use crate::graph::{Graph, NodeId, Op};

/// Where a candidate's per-channel Gaussian comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreSource {
    /// beta and gamma of this batch-norm node.
    BatchNorm(NodeId),
    /// Mean and std of the activation's input, measured on data.
    Calibration,
}

/// One removable activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The activation node.
    pub act: NodeId,
    pub source: ScoreSource,
    /// The residual add between the batch-norm and the activation, if any.
    pub residual: Option<NodeId>,
    /// The convolution or linear layer whose output channels the scores are about (the
    /// batch-norm's input, or the activation's input when there is no batch-norm).
    pub producer: Option<NodeId>,
    /// Channels scored (the channel axis of the activation's per-sample shape).
    pub channels: usize,
}

/// The channel axis of a per-sample shape: `C` of `[C, H, W]`, the features of `[F]` or `[T, F]`.
pub fn channel_axis(shape: &[usize]) -> usize {
    if shape.len() == 3 {
        0
    } else {
        shape.len().saturating_sub(1)
    }
}

/// Longest path (in nodes) from the input to every node.
fn depths(g: &Graph) -> Vec<usize> {
    let mut d = vec![0usize; g.nodes().len()];
    for (id, n) in g.nodes().iter().enumerate() {
        d[id] = n.inputs.iter().map(|&i| d[i] + 1).max().unwrap_or(0);
    }
    d
}

fn is_weighted(op: &Op) -> bool {
    matches!(op, Op::Conv2d(_) | Op::Linear(_))
}

/// Every activation of `g` (in graph order) with its score source. Errors only if the graph's
/// shapes cannot be inferred.
pub fn candidates(g: &Graph) -> crate::Result<Vec<Candidate>> {
    let shapes = g.infer_shapes()?;
    let depth = depths(g);
    let bn = |id: NodeId| matches!(g.node(id).op, Op::BatchNorm(_));
    Ok(g.activations()
        .into_iter()
        .map(|act| {
            let feed = g.node(act).inputs[0];
            let (source, residual) = match &g.node(feed).op {
                Op::BatchNorm(_) => (ScoreSource::BatchNorm(feed), None),
                Op::Add => {
                    let main = g
                        .node(feed)
                        .inputs
                        .iter()
                        .copied()
                        .filter(|&i| bn(i))
                        .max_by_key(|&i| depth[i]);
                    match main {
                        Some(b) => (ScoreSource::BatchNorm(b), Some(feed)),
                        None => (ScoreSource::Calibration, Some(feed)),
                    }
                }
                _ => (ScoreSource::Calibration, None),
            };
            let producer = match source {
                ScoreSource::BatchNorm(b) => Some(g.node(b).inputs[0]),
                ScoreSource::Calibration if residual.is_none() => Some(feed),
                ScoreSource::Calibration => None,
            }
            .filter(|&p| is_weighted(&g.node(p).op));
            let shape = &shapes[act];
            Candidate {
                act,
                source,
                residual,
                producer,
                channels: shape.get(channel_axis(shape)).copied().unwrap_or(1),
            }
        })
        .collect())
}
