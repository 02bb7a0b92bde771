//! The model graph: a network as data.
//!
//! A [`Graph`] is a list of typed [`Node`]s in topological order (every input of a node comes
//! before it), each with a name following torchvision / Hugging Face module paths, so a node's
//! parameters are `<node name>.<role>` exactly as in PyTorch's `state_dict`. Passes (TLC, BN
//! folding, collapse, fusion) rewrite graphs using the queries in [`query`]; [`Model`] pairs a
//! graph with its parameters and runs it in training or evaluation mode.

pub mod model;
pub mod op;
pub mod query;

pub use model::{LinearInit, Mode, Model};
pub use op::{ActKind, BatchNormSpec, ConvSpec, LinearSpec, Op, PoolSpec};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use tlc_kernels::pool::pooled_size;

/// Index of a node in its graph.
pub type NodeId = usize;

/// One layer of a network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Module path, e.g. `layer1.0.conv1`; parameters are `<name>.weight` and so on.
    pub name: String,
    pub op: Op,
    /// The nodes whose outputs this node reads.
    pub inputs: Vec<NodeId>,
}

/// A network: nodes in topological order, one input, one output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    nodes: Vec<Node>,
    output: NodeId,
}

fn graph_err(detail: impl Into<String>) -> Error {
    Error::invalid("graph", detail)
}

impl Graph {
    /// A graph holding only its input node (`input`, of per-sample shape `shape`).
    pub fn new(shape: &[usize]) -> Graph {
        let input = Node {
            name: "input".into(),
            op: Op::Input {
                shape: shape.to_vec(),
            },
            inputs: vec![],
        };
        Graph {
            nodes: vec![input],
            output: 0,
        }
    }

