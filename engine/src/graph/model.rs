//! A graph with its parameters and buffers, run in training mode (autograd, batch statistics) or
//! evaluation mode (running statistics, no autograd).

use super::op::{BatchNormSpec, ConvSpec, LinearSpec, Op};
use super::{Graph, Node};
use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::io::TensorStore;
use crate::ops::pool::{AvgPool2dParams, MaxPool2dParams};
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::collections::HashMap;
use tlc_kernels::Activation;

/// Training (batch statistics, dropout, autograd) or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// How linear layers are initialised (architectures differ; torchvision's choices are kept).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinearInit {
    /// PyTorch's default: weight and bias uniform in +-1/sqrt(fan_in) (ResNet's fc).
    Uniform,
    /// Weight normal(0, std), bias 0 (VGG, MobileNetV2 classifiers).
    Normal(f32),
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Param(usize),
    Buffer(usize),
}

/// A network ready to train or run: its graph, its trainable parameters and its buffers, all
/// named as in PyTorch's `state_dict`.
#[derive(Clone)]
pub struct Model {
    graph: Graph,
    params: Vec<Tensor>,
    param_names: Vec<String>,
    buffers: Vec<Tensor>,
    buffer_names: Vec<String>,
    index: HashMap<String, Slot>,
}

fn full_name(node: &str, role: &str) -> String {
    format!("{node}.{role}")
}

/// Expected shape of parameter/buffer `role` of `op`.
fn role_shape(op: &Op, role: &str) -> Vec<usize> {
    match (op, role) {
        (Op::Conv2d(c), "weight") => c.weight_shape(),
        (Op::Conv2d(c), "bias") => vec![c.out_ch],
        (Op::Linear(l), "weight") => vec![l.out_f, l.in_f],
        (Op::Linear(l), "bias") => vec![l.out_f],
        (Op::BatchNorm(_), "num_batches_tracked") => vec![],
        (Op::BatchNorm(b), _) => vec![b.channels],
        _ => unreachable!("roles come from Op::param_roles / buffer_roles"),
    }
}

fn init_conv(c: &ConvSpec, role: &str, rng: &mut Rng) -> Tensor {
    if role == "bias" {
        return Tensor::zeros(&[c.out_ch]);
    }
    // Kaiming normal, fan-out, ReLU gain (torchvision's ResNet/VGG/MobileNetV2 choice). PyTorch's
    // fan-out is weight.size(0) * kh * kw, not divided by the groups: a depthwise 3x3 conv over
    // C channels has fan-out 9 C.
    let fan_out = (c.out_ch * c.kernel[0] * c.kernel[1]).max(1);
    let std = (2.0 / fan_out as f32).sqrt();
    Tensor::randn(&c.weight_shape(), rng)
        .scale(std)
        .expect("scale of a fresh tensor")
}

fn init_linear(l: &LinearSpec, role: &str, how: LinearInit, rng: &mut Rng) -> Tensor {
    let shape = if role == "weight" {
        vec![l.out_f, l.in_f]
    } else {
        vec![l.out_f]
    };
    match how {
        LinearInit::Uniform => {
            let bound = 1.0 / (l.in_f.max(1) as f32).sqrt();
            Tensor::rand_uniform(&shape, -bound, bound, rng)
        }
        LinearInit::Normal(std) if role == "weight" => Tensor::randn(&shape, rng)
            .scale(std)
            .expect("scale of a fresh tensor"),
        LinearInit::Normal(_) => Tensor::zeros(&shape),
    }
}

impl Model {
    fn empty(graph: Graph) -> Result<Model> {
        graph.validate()?;
        Ok(Model {
            graph,
            params: vec![],
            param_names: vec![],
            buffers: vec![],
            buffer_names: vec![],
            index: HashMap::new(),
        })
    }

    fn add(&mut self, name: String, t: Tensor, param: bool) {
        if param {
            self.index
                .insert(name.clone(), Slot::Param(self.params.len()));
            self.params.push(t.with_requires_grad(true));
            self.param_names.push(name);
        } else {
            self.index
                .insert(name.clone(), Slot::Buffer(self.buffers.len()));
            self.buffers.push(t);
            self.buffer_names.push(name);
        }
    }

