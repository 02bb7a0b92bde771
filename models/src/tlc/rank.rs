//! One iteration's decision: order the candidates (by validation-loss gap, or by entropy) and
//! choose which go with the removal policy of TLC.md.

use super::config::RankMode;
use super::score::{CandidateScore, ScoreRow};
use crate::data::loader::Batch;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tlc_engine::tlc::{choose_removals, linearize, Linearized};
use tlc_engine::Model;

/// A candidate's line in an iteration's ranking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankEntry {
    #[serde(flatten)]
    pub row: ScoreRow,
    /// Loss on the ranking batches with this activation alone linearized (`null` in entropy
    /// mode, or when not finite).
    pub loss: Option<f32>,
    /// `loss` minus the current model's loss on the same batches.
    pub gap: Option<f32>,
    /// 1-based position in the order (by gap, or by entropy); 0 for an unscored candidate.
    pub rank: usize,
    /// Whether this iteration removes it.
    pub removed: bool,
}

/// One joint trial of the removal policy: the best `acts` linearized together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JointTrial {
    pub acts: Vec<String>,
    /// `null` when not finite.
    pub loss: Option<f32>,
}

/// An iteration's ranking and decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub mode: RankMode,
    /// The current model's loss on the ranking batches (loss mode).
    pub base_loss: Option<f32>,
    /// Every candidate, in graph order.
    pub entries: Vec<RankEntry>,
    /// The joint trials made, in order.
    pub joint: Vec<JointTrial>,
    /// The activations chosen, best first.
    pub chosen: Vec<String>,
}

fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

/// Mean cross-entropy of `model` (evaluation mode) over `batches`.
pub fn mean_loss(model: &Model, batches: &[Batch]) -> Result<f32> {
    let (mut sum, mut n) = (0f64, 0usize);
    for b in batches {
        let l = model
            .eval(&b.images)?
            .cross_entropy(&b.labels, 0.0)?
            .item()?;
        sum += l as f64 * b.labels.len() as f64;
        n += b.labels.len();
    }
    if n == 0 {
        return Err(Error::Config("no images to measure the loss on".into()));
    }
    Ok((sum / n as f64) as f32)
}

/// A copy of `model` with the candidates `which` (indices into `scores`) linearized, in order.
pub fn with_removed(
    model: &Model,
    scores: &[CandidateScore],
    which: &[usize],
) -> Result<(Model, Vec<Linearized>)> {
    let mut m = model.clone();
    let mut recs = vec![];
    for &i in which {
        let c = &scores[i];
        let score = c.score.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "`{}` has no scores (a calibration candidate needs data)",
                c.act
            ))
        })?;
        recs.push(linearize(&mut m, &c.cand, score)?);
    }
    Ok((m, recs))
}

/// Rank the scored candidates of `scores` and choose at most `cap` (>= 1) to remove.
///
/// Loss mode measures every candidate alone on `batches` and applies [`choose_removals`] (joint
/// trials of the best 2, 3, ... while the best gap is negative). Entropy mode chooses the single
/// lowest-entropy candidate. `on_trial` hears the name of each trial before it runs (the single
/// candidates, then `a+b`, `a+b+c`, ...).
pub fn rank(
    model: &Model,
    scores: &[CandidateScore],
    mode: RankMode,
    batches: &[Batch],
    cap: usize,
    on_trial: &mut dyn FnMut(&str),
) -> Result<Ranking> {
    let scored: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i].score.is_some())
        .collect();
    let mut entries: Vec<RankEntry> = scores
        .iter()
        .map(|c| RankEntry {
            row: c.row(),
            loss: None,
            gap: None,
            rank: 0,
            removed: false,
        })
        .collect();
    let mut joint = vec![];
    let (base_loss, key, chosen): (Option<f32>, Vec<f32>, Vec<usize>) = match mode {
        RankMode::Loss => {
            let base = mean_loss(model, batches)?;
            let mut gaps = vec![];
            for &i in &scored {
                on_trial(&scores[i].act);
                let (m, _) = with_removed(model, scores, &[i])?;
                let loss = mean_loss(&m, batches)?;
                entries[i].loss = finite(loss);
                entries[i].gap = finite(loss - base);
                gaps.push((i, loss - base));
            }
            let chosen = choose_removals(&gaps, base, cap, |set: &[usize]| -> Result<f32> {
                let acts: Vec<String> = set.iter().map(|&i| scores[i].act.clone()).collect();
                on_trial(&acts.join("+"));
                let (m, _) = with_removed(model, scores, set)?;
                let loss = mean_loss(&m, batches)?;
                joint.push(JointTrial {
                    acts,
                    loss: finite(loss),
                });
                Ok(loss)
            })?;
            (Some(base), gaps.iter().map(|g| g.1).collect(), chosen)
        }
        RankMode::Entropy => {
            let key: Vec<f32> = scored
                .iter()
                .map(|&i| scores[i].score.as_ref().map_or(f32::NAN, |s| s.entropy))
                .collect();
            let best = (0..scored.len())
                .min_by(|&a, &b| nan_last(key[a]).total_cmp(&nan_last(key[b])))
                .map(|k| scored[k]);
            (None, key, best.into_iter().collect())
        }
    };
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| nan_last(key[a]).total_cmp(&nan_last(key[b])));
    for (pos, &k) in order.iter().enumerate() {
        entries[scored[k]].rank = pos + 1;
    }
    for &i in &chosen {
        entries[i].removed = true;
    }
    Ok(Ranking {
        mode,
        base_loss,
        entries,
        joint,
        chosen: chosen.iter().map(|&i| scores[i].act.clone()).collect(),
    })
}

/// NaN (a diverged trial) sorts after everything.
fn nan_last(x: f32) -> f32 {
    if x.is_nan() {
        f32::INFINITY
    } else {
        x
    }
}
