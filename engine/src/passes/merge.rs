//! Merging linear chains (TLC.md, "Collapsing"): two convolutions with nothing between them become
//! one, two linear layers become one, two convolutions of the same input summed by an add become
//! one, and `x + conv(x)` becomes one convolution. Every merge here is exact; whether it is also
//! faster is the caller's decision (see [`MergePolicy`]).

use super::rewrite::{rebuild, without};
use crate::error::{Error, Result};
use crate::graph::{ConvSpec, Graph, LinearSpec, Model, NodeId, Op};
use crate::io::TensorStore;
use crate::tensor::Tensor;

/// A conv weight `[out, in/groups, kh, kw]` as a dense `[out, in, kh, kw]` one.
fn dense_weight(c: &ConvSpec, w: &[f32]) -> Vec<f32> {
    if c.groups == 1 {
        return w.to_vec();
    }
    let (ipg, opg, k) = (
        c.in_ch / c.groups,
        c.out_ch / c.groups,
        c.kernel[0] * c.kernel[1],
    );
    let mut d = vec![0.0; c.out_ch * c.in_ch * k];
    for o in 0..c.out_ch {
        let g = o / opg;
        for i in 0..ipg {
            let src = &w[(o * ipg + i) * k..][..k];
            d[(o * c.in_ch + g * ipg + i) * k..][..k].copy_from_slice(src);
        }
    }
    d
}

fn is_depthwise(c: &ConvSpec) -> bool {
    c.groups == c.in_ch && c.in_ch == c.out_ch
}

/// The convolution `conv2 ∘ conv1` is (TLC.md): kernel `k1 + s1 (k2 - 1)`, stride `s1 s2`,
/// padding `p1`, with a bias. Exact only when `conv2` has no padding (TLC's padding relocation
/// ensures it) and both have unit dilation; `None` otherwise. Depthwise ∘ depthwise stays
/// depthwise; any other pair becomes dense.
pub fn compose_specs(c1: &ConvSpec, c2: &ConvSpec) -> Option<ConvSpec> {
    if c1.dilation != [1, 1]
        || c2.dilation != [1, 1]
        || c2.padding != [0, 0]
        || c1.out_ch != c2.in_ch
    {
        return None;
    }
    let (s, k1, k2) = (c1.stride, c1.kernel, c2.kernel);
    let dw = is_depthwise(c1) && is_depthwise(c2);
    Some(ConvSpec {
        in_ch: c1.in_ch,
        out_ch: c2.out_ch,
        kernel: [k1[0] + s[0] * (k2[0] - 1), k1[1] + s[1] * (k2[1] - 1)],
        stride: [s[0] * c2.stride[0], s[1] * c2.stride[1]],
        padding: c1.padding,
        dilation: [1, 1],
        groups: if dw { c1.in_ch } else { 1 },
        bias: true,
    })
}

