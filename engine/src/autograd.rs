//! Reverse-mode automatic differentiation.
//!
//! An op whose inputs require grad attaches a [`Node`] to its output: the inputs, and a
//! [`Backward`] that maps the output's gradient to theirs. There is no global tape: the graph is
//! the web of `Arc`s from the loss back to the leaves, freed when the loss is dropped. With grad
//! mode off ([`no_grad`]) or no input requiring grad, ops record nothing and pay nothing.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// The backward half of an op.
pub trait Backward: Send + Sync {
    /// The op's name, for error messages.
    fn name(&self) -> &'static str;

    /// Given the gradient of the loss with respect to the op's output, the gradients with respect
    /// to each input (in the order the op recorded them), `None` for inputs that need none.
    /// `inputs` are the op's inputs as recorded; ops may use them as saved values.
    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>>;
}

/// The autograd record of one output: its op and inputs.
pub(crate) struct Node {
    pub(crate) op: Box<dyn Backward>,
    pub(crate) inputs: Vec<Tensor>,
}

/// Autograd bookkeeping carried by a tensor that requires grad.
pub(crate) struct GradMeta {
    pub(crate) id: u64,
    pub(crate) node: Option<Node>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Opt-in wall-clock timing of the model executor's forward ops and of each backward op, by op
/// kind, for profiling training steps. Off by default: one relaxed atomic load per op when off.
pub mod profile {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    static ON: AtomicBool = AtomicBool::new(false);
    /// (phase, kind) -> (seconds, calls).
    type Totals = BTreeMap<(&'static str, &'static str), (f64, u64)>;
    static TIMES: Mutex<Totals> = Mutex::new(BTreeMap::new());

    /// Turn timing on or off (process-wide).
    pub fn set_enabled(on: bool) {
        ON.store(on, Ordering::Relaxed);
    }

    /// Whether timing is on.
    #[inline]
    pub fn enabled() -> bool {
        ON.load(Ordering::Relaxed)
    }

    /// A start time when timing is on.
    #[inline]
    pub fn start() -> Option<Instant> {
        enabled().then(Instant::now)
    }

    /// Add the time since `t0` (from [`start`]) to `(phase, kind)`.
    #[inline]
    pub fn stop(t0: Option<Instant>, phase: &'static str, kind: &'static str) {
        if let Some(t0) = t0 {
            let dt = t0.elapsed().as_secs_f64();
            let mut m = TIMES.lock().unwrap_or_else(|e| e.into_inner());
            let e = m.entry((phase, kind)).or_insert((0.0, 0));
            e.0 += dt;
            e.1 += 1;
        }
    }

    /// The totals so far, `(phase, kind, seconds, calls)`, clearing them.
    pub fn take() -> Vec<(&'static str, &'static str, f64, u64)> {
        let mut m = TIMES.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *m)
            .into_iter()
            .map(|((p, k), (s, c))| (p, k, s, c))
            .collect()
    }
}

impl GradMeta {
    pub(crate) fn leaf() -> Self {
        GradMeta {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            node: None,
        }
    }

    pub(crate) fn with_node(node: Node) -> Self {
        GradMeta {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            node: Some(node),
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record autograd history.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Run `f` with autograd recording off on this thread (evaluation, optimizer updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(false)));
    f()
}

/// Gradients of a loss with respect to the leaves that required them, keyed by leaf identity.
#[derive(Default)]
pub struct Gradients {
    by_id: HashMap<u64, Tensor>,
}

impl Gradients {
    /// The gradient for `leaf`, if it required grad and the loss depends on it.
    pub fn get(&self, leaf: &Tensor) -> Option<&Tensor> {
        leaf.grad_id().and_then(|id| self.by_id.get(&id))
    }

    /// Take the gradient for `leaf` out of the set.
    pub fn remove(&mut self, leaf: &Tensor) -> Option<Tensor> {
        leaf.grad_id().and_then(|id| self.by_id.remove(&id))
    }

