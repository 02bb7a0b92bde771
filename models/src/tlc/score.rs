//! Every candidate of a model with its scores: read from the batch-norm in front of it, or
//! measured on calibration batches when there is none.

use crate::error::Result;
use serde::{Deserialize, Serialize};
use tlc_engine::tlc::{candidates, Calibration, Candidate, ChannelStats, LayerScore, ScoreSource};
use tlc_engine::{Error as EngineError, Model, Tensor};

/// A candidate activation, its names and (when known) its scores.
#[derive(Clone, Debug)]
pub struct CandidateScore {
    pub cand: Candidate,
    /// The activation's node name.
    pub act: String,
    /// The batch-norm's node (module) name; its parameters are `<bn>.weight` (gamma) and
    /// `<bn>.bias` (beta). `None` for a calibration candidate.
    pub bn: Option<String>,
    /// `None` for a calibration candidate scored without data.
    pub score: Option<LayerScore>,
}

/// One line of the per-layer table (`tlc scores`, the report).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    /// The activation's name.
    pub act: String,
    /// The batch-norm's name (`null` for a calibration candidate).
    pub bn: Option<String>,
    /// `batch_norm` or `calibration`.
    pub source: String,
    pub channels: usize,
    /// ON (linearized) and OFF (removed) channel counts; `null` when not scored (a calibration
    /// candidate without data).
    pub on: Option<usize>,
    pub off: Option<usize>,
    /// Layer entropy in bits (mean binary entropy of the channels' OFF probabilities).
    pub entropy: Option<f32>,
    /// Mean probability that a channel's ON/OFF decision is wrong.
    pub mean_error: Option<f32>,
}

impl CandidateScore {
    /// The table line.
    pub fn row(&self) -> ScoreRow {
        let s = self.score.as_ref();
        ScoreRow {
            act: self.act.clone(),
            bn: self.bn.clone(),
            source: match self.cand.source {
                ScoreSource::BatchNorm(_) => "batch_norm".into(),
                ScoreSource::Calibration => "calibration".into(),
            },
            channels: self.cand.channels,
            on: s.map(|s| s.n_on()),
            off: s.map(|s| s.n_off()),
            entropy: s.map(|s| s.entropy),
            mean_error: s.map(|s| s.mean_error),
        }
    }
}

/// The scores of a batch-norm candidate: beta as the shift, gamma as the scale.
fn bn_score(model: &Model, bn: &str) -> Result<LayerScore> {
    let get = |role: &str| {
        let name = format!("{bn}.{role}");
        model
            .get(&name)
            .map(|t| t.to_vec())
            .ok_or(EngineError::MissingTensor {
                name,
                source_name: "the model".into(),
            })
    };
    Ok(LayerScore::new(&ChannelStats {
        shift: get("bias")?,
        scale: get("weight")?,
    }))
}

/// Per-channel mean and std of the input of `cand`'s activation over `batches` (normalised
/// images), by evaluating a copy of the network whose output is that input.
pub fn calibrate(model: &Model, cand: &Candidate, batches: &[Tensor]) -> Result<LayerScore> {
    let mut g = model.graph().clone();
    g.set_output(g.node(cand.act).inputs[0]);
    let mut probe = model.clone();
    probe.set_graph(g)?;
    let mut cal = Calibration::default();
    for x in batches {
        cal.add(&probe.eval(x)?)?;
    }
    Ok(LayerScore::new(&cal.stats()))
}

/// Every candidate of `model`, in graph order, scored. Calibration candidates are measured on
/// `calib` when it holds batches, and left unscored otherwise.
pub fn score_candidates(model: &Model, calib: &[Tensor]) -> Result<Vec<CandidateScore>> {
    let g = model.graph();
    candidates(g)?
        .into_iter()
        .map(|cand| {
            let act = g.node(cand.act).name.clone();
            let (bn, score) = match cand.source {
                ScoreSource::BatchNorm(b) => {
                    let name = g.node(b).name.clone();
                    let s = bn_score(model, &name)?;
                    (Some(name), Some(s))
                }
                ScoreSource::Calibration if calib.is_empty() => (None, None),
                ScoreSource::Calibration => (None, Some(calibrate(model, &cand, calib)?)),
            };
            Ok(CandidateScore {
                cand,
                act,
                bn,
                score,
            })
        })
        .collect()
}

/// Whether any candidate of `model` needs calibration data.
pub fn needs_calibration(model: &Model) -> Result<bool> {
    Ok(candidates(model.graph())?
        .iter()
        .any(|c| c.source == ScoreSource::Calibration))
}