/// `conv2 ∘ conv1` as one convolution: its spec ([`compose_specs`]), weight and bias.
pub fn compose_convs(
    c1: &ConvSpec,
    w1: &[f32],
    b1: Option<&[f32]>,
    c2: &ConvSpec,
    w2: &[f32],
    b2: Option<&[f32]>,
) -> Option<(ConvSpec, Vec<f32>, Vec<f32>)> {
    let spec = compose_specs(c1, c2)?;
    let (s, k1, k2, k) = (c1.stride, c1.kernel, c2.kernel, spec.kernel);
    let dw = is_depthwise(c1) && is_depthwise(c2);
    let (kk1, kk2, kk) = (k1[0] * k1[1], k2[0] * k2[1], k[0] * k[1]);
    let mid = c1.out_ch;
    // Weight of input channel c into output o: K[o,c,s*u+a] += W2[o,m,u] W1[m,c,a].
    let accumulate = |w2: &[f32], w1: &[f32], out: &mut [f64]| {
        for u in 0..k2[0] {
            for v in 0..k2[1] {
                let x2 = w2[u * k2[1] + v] as f64;
                for a in 0..k1[0] {
                    for b in 0..k1[1] {
                        out[(s[0] * u + a) * k[1] + s[1] * v + b] += x2 * w1[a * k1[1] + b] as f64;
                    }
                }
            }
        }
    };
    let mut wk = vec![
        0f64;
        if dw {
            c2.out_ch * kk
        } else {
            c2.out_ch * c1.in_ch * kk
        }
    ];
    if dw {
        for ch in 0..mid {
            accumulate(
                &w2[ch * kk2..][..kk2],
                &w1[ch * kk1..][..kk1],
                &mut wk[ch * kk..][..kk],
            );
        }
    } else {
        let (d1, d2) = (dense_weight(c1, w1), dense_weight(c2, w2));
        for o in 0..c2.out_ch {
            for m in 0..mid {
                let x2 = &d2[(o * mid + m) * kk2..][..kk2];
                if x2.iter().all(|v| *v == 0.0) {
                    continue;
                }
                for c in 0..c1.in_ch {
                    accumulate(
                        x2,
                        &d1[(m * c1.in_ch + c) * kk1..][..kk1],
                        &mut wk[(o * c1.in_ch + c) * kk..][..kk],
                    );
                }
            }
        }
    }
    // Bias: b2[o] + sum over m and the kernel of W2[o,m,.] b1[m].
    let d2 = if dw { None } else { Some(dense_weight(c2, w2)) };
    let bias = (0..c2.out_ch)
        .map(|o| {
            let mut acc = b2.map_or(0.0, |b| b[o] as f64);
            if let Some(b1) = b1 {
                match &d2 {
                    Some(d2) => {
                        for m in 0..mid {
                            acc += d2[(o * mid + m) * kk2..][..kk2]
                                .iter()
                                .map(|&x| x as f64)
                                .sum::<f64>()
                                * b1[m] as f64;
                        }
                    }
                    None => {
                        acc += w2[o * kk2..][..kk2].iter().map(|&x| x as f64).sum::<f64>()
                            * b1[o] as f64
                    }
                }
            }
            acc as f32
        })
        .collect();
    Some((spec, wk.into_iter().map(|v| v as f32).collect(), bias))
}

fn weight(store: &TensorStore, node: &str) -> Result<Vec<f32>> {
    Ok(store.get(&format!("{node}.weight"))?.to_vec())
}

fn bias(store: &TensorStore, node: &str) -> Option<Vec<f32>> {
    store.try_get(&format!("{node}.bias")).map(|t| t.to_vec())
}

/// A layer a merge produces: its node name, op, weight (in the op's layout) and bias.
struct NewLayer {
    name: String,
    op: Op,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// Replace node `into` by `layer`, dropping the nodes in `gone` (whose readers then read their
/// first input), and rebuild the model.
fn replace(
    g: &Graph,
    store: &mut TensorStore,
    into: NodeId,
    layer: NewLayer,
    gone: &[NodeId],
) -> Result<Model> {
    let shape = match &layer.op {
        Op::Conv2d(c) => c.weight_shape(),
        Op::Linear(l) => vec![l.out_f, l.in_f],
        _ => unreachable!("merges produce convolutions and linear layers"),
    };
    let n_out = layer.bias.len();
    store.insert(
        format!("{}.weight", layer.name),
        Tensor::from_vec(layer.weight, &shape)?,
    );
    store.insert(
        format!("{}.bias", layer.name),
        Tensor::from_vec(layer.bias, &[n_out])?,
    );
    let mut g = g.clone();
    let node = g.node_mut(into);
    node.name = layer.name;
    node.op = layer.op;
    let mut drop = vec![false; g.nodes().len()];
    gone.iter().for_each(|&i| drop[i] = true);
    rebuild(without(&g, &drop), store)
}

/// Apply the rewrite `f` proposes for the first node it accepts, again and again, until it
/// accepts none. `f` returns the rewritten model or `None`.
fn rewrite_all(
    model: &Model,
    f: impl Fn(&Model, &[Vec<NodeId>], NodeId) -> Result<Option<Model>>,
) -> Result<Model> {
    let mut m = model.clone();
    'outer: loop {
        let consumers = m.graph().consumers();
        for id in 0..m.graph().nodes().len() {
            if let Some(next) = f(&m, &consumers, id)? {
                m = next;
                continue 'outer;
            }
        }
        return Ok(m);
    }
}

