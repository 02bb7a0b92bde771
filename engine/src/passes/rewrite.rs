//! Structural edits: rebuild a graph without some nodes, reading their input instead.

use crate::error::Result;
use crate::graph::{Graph, Model, NodeId, Op};
use crate::io::TensorStore;

/// `g` without the nodes marked in `drop`, each dropped node's readers reading its first input
/// instead; ids are renumbered, names kept. The output follows the same redirection.
pub fn without(g: &Graph, drop: &[bool]) -> Graph {
    let mut target: Vec<NodeId> = (0..g.nodes().len()).collect();
    for (id, n) in g.nodes().iter().enumerate() {
        if drop[id] {
            target[id] = target[n.inputs[0]];
        }
    }
    let mut new_id = vec![usize::MAX; g.nodes().len()];
    let mut out = Graph::new(g.input_shape());
    new_id[0] = 0;
    for (id, n) in g.nodes().iter().enumerate().skip(1) {
        if !drop[id] {
            let inputs: Vec<NodeId> = n.inputs.iter().map(|&i| new_id[target[i]]).collect();
            new_id[id] = out.push(n.name.clone(), n.op.clone(), &inputs);
        }
    }
    out.set_output(new_id[target[g.output()]]);
    out
}

/// A model from a rewritten graph and the tensors it needs (taken from `store` by name).
pub fn rebuild(graph: Graph, store: &TensorStore) -> Result<Model> {
    let mut needed = TensorStore::new();
    for n in graph.nodes() {
        for role in n.op.param_roles().iter().chain(n.op.buffer_roles()) {
            let name = format!("{}.{role}", n.name);
            if let Some(t) = store.try_get(&name) {
                needed.insert(name, t.clone());
            }
        }
    }
    Model::from_store(graph, &needed, &[])
}

/// Drop identities and dropout (no-ops in evaluation mode).
pub fn remove_passthrough(model: &Model) -> Result<Model> {
    let g = model.graph();
    let drop: Vec<bool> = g
        .nodes()
        .iter()
        .map(|n| matches!(n.op, Op::Identity | Op::Dropout { .. }))
        .collect();
    if !drop.contains(&true) {
        return Ok(model.clone());
    }
    rebuild(without(g, &drop), &model.to_store())
}