    /// A freshly initialised model (deterministic for a given `rng` state).
    pub fn init(graph: Graph, linear_init: LinearInit, rng: &mut Rng) -> Result<Model> {
        let mut m = Model::empty(graph)?;
        let nodes = m.graph.nodes().to_vec();
        for n in &nodes {
            for &role in n.op.param_roles() {
                let t = match &n.op {
                    Op::Conv2d(c) => init_conv(c, role, rng),
                    Op::Linear(l) => init_linear(l, role, linear_init, rng),
                    Op::BatchNorm(b) => {
                        Tensor::full(&[b.channels], if role == "weight" { 1.0 } else { 0.0 })
                    }
                    _ => unreachable!("only these ops own parameters"),
                };
                m.add(full_name(&n.name, role), t, true);
            }
            for &role in n.op.buffer_roles() {
                let t = match role {
                    "running_var" => Tensor::ones(&role_shape(&n.op, role)),
                    _ => Tensor::zeros(&role_shape(&n.op, role)),
                };
                m.add(full_name(&n.name, role), t, false);
            }
        }
        Ok(m)
    }

    /// A model whose parameters and buffers come from `store` (a checkpoint or a torchvision
    /// export), checked against the graph: a missing tensor or a wrong shape is an error naming the
    /// first such tensor; so is a tensor the graph has no place for, unless its name starts with
    /// one of `ignore_prefixes` (optimizer state kept in the same file, say). A missing
    /// `num_batches_tracked` counts as 0.
    pub fn from_store(
        graph: Graph,
        store: &TensorStore,
        ignore_prefixes: &[&str],
    ) -> Result<Model> {
        let mut m = Model::empty(graph)?;
        let nodes = m.graph.nodes().to_vec();
        for n in &nodes {
            let roles =
                n.op.param_roles()
                    .iter()
                    .map(|r| (*r, true))
                    .chain(n.op.buffer_roles().iter().map(|r| (*r, false)));
            for (role, param) in roles {
                let name = full_name(&n.name, role);
                let shape = role_shape(&n.op, role);
                let t = if role == "num_batches_tracked" && !store.contains(&name) {
                    Tensor::zeros(&[])
                } else {
                    store.get_shaped(&name, &shape)?.to_f32()
                };
                m.add(name, t, param);
            }
        }
        if let Some(extra) = store.names().find(|k| {
            !m.index.contains_key(*k) && !ignore_prefixes.iter().any(|p| k.starts_with(p))
        }) {
            return Err(Error::invalid(
                "load",
                format!(
                    "{} holds tensor `{extra}`, which this architecture does not have",
                    store.source()
                ),
            ));
        }
        Ok(m)
    }

    /// Parameters and buffers by name, ready to save.
    pub fn to_store(&self) -> TensorStore {
        let mut s = TensorStore::new();
        for (name, t) in self
            .param_names
            .iter()
            .zip(&self.params)
            .chain(self.buffer_names.iter().zip(&self.buffers))
        {
            s.insert(name.clone(), t.detach());
        }
        s
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Replace the graph (after a pass rewrote it); parameters must still fit.
    pub fn set_graph(&mut self, graph: Graph) -> Result<()> {
        let store = self.to_store();
        *self = Model::from_store(graph, &store, &[])?;
        Ok(())
    }

    /// Trainable parameters (leaves requiring grad), in graph order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Mutable trainable parameters, for optimizer steps.
    pub fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }

    /// Names of [`Model::params`], index for index.
    pub fn param_names(&self) -> &[String] {
        &self.param_names
    }

    /// Buffers (running statistics).
    pub fn buffers(&self) -> &[Tensor] {
        &self.buffers
    }