/// The last dotted segment of a node name (`layer1.0.conv2` -> `conv2`), for merged names.
fn leaf(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// Which exact conv merges to perform: `policy(first, second, merged)`.
pub type MergePolicy<'a> = &'a dyn Fn(&ConvSpec, &ConvSpec, &ConvSpec) -> bool;

/// Merge every `conv -> conv` pair where the first is read only by the second, the merge is exact
/// ([`compose_specs`]) and `policy` agrees. The merged node is named `<first>+<second's leaf>`.
pub fn merge_conv_chains_with(model: &Model, policy: MergePolicy<'_>) -> Result<Model> {
    rewrite_all(model, |m, consumers, id| {
        let g = m.graph();
        let n = g.node(id);
        let Op::Conv2d(c2) = &n.op else {
            return Ok(None);
        };
        let a = n.inputs[0];
        let Op::Conv2d(c1) = &g.node(a).op else {
            return Ok(None);
        };
        if consumers[a].len() != 1 || a == g.output() {
            return Ok(None);
        }
        match compose_specs(c1, c2) {
            Some(spec) if policy(c1, c2, &spec) => {
                let names = [g.node(a).name.clone(), n.name.clone()];
                merge_layers(m, &names).map(Some)
            }
            _ => Ok(None),
        }
    })
}

/// [`merge_conv_chains_with`] merging every exact pair.
pub fn merge_conv_chains(model: &Model) -> Result<Model> {
    merge_conv_chains_with(model, &|_, _, _| true)
}

/// `linear2 ∘ linear1` as one linear layer: `W = W2 W1`, `b = W2 b1 + b2`.
fn compose_linears(
    l1: &LinearSpec,
    w1: &[f32],
    b1: Option<&[f32]>,
    l2: &LinearSpec,
    w2: &[f32],
    b2: Option<&[f32]>,
) -> (LinearSpec, Vec<f32>, Vec<f32>) {
    let (h, i) = (l1.out_f, l1.in_f);
    let bias_or_zero = |b: Option<&[f32]>, m: usize| b.map_or(0.0, |b| b[m] as f64);
    let mut w = vec![0f32; l2.out_f * i];
    let mut b = vec![0f32; l2.out_f];
    for o in 0..l2.out_f {
        let row2 = &w2[o * h..][..h];
        for c in 0..i {
            w[o * i + c] = (0..h)
                .map(|m| row2[m] as f64 * w1[m * i + c] as f64)
                .sum::<f64>() as f32;
        }
        b[o] = ((0..h)
            .map(|m| row2[m] as f64 * bias_or_zero(b1, m))
            .sum::<f64>()
            + bias_or_zero(b2, o)) as f32;
    }
    let spec = LinearSpec {
        in_f: i,
        out_f: l2.out_f,
        bias: true,
    };
    (spec, w, b)
}

/// Merge every `linear -> linear` pair where the first is read only by the second.
pub fn merge_linear_chains(model: &Model) -> Result<Model> {
    rewrite_all(model, |m, consumers, id| {
        let g = m.graph();
        let n = g.node(id);
        let a = n.inputs.first().copied().unwrap_or(0);
        let (Op::Linear(_), Op::Linear(_)) = (&n.op, &g.node(a).op) else {
            return Ok(None);
        };
        if consumers[a].len() != 1 || a == g.output() {
            return Ok(None);
        }
        let names = [g.node(a).name.clone(), n.name.clone()];
        merge_layers(m, &names).map(Some)
    })
}

/// The name [`merge_layers`] gives the merge of `names`: `<first>+<leaf of each other>`.
pub fn merged_name(names: &[String]) -> String {
    let mut name = names.first().cloned().unwrap_or_default();
    for next in names.iter().skip(1) {
        name = format!("{name}+{}", leaf(next));
    }
    name
}

/// Merge the chain of layers called `names` (each read only by the next; all convolutions or all
/// linear layers) into one layer named `<first>+<leaf of each other>`, in place of the last.
/// Fails if a name is missing, the layers do not form such a chain, or a pair does not compose
/// exactly.
pub fn merge_layers(model: &Model, names: &[String]) -> Result<Model> {
    let g = model.graph();
    let bad = |detail: String| Error::invalid("merge", detail);
    let ids = names
        .iter()
        .map(|n| g.find(n).ok_or_else(|| bad(format!("no layer `{n}`"))))
        .collect::<Result<Vec<NodeId>>>()?;
    let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
        return Err(bad("no layer to merge".into()));
    };
    let consumers = g.consumers();
    for w in ids.windows(2) {
        if g.node(w[1]).inputs.first() != Some(&w[0])
            || consumers[w[0]].len() != 1
            || w[0] == g.output()
        {
            return Err(bad(format!(
                "`{}` is not read by `{}` alone",
                g.node(w[0]).name,
                g.node(w[1]).name
            )));
        }
    }
    if ids.len() == 1 {
        return Ok(model.clone());
    }
    let mut store = model.to_store();
    let mut op = g.node(first).op.clone();
    let mut w = weight(&store, &names[0])?;
    let mut b = bias(&store, &names[0]);
    for (k, (&id, next)) in ids.iter().zip(names).enumerate().skip(1) {
        let prev = &names[k - 1];
        let (w2, b2) = (weight(&store, next)?, bias(&store, next));
        let (new_op, nw, nb) = match (&op, &g.node(id).op) {
            (Op::Conv2d(c1), Op::Conv2d(c2)) => {
                let (spec, nw, nb) = compose_convs(c1, &w, b.as_deref(), c2, &w2, b2.as_deref())
                    .ok_or_else(|| bad(format!("`{prev}` and `{next}` do not merge exactly")))?;
                (Op::Conv2d(spec), nw, nb)
            }
            (Op::Linear(l1), Op::Linear(l2)) => {
                let (spec, nw, nb) = compose_linears(l1, &w, b.as_deref(), l2, &w2, b2.as_deref());
                (Op::Linear(spec), nw, nb)
            }
            _ => {
                return Err(bad(format!(
                    "`{prev}` and `{next}` are not two convolutions or two linear layers"
                )))
            }
        };
        (op, w, b) = (new_op, nw, Some(nb));
    }
    let (name, bias) = (merged_name(names), b.expect("a merge always yields a bias"));
    replace(
        g,
        &mut store,
        last,
        NewLayer {
            name,
            op,
            weight: w,
            bias,
        },
        &ids[..ids.len() - 1],
    )
}

