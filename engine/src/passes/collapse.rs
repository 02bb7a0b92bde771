//! Collapsing a model: every exact evaluation-mode simplification ([`collapse`]), or the
//! latency-aware form ([`collapse_with`]) that merges a linear chain only where a [`CostModel`]
//! says the merged layer is cheaper than the chain's layers kept apart with their dead middle
//! channels pruned (TLC.md: two 3x3 convolutions become a 5x5 of 25/18 their MACs).
//!
//! A *chain* is a maximal run of convolutions (or of linear layers), each read only by the next,
//! every neighbouring pair composing exactly ([`compose_specs`]). Any grouping of its layers into
//! consecutive runs is a valid result, each run merged into one layer; the cheapest grouping is
//! found by dynamic programming over the run boundaries. Keeping a boundary costs its live
//! channels, not all of them, when [`prune_dead_channels`](super::prune_dead_channels) can cut the
//! dead ones there: when the layers on both sides are dense (a depthwise reader keeps every
//! channel). So `pw -> dw -> pw` becomes one dense 3x3 only if that beats the three apart, and a
//! 3x3 pair of a ResNet block with most middle channels OFF stays apart. A chain whose full merge
//! lets a parallel shortcut (same input, summed by an add) fold in as well is credited with the
//! shortcut's cost. Linear chains are priced by multiply-accumulates (the table measures
//! convolutions only).

use super::cost::CostModel;
use super::merge::{
    compose_specs, fold_residuals, merge_layers, merge_parallel_branches_with, merged_name,
    sum_branch_specs, BranchSum,
};
use super::{fold_batch_norms, merge_conv_chains, merge_linear_chains, remove_passthrough};
use crate::error::{Error, Result};
use crate::graph::{ConvSpec, Graph, Model, NodeId, Op};
use std::cell::RefCell;

/// Every exact eval-mode simplification, to a fixed point: fold batch-norms, drop identities and
/// dropout, merge conv and linear chains, sum parallel branches, fold residual identities.
pub fn collapse(model: &Model) -> Result<Model> {
    let mut m = remove_passthrough(&fold_batch_norms(model)?)?;
    loop {
        let before = m.graph().nodes().len();
        m = merge_conv_chains(&m)?;
        m = merge_linear_chains(&m)?;
        m = super::merge_parallel_branches(&m)?;
        m = fold_residuals(&m)?;
        if m.graph().nodes().len() == before {
            return Ok(m);
        }
    }
}

/// What happens to dead channels after the collapse; it decides what keeping a chain apart costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadChannels {
    /// [`prune_dead_channels`](super::prune_dead_channels) runs on the result.
    Pruned,
    /// Every channel stays.
    Kept,
}

/// What a decision was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionKind {
    /// A chain of layers, each read only by the next.
    Chain,
    /// Two convolutions of the same input summed by an add.
    Branches,
}

/// One cost decision of [`collapse_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub kind: DecisionKind,
    /// The layers, in chain order (for branches: the one with the larger kernel first).
    pub layers: Vec<String>,
    /// Channels at each boundary of a chain (its input, each middle, its output) as kept apart:
    /// a middle counts its live channels where pruning can cut the dead ones. Empty for branches.
    pub widths: Vec<usize>,
    /// The channels at the same boundaries before pruning.
    pub full_widths: Vec<usize>,
    /// A parallel shortcut the full merge also absorbs (its cost is in `separate`, not `merged`).
    pub absorbs: Option<String>,
    /// Cost of everything merged into one layer.
    pub merged: f64,
    /// Cost of every layer kept apart.
    pub separate: f64,
    /// Cost of the chosen grouping.
    pub chosen: f64,
    /// The chosen grouping: each inner list becomes one layer.
    pub groups: Vec<Vec<String>>,
    /// Unit of the costs: `ms` (measured) or `MMAC` (millions of multiply-accumulates).
    pub unit: &'static str,
}

