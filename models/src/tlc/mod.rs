//! The TLC driver (`shared/TLC.md`): rank the removable activations of a trained network by the
//! validation loss their removal costs (or, data-free, by their batch-norm entropy), remove them
//! with the removal policy, fine-tune with the OFF channels held at zero, evaluate, and repeat
//! until a stopping criterion holds; every iteration is a checkpoint and a line of the report.
//!
//! The graph-level pieces (candidates, scores, removal policy, linearize) are the engine's
//! [`tlc_engine::tlc`]; this module feeds them data and drives the loop.

mod config;
mod driver;
mod plot;
mod rank;
pub mod report;
mod score;

pub use config::{CompressConfig, RankMode, StopReason};
pub use driver::{
    final_tune_dir, footprint, iteration_file, stored_state, CompressProgress, CompressState,
    Compressor, Footprint, IterationRecord, COMPRESSED, COMPRESS_KEY, FINAL, LAST, STATE_FORMAT,
};
pub use plot::{accuracy_svg, entropy_svg};
pub use rank::{mean_loss, rank, with_removed, JointTrial, RankEntry, Ranking};
pub use score::{calibrate, needs_calibration, score_candidates, CandidateScore, ScoreRow};