/// Offset at which a kernel of size `kb` with padding `pb` sits inside one of size `ka` with
/// padding `pa` so both read the same input pixels, if it fits.
fn embed_offset(ka: usize, pa: usize, kb: usize, pb: usize) -> Option<usize> {
    let off = pa.checked_sub(pb)?;
    (off + kb <= ka).then_some(off)
}

/// The convolution computing `conv_a(x) + conv_b(x)` (`a` the one with the larger kernel) and
/// where `b`'s kernel sits inside it, when both read the same pixels with the same stride.
pub fn sum_branch_specs(ca: &ConvSpec, cb: &ConvSpec) -> Option<(ConvSpec, [usize; 2])> {
    if ca.stride != cb.stride
        || ca.dilation != [1, 1]
        || cb.dilation != [1, 1]
        || ca.in_ch != cb.in_ch
        || ca.out_ch != cb.out_ch
    {
        return None;
    }
    let oy = embed_offset(ca.kernel[0], ca.padding[0], cb.kernel[0], cb.padding[0])?;
    let ox = embed_offset(ca.kernel[1], ca.padding[1], cb.kernel[1], cb.padding[1])?;
    let spec = ConvSpec {
        groups: 1,
        bias: true,
        ..ca.clone()
    };
    Some((spec, [oy, ox]))
}