impl Decision {
    /// Whether everything merges into one layer.
    pub fn merges_all(&self) -> bool {
        self.groups.len() == 1
    }

    /// Whether every layer stays apart.
    pub fn keeps_all(&self) -> bool {
        self.groups.iter().all(|g| g.len() == 1)
    }
}

/// A [`CostModel`] that remembers every convolution it was asked to price.
struct Pricer<'a> {
    model: &'a CostModel,
    asked: RefCell<Vec<(ConvSpec, [usize; 2])>>,
}

impl<'a> Pricer<'a> {
    fn new(model: &'a CostModel) -> Pricer<'a> {
        Pricer {
            model,
            asked: RefCell::new(vec![]),
        }
    }

    fn conv(&self, spec: &ConvSpec, in_hw: [usize; 2]) -> Result<f64> {
        self.asked.borrow_mut().push((spec.clone(), in_hw));
        self.model.conv(spec, in_hw)
    }

    fn unit(&self) -> &'static str {
        self.model.unit()
    }
}

/// A layer of a chain: its op and the shape it reads (per sample).
struct Link {
    id: NodeId,
    op: Op,
    input: Vec<usize>,
}

/// Whether `b` can follow `a` in a chain (see the module documentation).
fn links(g: &Graph, consumers: &[Vec<NodeId>], a: NodeId, b: NodeId) -> bool {
    if g.node(b).inputs.first() != Some(&a) || consumers[a] != [b] || a == g.output() {
        return false;
    }
    match (&g.node(a).op, &g.node(b).op) {
        (Op::Conv2d(c1), Op::Conv2d(c2)) => compose_specs(c1, c2).is_some(),
        (Op::Linear(_), Op::Linear(_)) => true,
        _ => false,
    }
}