    /// A parameter or buffer by its full name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|s| match *s {
            Slot::Param(i) => &self.params[i],
            Slot::Buffer(i) => &self.buffers[i],
        })
    }

    /// Mutable access to a parameter or buffer by name (passes and TLC masking use it).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        match *self.index.get(name)? {
            Slot::Param(i) => Some(&mut self.params[i]),
            Slot::Buffer(i) => Some(&mut self.buffers[i]),
        }
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.numel()).sum()
    }

    fn param(&self, node: &str, role: &str) -> Result<&Tensor> {
        self.get(&full_name(node, role))
            .ok_or_else(|| Error::MissingTensor {
                name: full_name(node, role),
                source_name: "the model".into(),
            })
    }

    fn buffer_index(&self, node: &str, role: &str) -> usize {
        match self.index.get(&full_name(node, role)) {
            Some(Slot::Buffer(i)) => *i,
            _ => unreachable!("constructors create every buffer of every node"),
        }
    }

    /// Run the network on a batch `x` (`[N, ...input shape]`). In [`Mode::Train`], batch-norm
    /// uses and updates batch statistics, dropout draws from `rng`, and the result carries autograd
    /// history back to [`Model::params`]; in [`Mode::Eval`] nothing is recorded.
    pub fn forward(&mut self, x: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        let expected = self.graph.input_shape();
        if x.rank() != expected.len() + 1 || x.shape()[1..] != *expected {
            return Err(Error::shape(
                "model",
                format!(
                    "input of shape {:?}, expected [N, {}]",
                    x.shape(),
                    dims(expected)
                ),
            ));
        }
        match mode {
            Mode::Train => self.run(x, true, rng),
            Mode::Eval => no_grad(|| self.run(x, false, rng)),
        }
    }

    /// Evaluation-mode forward that leaves the model untouched.
    pub fn eval(&self, x: &Tensor) -> Result<Tensor> {
        let mut rng = Rng::new(0);
        // Eval mode never writes buffers, so running on a clone of the handles is free of copies.
        self.clone().forward(x, Mode::Eval, &mut rng)
    }

    /// Batch norm node `name` (`spec`) on `x`: with batch statistics (updating the running ones)
    /// when `train`, else the running ones; then, when given, a residual added and an activation,
    /// in the same op.
    fn batch_norm_node(
        &mut self,
        name: &str,
        spec: &BatchNormSpec,
        x: &Tensor,
        train: bool,
        then: Option<(Activation, Option<&Tensor>)>,
    ) -> Result<Tensor> {
        let (w, b) = (
            self.param(name, "weight")?.clone(),
            self.param(name, "bias")?.clone(),
        );
        let (m, e) = (spec.momentum, spec.eps);
        let bn = |running, training| match then {
            None => x.batch_norm(Some(&w), Some(&b), running, training, m, e),
            Some((act, None)) => x.batch_norm_act(Some(&w), Some(&b), running, training, m, e, act),
            Some((act, Some(r))) => {
                x.batch_norm_add_act(r, Some(&w), Some(&b), running, training, m, e, act)
            }
        };
        if train {
            let (im, iv) = (
                self.buffer_index(name, "running_mean"),
                self.buffer_index(name, "running_var"),
            );
            let (rm, rv) = two_mut(&mut self.buffers, im, iv);
            let y = bn(Some((rm, rv)), true)?;
            let it = self.buffer_index(name, "num_batches_tracked");
            self.buffers[it].update_data(|d| d[0] += 1.0);
            Ok(y)
        } else {
            let mut rm = self.param(name, "running_mean")?.clone();
            let mut rv = self.param(name, "running_var")?.clone();
            bn(Some((&mut rm, &mut rv)), false)
        }
    }

    fn run(&mut self, x: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let nodes = self.graph.nodes().to_vec();
        let out_id = self.graph.output();
        let fused = fusions(&nodes, out_id);
        // The values each node reads (fused nodes read their partners' inputs), and each value
        // freed after its last reader.
        let reads: Vec<Vec<usize>> = nodes
            .iter()
            .enumerate()
            .map(|(id, n)| match fused[id] {
                Fused::BnInAdd => vec![],
                Fused::AddBnAct { bn, residual, .. } => vec![nodes[bn].inputs[0], residual],
                _ => n.inputs.clone(),
            })
            .collect();
        let mut last_use = vec![0usize; nodes.len()];
        for (id, r) in reads.iter().enumerate() {
            r.iter().for_each(|&i| last_use[i] = id);
        }
        let mut values: Vec<Option<Tensor>> = vec![None; nodes.len()];
        for (id, n) in nodes.iter().enumerate() {
            if fused[id] == Fused::BnInAdd {
                continue; // computed by the add that reads it
            }
            let input = |k: usize| -> &Tensor {
                values[n.inputs[k]]
                    .as_ref()
                    .expect("inputs are computed first and freed after")
            };
            let t0 = crate::autograd::profile::start();
            let y = match &n.op {
                Op::Input { .. } => x.clone(),
                Op::Conv2d(c) => {
                    let b = if c.bias {
                        Some(self.param(&n.name, "bias")?)
                    } else {
                        None
                    };
                    input(0).conv2d(self.param(&n.name, "weight")?, b, c.params())?
                }
                Op::Linear(l) => {
                    let b = if l.bias {
                        Some(self.param(&n.name, "bias")?)
                    } else {
                        None
                    };
                    input(0).linear(self.param(&n.name, "weight")?, b)?
                }
                Op::BatchNorm(b) => {
                    let then = match fused[id] {
                        Fused::BnAct(act) => Some((act, None)),
                        _ => None,
                    };
                    let xin = input(0).clone();
                    self.batch_norm_node(&n.name, b, &xin, train, then)?
                }
                Op::Activation { .. } if fused[id] == Fused::Done => input(0).clone(),
                Op::Activation { act } => input(0).activation(act.activation())?,
                Op::Add if matches!(fused[id], Fused::AddBnAct { .. }) => {
                    let Fused::AddBnAct { bn, residual, act } = fused[id] else {
                        unreachable!("matched above")
                    };
                    let Op::BatchNorm(spec) = &nodes[bn].op else {
                        unreachable!("fusions() pairs adds with batch norms")
                    };
                    let at = |v: usize| values[v].clone().expect("computed before the add");
                    let (xin, r) = (at(nodes[bn].inputs[0]), at(residual));
                    self.batch_norm_node(&nodes[bn].name, spec, &xin, train, Some((act, Some(&r))))?
                }
                Op::Add => {
                    let mut acc = input(0).add(input(1))?;
                    for k in 2..n.inputs.len() {
                        acc = acc.add(input(k))?;
                    }
                    acc
                }
                Op::MaxPool(p) => input(0).max_pool2d(&MaxPool2dParams {
                    kernel: p.kernel,
                    stride: p.stride,
                    padding: p.padding,
                    dilation: [1, 1],
                    ceil_mode: p.ceil_mode,
                })?,
                Op::AvgPool(p) => input(0).avg_pool2d(
                    &AvgPool2dParams::new(p.kernel[0])
                        .stride(p.stride[0])
                        .padding(p.padding[0])
                        .ceil_mode(p.ceil_mode),
                )?,
                Op::AdaptiveAvgPool { out } if *out == [1, 1] => input(0).global_avg_pool()?,
                Op::AdaptiveAvgPool { out } => input(0).adaptive_avg_pool2d(out[0], out[1])?,
                Op::Flatten { start } => input(0).flatten(*start)?,
                Op::Dropout { p } => input(0).dropout(*p, train, rng)?,
                Op::Identity => input(0).clone(),
            };
            crate::autograd::profile::stop(t0, "forward", n.op.kind_name());
            for &i in &reads[id] {
                if last_use[i] == id && i != out_id {
                    values[i] = None;
                }
            }
            values[id] = Some(y);
        }
        Ok(values[out_id].take().expect("the output is computed"))
    }
}