/// A parallel-branch sum on offer: the two convolutions (the one with the larger kernel first),
/// their node names, the spatial size of the input they share, and the convolution replacing
/// both.
pub struct BranchSum<'a> {
    pub names: [&'a str; 2],
    pub branches: [&'a ConvSpec; 2],
    pub merged: &'a ConvSpec,
    pub in_hw: [usize; 2],
}

/// Which parallel-branch sums to perform.
pub type BranchPolicy<'a> = &'a dyn Fn(&BranchSum<'_>) -> bool;

/// Sum `add(conv_a(x), conv_b(x))` — two convolutions of the same input with the same stride,
/// each read only by the add — into one dense convolution with the larger kernel (a main branch
/// and its downsample shortcut, once both are linear), where `policy` agrees.
pub fn merge_parallel_branches_with(model: &Model, policy: BranchPolicy<'_>) -> Result<Model> {
    rewrite_all(model, |m, consumers, id| {
        let g = m.graph();
        let n = g.node(id);
        if !matches!(n.op, Op::Add) || n.inputs.len() != 2 {
            return Ok(None);
        }
        let (mut a, mut b) = (n.inputs[0], n.inputs[1]);
        let (Op::Conv2d(ca), Op::Conv2d(cb)) = (&g.node(a).op, &g.node(b).op) else {
            return Ok(None);
        };
        let (mut ca, mut cb) = (ca, cb);
        if cb.kernel[0] * cb.kernel[1] > ca.kernel[0] * ca.kernel[1] {
            std::mem::swap(&mut a, &mut b);
            std::mem::swap(&mut ca, &mut cb);
        }
        let x = g.node(a).inputs[0];
        let private = consumers[a].len() == 1 && consumers[b].len() == 1 && a != b;
        if x != g.node(b).inputs[0] || !private {
            return Ok(None);
        }
        let Some((spec, [oy, ox])) = sum_branch_specs(ca, cb) else {
            return Ok(None);
        };
        let (an, bn) = (g.node(a).name.clone(), g.node(b).name.clone());
        let xs = &g.infer_shapes()?[x];
        let offer = BranchSum {
            names: [&an, &bn],
            branches: [ca, cb],
            merged: &spec,
            in_hw: [xs[1], xs[2]],
        };
        if !policy(&offer) {
            return Ok(None);
        }
        let mut store = m.to_store();
        let mut w = dense_weight(ca, &weight(&store, &an)?);
        let wb = dense_weight(cb, &weight(&store, &bn)?);
        let (ka, kb) = (ca.kernel, cb.kernel);
        for oc in 0..ca.out_ch * ca.in_ch {
            for u in 0..kb[0] {
                for v in 0..kb[1] {
                    w[oc * ka[0] * ka[1] + (oy + u) * ka[1] + ox + v] +=
                        wb[oc * kb[0] * kb[1] + u * kb[1] + v];
                }
            }
        }
        let zeros = vec![0.0; ca.out_ch];
        let (ba, bb) = (
            bias(&store, &an).unwrap_or_else(|| zeros.clone()),
            bias(&store, &bn).unwrap_or(zeros),
        );
        let summed = ba.iter().zip(&bb).map(|(x, y)| x + y).collect();
        // The add becomes the merged conv (reading the shared input); both branches go.
        let mut g2 = g.clone();
        g2.node_mut(id).inputs = vec![x];
        let name = format!("{an}+{}", leaf(&bn));
        replace(
            &g2,
            &mut store,
            id,
            NewLayer {
                name,
                op: Op::Conv2d(spec),
                weight: w,
                bias: summed,
            },
            &[a, b],
        )
        .map(Some)
    })
}

/// [`merge_parallel_branches_with`] summing every pair it can.
pub fn merge_parallel_branches(model: &Model) -> Result<Model> {
    merge_parallel_branches_with(model, &|_| true)
}

/// Fold `add(conv(x), x)` into the convolution when it maps `x` to the same shape with a centred
/// odd kernel (stride 1, padding `(k-1)/2`): the identity is 1 at the kernel's centre.
pub fn fold_residuals(model: &Model) -> Result<Model> {
    rewrite_all(model, |m, consumers, id| {
        let g = m.graph();
        let n = g.node(id);
        if !matches!(n.op, Op::Add) || n.inputs.len() != 2 {
            return Ok(None);
        }
        let (i0, i1) = (n.inputs[0], n.inputs[1]);
        let (conv, x) = match (&g.node(i0).op, &g.node(i1).op) {
            (Op::Conv2d(_), _) if g.node(i0).inputs[0] == i1 => (i0, i1),
            (_, Op::Conv2d(_)) if g.node(i1).inputs[0] == i0 => (i1, i0),
            _ => return Ok(None),
        };
        let Op::Conv2d(c) = &g.node(conv).op else {
            unreachable!("matched above")
        };
        let centred = (0..2).all(|a| c.kernel[a] % 2 == 1 && c.padding[a] == c.kernel[a] / 2);
        if consumers[conv].len() != 1
            || c.stride != [1, 1]
            || c.dilation != [1, 1]
            || c.in_ch != c.out_ch
            || !centred
        {
            return Ok(None);
        }
        let mut store = m.to_store();
        let name = g.node(conv).name.clone();
        let mut w = weight(&store, &name)?;
        let (k, centre) = (
            c.kernel[0] * c.kernel[1],
            (c.kernel[0] / 2) * c.kernel[1] + c.kernel[1] / 2,
        );
        let per_out = c.in_ch / c.groups;
        for ch in 0..c.out_ch {
            // Input channel `ch` is at index ch - group start within output ch's slice.
            let local = ch % per_out;
            w[(ch * per_out + local) * k + centre] += 1.0;
        }
        let b = bias(&store, &name).unwrap_or_else(|| vec![0.0; c.out_ch]);
        let spec = ConvSpec {
            bias: true,
            ..c.clone()
        };
        let mut g2 = g.clone();
        g2.node_mut(id).inputs = vec![x];
        replace(
            &g2,
            &mut store,
            id,
            NewLayer {
                name: format!("{name}+residual"),
                op: Op::Conv2d(spec),
                weight: w,
                bias: b,
            },
            &[conv],
        )
        .map(Some)
    })
}