    /// Append a node reading `inputs` and make it the output; returns its id. Builders call this
    /// in order, so the graph stays topologically sorted; [`Graph::validate`] checks the rest.
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: &[NodeId]) -> NodeId {
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.to_vec(),
        });
        self.output = self.nodes.len() - 1;
        self.output
    }

    /// The nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// Mutable access to node `id` (for passes; call [`Graph::validate`] afterwards).
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// The node whose value the network returns.
    pub fn output(&self) -> NodeId {
        self.output
    }

    /// Make `id` the output.
    pub fn set_output(&mut self, id: NodeId) {
        self.output = id;
    }

    /// The id of the node called `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        match &self.nodes[0].op {
            Op::Input { shape } => shape,
            _ => &[],
        }
    }

    /// Check the structure: one input first, inputs pointing backwards, unique names, the arity of
    /// each op, and that every node's shape can be inferred.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.nodes.first().map(|n| &n.op), Some(Op::Input { .. })) {
            return Err(graph_err("the first node must be the input"));
        }
        if self.output >= self.nodes.len() {
            return Err(graph_err(format!("output {} is not a node", self.output)));
        }
        let mut names = HashSet::new();
        for (id, n) in self.nodes.iter().enumerate() {
            if !names.insert(n.name.as_str()) {
                return Err(graph_err(format!("two nodes are called `{}`", n.name)));
            }
            if let Some(&bad) = n.inputs.iter().find(|&&i| i >= id) {
                return Err(graph_err(format!(
                    "node `{}` reads node {bad}, which does not come before it",
                    n.name
                )));
            }
            let arity_ok = match n.op {
                Op::Input { .. } => id == 0 && n.inputs.is_empty(),
                Op::Add => n.inputs.len() >= 2,
                _ => n.inputs.len() == 1,
            };
            if !arity_ok {
                return Err(graph_err(format!(
                    "node `{}` ({}) has {} inputs",
                    n.name,
                    n.op.kind_name(),
                    n.inputs.len()
                )));
            }
        }
        self.infer_shapes().map(|_| ())
    }

    /// The per-sample output shape of every node (no batch dimension).
    pub fn infer_shapes(&self) -> Result<Vec<Vec<usize>>> {
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let bad = |detail: String| {
                graph_err(format!(
                    "node `{}` ({}): {detail}",
                    n.name,
                    n.op.kind_name()
                ))
            };
            let x = n
                .inputs
                .first()
                .map(|&i| shapes[i].clone())
                .unwrap_or_default();
            let out = match &n.op {
                Op::Input { shape } => shape.clone(),
                Op::Conv2d(c) => {
                    if x.len() != 3 || x[0] != c.in_ch {
                        return Err(bad(format!("input {x:?} is not [{}, H, W]", c.in_ch)));
                    }
                    if c.groups == 0 || c.in_ch % c.groups != 0 || c.out_ch % c.groups != 0 {
                        return Err(bad(format!(
                            "{} groups do not divide {} -> {} channels",
                            c.groups, c.in_ch, c.out_ch
                        )));
                    }
                    let (oh, ow) = c
                        .params()
                        .output_size(x[1], x[2], c.kernel[0], c.kernel[1])
                        .ok_or_else(|| {
                            bad(format!("kernel {:?} does not fit input {x:?}", c.kernel))
                        })?;
                    vec![c.out_ch, oh, ow]
                }
                Op::BatchNorm(b) => {
                    if x.is_empty() || x[0] != b.channels {
                        return Err(bad(format!(
                            "input {x:?} does not have {} channels",
                            b.channels
                        )));
                    }
                    x
                }
                Op::Linear(l) => {
                    if x.last() != Some(&l.in_f) {
                        return Err(bad(format!(
                            "input {x:?} does not end in {} features",
                            l.in_f
                        )));
                    }
                    let mut o = x;
                    *o.last_mut().expect("checked non-empty") = l.out_f;
                    o
                }
                Op::Activation { .. } | Op::Dropout { .. } | Op::Identity => x,
                Op::Add => {
                    if let Some(&j) = n.inputs.iter().find(|&&j| shapes[j] != x) {
                        return Err(bad(format!("adds {x:?} and {:?}", shapes[j])));
                    }
                    x
                }
                Op::MaxPool(p) | Op::AvgPool(p) => {
                    if x.len() != 3 {
                        return Err(bad(format!("input {x:?} is not [C, H, W]")));
                    }
                    let size = |i: usize, a: usize| {
                        pooled_size(i, p.kernel[a], p.stride[a], p.padding[a], 1, p.ceil_mode)
                    };
                    match (size(x[1], 0), size(x[2], 1)) {
                        (Some(h), Some(w)) => vec![x[0], h, w],
                        _ => {
                            return Err(bad(format!(
                                "window {:?} does not fit input {x:?}",
                                p.kernel
                            )))
                        }
                    }
                }
                Op::AdaptiveAvgPool { out } => {
                    if x.len() != 3 || out[0] == 0 || out[1] == 0 {
                        return Err(bad(format!("input {x:?} / output {out:?} invalid")));
                    }
                    vec![x[0], out[0], out[1]]
                }
                Op::Flatten { start } => {
                    if *start == 0 || *start > x.len() {
                        return Err(bad(format!(
                            "cannot flatten from dimension {start} of [N, {x:?}]"
                        )));
                    }
                    let mut o = x[..start - 1].to_vec();
                    o.push(x[start - 1..].iter().product());
                    o
                }
            };
            shapes.push(out);
        }
        Ok(shapes)
    }

    /// The graph as JSON (stored in checkpoint headers).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("graphs serialise")
    }

    /// A graph from JSON, validated.
    pub fn from_json(json: &str) -> Result<Graph> {
        let g: Graph = serde_json::from_str(json)
            .map_err(|e| graph_err(format!("cannot parse the graph: {e}")))?;
        g.validate()?;
        Ok(g)
    }

    /// Multiply-accumulates per sample of every node (convolutions and linear layers; 0 for the rest).
    pub fn macs(&self) -> Result<Vec<u64>> {
        let shapes = self.infer_shapes()?;
        Ok(self
            .nodes
            .iter()
            .zip(&shapes)
            .map(|(n, out)| match &n.op {
                Op::Conv2d(c) => {
                    let per_out = (c.in_ch / c.groups.max(1) * c.kernel[0] * c.kernel[1]) as u64;
                    out.iter().product::<usize>() as u64 * per_out
                }
                Op::Linear(l) => {
                    (out.iter().product::<usize>() / l.out_f.max(1) * l.out_f * l.in_f) as u64
                }
                _ => 0,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