/// Every chain of at least two layers, in graph order.
fn chains(g: &Graph) -> Result<Vec<Vec<Link>>> {
    let consumers = g.consumers();
    let shapes = g.infer_shapes()?;
    let mut out = vec![];
    for id in 1..g.nodes().len() {
        let head = g.node(id).inputs.first().copied();
        if head.is_some_and(|h| links(g, &consumers, h, id)) {
            continue; // not the first of its chain
        }
        let mut ids = vec![id];
        let mut cur = id;
        while let [next] = consumers[cur][..] {
            if !links(g, &consumers, cur, next) {
                break;
            }
            ids.push(next);
            cur = next;
        }
        if ids.len() > 1 {
            out.push(
                ids.into_iter()
                    .map(|i| Link {
                        id: i,
                        op: g.node(i).op.clone(),
                        input: shapes[g.node(i).inputs[0]].clone(),
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Output channels of layer `name` whose weight row or bias is non-zero (at least 1, as pruning
/// keeps one).
fn live_rows(m: &Model, name: &str, rows: usize) -> usize {
    let Some(w) = m.get(&format!("{name}.weight")).map(|t| t.to_vec()) else {
        return rows;
    };
    let b = m.get(&format!("{name}.bias")).map(|t| t.to_vec());
    let per_row = w.len() / rows.max(1);
    (0..rows)
        .filter(|&o| {
            w[o * per_row..][..per_row].iter().any(|v| *v != 0.0)
                || b.as_ref().is_some_and(|b| b[o] != 0.0)
        })
        .count()
        .max(1)
}

/// The chain's layers in a form the grouping search can price.
struct Pricing<'a> {
    chain: &'a [Link],
    cost: &'a Pricer<'a>,
    /// Channels at boundary `b` (before layer `b`), all of them / the live ones.
    full: Vec<usize>,
    live: Vec<usize>,
}

impl Pricing<'_> {
    fn len(&self) -> usize {
        self.chain.len()
    }

    /// The merged spec of convolutions `i..j` (`None` for linear layers).
    fn spec(&self, i: usize, j: usize) -> Option<ConvSpec> {
        let conv = |k: usize| match &self.chain[k].op {
            Op::Conv2d(c) => Some(c.clone()),
            _ => None,
        };
        (i + 1..j).try_fold(conv(i)?, |acc, k| compose_specs(&acc, &conv(k)?))
    }

    /// Whether layers `i..j` merged are dense (so pruning can cut channels on either side).
    fn dense(&self, i: usize, j: usize) -> bool {
        self.spec(i, j).is_none_or(|s| s.groups == 1)
    }

    /// Channels at boundary `b` between a run of density `left` and one of density `right`.
    fn width(&self, b: usize, left: bool, right: bool) -> usize {
        if b > 0 && b < self.len() && left && right {
            self.live[b]
        } else {
            self.full[b]
        }
    }

    /// Cost of layers `i..j` merged, reading `w_in` channels and writing `w_out`.
    fn run(&self, i: usize, j: usize, w_in: usize, w_out: usize) -> Result<f64> {
        let input = &self.chain[i].input;
        match self.spec(i, j) {
            Some(spec) => {
                let spec = ConvSpec {
                    in_ch: w_in,
                    out_ch: w_out,
                    ..spec
                };
                self.cost.conv(&spec, [input[1], input[2]])
            }
            None => {
                let rows: usize = input[..input.len() - 1].iter().product();
                Ok((rows * w_in * w_out) as f64 / 1e6)
            }
        }
    }

    /// Cost of the grouping that cuts the chain at `cuts` (sorted, strictly inside).
    fn grouping(&self, cuts: &[usize]) -> Result<f64> {
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(cuts.iter().copied())
            .chain(std::iter::once(self.len()))
            .collect();
        let mut total = 0.0;
        for (k, r) in bounds.windows(2).enumerate() {
            let d = self.dense(r[0], r[1]);
            let left = k > 0 && self.dense(bounds[k - 1], r[0]);
            let right = k + 2 < bounds.len() && self.dense(r[1], bounds[k + 2]);
            total += self.run(
                r[0],
                r[1],
                self.width(r[0], left, d),
                self.width(r[1], d, right),
            )?;
        }
        Ok(total)
    }

    /// The cheapest grouping other than the full merge: its cuts and cost. Dynamic programming
    /// over (run start, run end, density of the run before), since a run's widths depend on the
    /// density of its neighbours.
    fn best_split(&self) -> Result<(Vec<usize>, f64)> {
        const LAST: usize = usize::MAX;
        let n = self.len();
        // best[at(i, j, ld)]: the cheapest cost of run i..j and every run after it, when the run
        // before i has density ld; with the end of the run that follows (LAST: none).
        let at = |i: usize, j: usize, ld: bool| (i * (n + 1) + j) * 2 + usize::from(ld);
        let mut best = vec![(f64::INFINITY, LAST); (n + 1) * (n + 1) * 2];
        for i in (0..n).rev() {
            for j in i + 1..=n {
                let d = self.dense(i, j);
                // Only densities some run before i has (none before the chain: false).
                let reachable =
                    |ld: bool| (0..i).any(|h| self.dense(h, i) == ld) || (i == 0 && !ld);
                for ld in [false, true].into_iter().filter(|&ld| reachable(ld)) {
                    let w_in = self.width(i, ld, d);
                    best[at(i, j, ld)] = if j == n {
                        (self.run(i, j, w_in, self.full[n])?, LAST)
                    } else {
                        let mut pick = (f64::INFINITY, LAST);
                        for k in j + 1..=n {
                            let w_out = self.width(j, d, self.dense(j, k));
                            let c = self.run(i, j, w_in, w_out)? + best[at(j, k, d)].0;
                            if c < pick.0 {
                                pick = (c, k);
                            }
                        }
                        pick
                    };
                }
            }
        }
        let (mut j, cost) = (1..n)
            .map(|first| (first, best[at(0, first, false)].0))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a chain has at least two layers");
        let (mut cuts, mut i, mut ld) = (vec![], 0, false);
        while j < n {
            cuts.push(j);
            let k = best[at(i, j, ld)].1;
            (i, j, ld) = (j, k, self.dense(i, j));
        }
        Ok((cuts, cost))
    }
}

/// A conv reading the chain's input whose sum with the chain's output can fold into the full
/// merge: its name and cost.
fn shortcut(
    g: &Graph,
    chain: &[Link],
    merged: Option<ConvSpec>,
    cost: &Pricer<'_>,
) -> Result<Option<(String, f64, ConvSpec)>> {
    let (Some(first), Some(last), Some(merged)) = (chain.first(), chain.last(), merged) else {
        return Ok(None);
    };
    let consumers = g.consumers();
    let [add] = consumers[last.id][..] else {
        return Ok(None);
    };
    let n = g.node(add);
    if !matches!(n.op, Op::Add) || n.inputs.len() != 2 || n.inputs[0] == n.inputs[1] {
        return Ok(None);
    }
    let other = if n.inputs[0] == last.id {
        n.inputs[1]
    } else {
        n.inputs[0]
    };
    let Op::Conv2d(cb) = &g.node(other).op else {
        return Ok(None);
    };
    if g.node(other).inputs[0] != g.node(first.id).inputs[0] || consumers[other].len() != 1 {
        return Ok(None);
    }
    let larger_first = cb.kernel[0] * cb.kernel[1] > merged.kernel[0] * merged.kernel[1];
    let summed = if larger_first {
        sum_branch_specs(cb, &merged)
    } else {
        sum_branch_specs(&merged, cb)
    };
    let Some((summed, _)) = summed else {
        return Ok(None);
    };
    let hw = [first.input[1], first.input[2]];
    Ok(Some((
        g.node(other).name.clone(),
        cost.conv(cb, hw)?,
        summed,
    )))
}

/// Decide one chain (see the module documentation).
fn decide_chain(
    m: &Model,
    chain: &[Link],
    cost: &Pricer<'_>,
    dead: DeadChannels,
) -> Result<Decision> {
    let g = m.graph();
    let name = |l: &Link| g.node(l.id).name.clone();
    let out_ch = |op: &Op| match op {
        Op::Conv2d(c) => c.out_ch,
        Op::Linear(l) => l.out_f,
        _ => unreachable!("chains hold convolutions and linear layers"),
    };
    let first_in = match &chain[0].op {
        Op::Conv2d(c) => c.in_ch,
        Op::Linear(l) => l.in_f,
        _ => unreachable!("chains hold convolutions and linear layers"),
    };
    let full: Vec<usize> = std::iter::once(first_in)
        .chain(chain.iter().map(|l| out_ch(&l.op)))
        .collect();
    let live: Vec<usize> = match dead {
        DeadChannels::Kept => full.clone(),
        DeadChannels::Pruned => std::iter::once(first_in)
            .chain(chain.iter().map(|l| live_rows(m, &name(l), out_ch(&l.op))))
            .collect(),
    };
    let p = Pricing {
        chain,
        cost,
        full,
        live,
    };
    let n = chain.len();
    let unit = match chain[0].op {
        Op::Conv2d(_) => cost.unit(),
        _ => "MMAC",
    };
    let mut merged = p.run(0, n, p.full[0], p.full[n])?;
    let mut separate = p.grouping(&(1..n).collect::<Vec<_>>())?;
    let (mut cuts, mut split) = p.best_split()?;
    let absorbs = match shortcut(g, chain, p.spec(0, n), cost)? {
        Some((name, branch, summed)) => {
            let hw = [chain[0].input[1], chain[0].input[2]];
            merged = cost.conv(&summed, hw)?;
            separate += branch;
            split += branch;
            Some(name)
        }
        None => None,
    };
    if merged <= split {
        cuts.clear();
    }
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .chain(std::iter::once(n))
        .collect();
    let groups = bounds
        .windows(2)
        .map(|r| chain[r[0]..r[1]].iter().map(name).collect())
        .collect();
    let widths = (0..=n)
        .map(|b| match b {
            0 => p.full[0],
            b if b == n => p.full[n],
            b => p.width(b, p.dense(b - 1, b), p.dense(b, b + 1)),
        })
        .collect();
    Ok(Decision {
        kind: DecisionKind::Chain,
        layers: chain.iter().map(name).collect(),
        widths,
        full_widths: p.full.clone(),
        absorbs,
        merged,
        separate,
        chosen: merged.min(split),
        groups,
        unit,
    })
}

/// Merge parallel branches where the summed convolution costs no more than the two apart,
/// recording each decision.
fn sum_branches(m: &Model, cost: &Pricer<'_>, log: &mut Vec<Decision>) -> Result<Model> {
    let decided = RefCell::new(vec![]);
    let failure = RefCell::new(None);
    let policy = |offer: &BranchSum<'_>| {
        let price = |s: &ConvSpec| cost.conv(s, offer.in_hw);
        let priced = (|| -> Result<(f64, f64)> {
            let apart = price(offer.branches[0])? + price(offer.branches[1])?;
            Ok((price(offer.merged)?, apart))
        })();
        let (merged, apart) = match priced {
            Ok(p) => p,
            Err(e) => {
                failure.borrow_mut().get_or_insert(e);
                return false;
            }
        };
        let names: Vec<String> = offer.names.iter().map(|s| s.to_string()).collect();
        let take = merged <= apart;
        decided.borrow_mut().push(Decision {
            kind: DecisionKind::Branches,
            layers: names.clone(),
            widths: vec![],
            full_widths: vec![],
            absorbs: None,
            merged,
            separate: apart,
            chosen: merged.min(apart),
            groups: if take {
                vec![names]
            } else {
                names.into_iter().map(|n| vec![n]).collect()
            },
            unit: cost.unit(),
        });
        take
    };
    let out = merge_parallel_branches_with(m, &policy)?;
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    for d in decided.into_inner() {
        record(log, d);
    }
    Ok(out)
}

fn record(log: &mut Vec<Decision>, d: Decision) {
    if !log.iter().any(|x| x.kind == d.kind && x.layers == d.layers) {
        log.push(d);
    }
}

/// The latency-aware collapse: fold batch-norms, drop identities and dropout, then to a fixed
/// point merge each linear chain by its cheapest grouping under `cost`, sum parallel branches
/// where that is no dearer, and fold residual identities. `dead` says whether dead channels are
/// pruned afterwards (the caller runs [`prune_dead_channels`](super::prune_dead_channels)), which
/// is what keeping layers apart then costs. Returns the model and every decision, in the order
/// made. Exact like [`collapse`].
pub fn collapse_with(
    model: &Model,
    cost: &CostModel,
    dead: DeadChannels,
) -> Result<(Model, Vec<Decision>)> {
    collapse_priced(model, &Pricer::new(cost), dead)
}

/// Every convolution (with the spatial size of its input) [`collapse_with`] prices for `model`
/// when it decides by multiply-accumulates; without duplicates. Deciding by a table asks for the
/// same layers wherever it takes the same decisions, so measuring these first makes its
/// estimates measurements (`tlc calibrate --checkpoint`).
pub fn priced_convs(model: &Model, dead: DeadChannels) -> Result<Vec<(ConvSpec, [usize; 2])>> {
    let pricer = Pricer::new(&CostModel::Macs);
    collapse_priced(model, &pricer, dead)?;
    let mut out: Vec<(ConvSpec, [usize; 2])> = vec![];
    for a in pricer.asked.into_inner() {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

fn collapse_priced(
    model: &Model,
    cost: &Pricer<'_>,
    dead: DeadChannels,
) -> Result<(Model, Vec<Decision>)> {
    let mut m = remove_passthrough(&fold_batch_norms(model)?)?;
    let mut log = vec![];
    // The chains decisions left behind (their layers after the chosen merges) are settled as long
    // as no later rewrite renames one of their layers.
    let mut settled: Vec<Vec<String>> = vec![];
    loop {
        let before = m.graph().nodes().len();
        let g = m.graph();
        let decisions = chains(g)?
            .iter()
            .filter(|c| {
                let names: Vec<String> = c.iter().map(|l| g.node(l.id).name.clone()).collect();
                !settled.contains(&names)
            })
            .map(|c| decide_chain(&m, c, cost, dead))
            .collect::<Result<Vec<_>>>()?;
        for d in decisions {
            for group in d.groups.iter().filter(|g| g.len() > 1) {
                m = merge_layers(&m, group)
                    .map_err(|e| Error::invalid("collapse", format!("merging {group:?}: {e}")))?;
            }
            settled.push(d.groups.iter().map(|g| merged_name(g)).collect());
            record(&mut log, d);
        }
        m = sum_branches(&m, cost, &mut log)?;
        m = fold_residuals(&m)?;
        if m.graph().nodes().len() == before {
            return Ok((m, log));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::cost::{CostEntry, CostTable};
    use crate::rng::Rng;

    /// pw (padding relocated) -> dw -> dense 3x3 -> pw -> dw -> pw: every density pattern.
    fn mixed_chain() -> Graph {
        let mut g = Graph::new(&[6, 12, 12]);
        let dw = |c: usize| Op::Conv2d(ConvSpec::new(c, c, 3, 1, 0).groups(c));
        let conv = |i, o, k, p| Op::Conv2d(ConvSpec::new(i, o, k, 1, p));
        let x = g.push("pw1", conv(6, 12, 1, 1), &[0]);
        let x = g.push("dw1", dw(12), &[x]);
        let x = g.push("c3", conv(12, 8, 3, 0), &[x]);
        let x = g.push("pw2", conv(8, 8, 1, 0), &[x]);
        let x = g.push("dw2", dw(8), &[x]);
        g.push("pw3", conv(8, 4, 1, 0), &[x]);
        g
    }

    #[test]
    fn the_grouping_search_finds_the_cheapest_grouping() {
        let g = mixed_chain();
        let found = chains(&g).unwrap();
        assert_eq!(found.len(), 1);
        let chain = &found[0];
        let n = chain.len();
        assert_eq!(n, 6);
        // Tables whose dense kernels are slow per MAC, with a large or a negligible fixed cost, so
        // the optimum is not the MAC one.
        let table = |dense_floor: f64| {
            let mut entries = vec![];
            for (spec, hw, ms) in [
                (ConvSpec::new(8, 8, 3, 1, 1), 10, 0.5),
                (ConvSpec::new(8, 8, 5, 1, 2), 10, 0.9),
                (ConvSpec::new(2, 2, 3, 1, 1), 2, dense_floor),
                (ConvSpec::new(8, 8, 1, 1, 0), 10, 0.02),
                (ConvSpec::new(8, 8, 3, 1, 1).groups(8), 10, 0.01),
            ] {
                entries.push(CostEntry::new(&spec, [hw, hw], 1, ms));
            }
            CostModel::Measured(CostTable::new("test", 1, 1, entries).unwrap())
        };
        let mut rng = Rng::new(4);
        for cost in [CostModel::Macs, table(0.4), table(1e-4)] {
            for _ in 0..50 {
                let full = vec![6, 12, 12, 8, 8, 8, 4];
                let live = full.iter().map(|&c| 1 + rng.below(c)).collect();
                let pricer = Pricer::new(&cost);
                let p = Pricing {
                    chain,
                    cost: &pricer,
                    full,
                    live,
                };
                let (cuts, best) = p.best_split().unwrap();
                assert!((p.grouping(&cuts).unwrap() - best).abs() < 1e-9);
                let brute = (1..1u32 << (n - 1))
                    .map(|mask| {
                        let cuts: Vec<usize> =
                            (1..n).filter(|b| mask & (1 << (b - 1)) != 0).collect();
                        p.grouping(&cuts).unwrap()
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!((brute - best).abs() < 1e-9, "{brute} vs {best} ({cuts:?})");
            }
        }
    }
}