    /// Put a gradient for `leaf` (used by gradient transforms such as clipping).
    pub fn insert(&mut self, leaf: &Tensor, grad: Tensor) {
        if let Some(id) = leaf.grad_id() {
            self.by_id.insert(id, grad);
        }
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Iterate over the gradients (in no particular order).
    pub fn values(&self) -> impl Iterator<Item = &Tensor> {
        self.by_id.values()
    }

    /// Iterate mutably over the gradients (in no particular order).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        self.by_id.values_mut()
    }
}

/// Add `g` into the gradient accumulated so far for `id`.
fn accumulate(grads: &mut HashMap<u64, Tensor>, id: u64, g: Tensor) {
    match grads.remove(&id) {
        None => {
            grads.insert(id, g);
        }
        Some(mut acc) => {
            let add = g.contiguous_data();
            acc.update_data(|a| tlc_kernels::elementwise::axpy(1.0, &add, a));
            grads.insert(id, acc);
        }
    }
}

/// Tensors reachable from `root` through autograd nodes, inputs before the ops that use them.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative post-order DFS: deep networks would overflow a recursive one.
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        let meta = t
            .grad_meta()
            .expect("only tensors requiring grad are pushed");
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(meta.id) {
            continue;
        }
        let inputs: Vec<Tensor> = meta
            .node
            .as_ref()
            .map(|n| {
                n.inputs
                    .iter()
                    .filter(|i| i.requires_grad())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        stack.push((t, true));
        for i in inputs {
            if !seen.contains(&i.grad_id().expect("filtered on requires_grad")) {
                stack.push((i, false));
            }
        }
    }
    order
}

impl Tensor {
    /// Gradients of this scalar with respect to every leaf that requires grad.
    pub fn backward(&self) -> Result<Gradients> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!(
                    "backward() needs a scalar, got shape {:?}; use backward_with",
                    self.shape()
                ),
            ));
        }
        self.backward_with(Tensor::full(self.shape(), 1.0))
    }

    /// Gradients with respect to every leaf, given d(loss)/d(self) = `grad`.
    pub fn backward_with(&self, grad: Tensor) -> Result<Gradients> {
        if grad.shape() != self.shape() {
            return Err(Error::shape(
                "backward",
                format!(
                    "gradient of shape {:?} for a tensor of shape {:?}",
                    grad.shape(),
                    self.shape()
                ),
            ));
        }
        let Some(root) = self.grad_meta() else {
            return Err(Error::invalid(
                "backward",
                "the tensor does not require grad",
            ));
        };
        let order = no_grad(|| topological_order(self));
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(root.id, grad);
        let mut leaves = HashMap::new();
        no_grad(|| -> Result<()> {
            for t in order.iter().rev() {
                let meta = t.grad_meta().expect("ordered tensors require grad");
                let Some(g) = grads.remove(&meta.id) else {
                    continue;
                };
                let Some(node) = &meta.node else {
                    leaves.insert(meta.id, g);
                    continue;
                };
                let t0 = profile::start();
                let input_grads = node.op.backward(&g, &node.inputs)?;
                profile::stop(t0, "backward", node.op.name());
                if input_grads.len() != node.inputs.len() {
                    return Err(Error::invalid(
                        node.op.name(),
                        "backward returned the wrong number of gradients",
                    ));
                }
                for (input, ig) in node.inputs.iter().zip(input_grads) {
                    let (Some(ig), Some(id)) = (ig, input.grad_id()) else {
                        continue;
                    };
                    if ig.shape() != input.shape() {
                        return Err(Error::shape(
                            node.op.name(),
                            format!("backward produced a gradient of shape {:?} for an input of shape {:?}", ig.shape(), input.shape()),
                        ));
                    }
                    let t0 = profile::start();
                    accumulate(&mut grads, id, ig);
                    profile::stop(t0, "backward", "accumulate");
                }
            }
            Ok(())
        })?;
        Ok(Gradients { by_id: leaves })
    }
}