/// How the executor runs a node together with its neighbours (the training step's element-wise
/// passes over activation-sized tensors cost as much as a fifth of its convolutions).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fused {
    /// On its own.
    No,
    /// A batch norm with the activation that alone reads it ([`Tensor::batch_norm_act`]).
    BnAct(Activation),
    /// A batch norm that the add alone reading it computes.
    BnInAdd,
    /// The add of batch norm `bn` and `residual` whose only reader is an activation: the three as
    /// one op ([`Tensor::batch_norm_add_act`]; a residual block's end).
    AddBnAct {
        bn: usize,
        residual: usize,
        act: Activation,
    },
    /// An activation its input's node has applied.
    Done,
}

/// The fusions of `nodes`: no fused node but a [`Fused::Done`] activation (whose value is its
/// input's) produces the graph's `output`.
fn fusions(nodes: &[Node], output: usize) -> Vec<Fused> {
    let mut readers = vec![Vec::new(); nodes.len()];
    for (id, n) in nodes.iter().enumerate() {
        n.inputs.iter().for_each(|&i| readers[i].push(id));
    }
    let sole_activation = |id: usize| match readers[id].as_slice() {
        &[r] if id != output => match &nodes[r].op {
            Op::Activation { act } => Some((r, act.activation())),
            _ => None,
        },
        _ => None,
    };
    let mut fused = vec![Fused::No; nodes.len()];
    for (id, n) in nodes.iter().enumerate() {
        if !matches!(n.op, Op::Add) || n.inputs.len() != 2 {
            continue;
        }
        let Some((a, act)) = sole_activation(id) else {
            continue;
        };
        for k in 0..2 {
            let (bn, residual) = (n.inputs[k], n.inputs[1 - k]);
            let alone = readers[bn].as_slice() == [id] && bn != output;
            if matches!(nodes[bn].op, Op::BatchNorm(_)) && alone && fused[bn] == Fused::No {
                fused[bn] = Fused::BnInAdd;
                fused[id] = Fused::AddBnAct { bn, residual, act };
                fused[a] = Fused::Done;
                break;
            }
        }
    }
    for (id, n) in nodes.iter().enumerate() {
        if !matches!(n.op, Op::BatchNorm(_)) || fused[id] != Fused::No {
            continue;
        }
        if let Some((a, act)) = sole_activation(id) {
            if fused[a] == Fused::No {
                fused[id] = Fused::BnAct(act);
                fused[a] = Fused::Done;
            }
        }
    }
    fused
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Model({} nodes, {} parameters)",
            self.graph.nodes().len(),
            self.num_params()
        )
    }
}

fn dims(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Two distinct elements of a slice, mutably.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "two_mut needs distinct indices");
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}
