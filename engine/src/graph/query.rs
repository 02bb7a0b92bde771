//! Structural questions passes ask of a graph: who reads a node, which batch-norm and convolution
//! feed an activation, what the next linear layer is.

use super::op::Op;
use super::{Graph, NodeId};

impl Graph {
    /// For every node, the nodes that read it.
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut c = vec![Vec::new(); self.nodes().len()];
        for (id, n) in self.nodes().iter().enumerate() {
            for &i in &n.inputs {
                c[i].push(id);
            }
        }
        c
    }

    /// The ids of all activation nodes, in order.
    pub fn activations(&self) -> Vec<NodeId> {
        (0..self.nodes().len())
            .filter(|&i| matches!(self.node(i).op, Op::Activation { .. }))
            .collect()
    }
}
