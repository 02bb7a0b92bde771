//! The run's report, rewritten after every iteration from the state alone (so a resumed run's
//! report is whole): `report.json` (the full state), `report.csv` (one row per iteration),
//! `scores.csv` (each iteration's per-layer scores and ranking), and two SVG plots
//! (`accuracy.svg`: accuracy against activations removed; `entropy.svg`: each layer's entropy at
//! each iteration).

use super::driver::{CompressState, IterationRecord};
use super::plot;
use crate::error::Result;
use std::path::Path;
use tlc_engine::io::atomic::write_atomically;

pub const REPORT_JSON: &str = "report.json";
pub const REPORT_CSV: &str = "report.csv";
pub const SCORES_CSV: &str = "scores.csv";
pub const ACCURACY_SVG: &str = "accuracy.svg";
pub const ENTROPY_SVG: &str = "entropy.svg";

/// Columns of `report.csv`.
pub const REPORT_COLUMNS: &[&str] = &[
    "iteration",
    "removed",
    "removed_total",
    "activations_left",
    "train_acc",
    "val_acc_before_ft",
    "val_acc",
    "test_acc",
    "val_loss",
    "test_loss",
    "params",
    "params_active",
    "macs",
    "macs_active",
    "accepted",
    "seconds",
];

/// Columns of `scores.csv`.
pub const SCORES_COLUMNS: &[&str] = &[
    "iteration",
    "act",
    "bn",
    "source",
    "channels",
    "on",
    "off",
    "entropy",
    "mean_error",
    "loss",
    "gap",
    "rank",
    "removed",
];

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// A CSV field, quoted when it must be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn line(fields: &[String]) -> String {
    let f: Vec<String> = fields.iter().map(|s| field(s)).collect();
    f.join(",") + "\n"
}

/// `report.csv`: one row per iteration (0 is the starting model), then `final` for the final
/// fine-tuning of the result if there was one; activations removed by the iteration are
/// separated by `;`; accuracies are fractions.
pub fn report_csv(state: &CompressState) -> String {
    let mut s = REPORT_COLUMNS.join(",") + "\n";
    for r in &state.iterations {
        s += &report_row(r, r.iteration.to_string());
    }
    // The final fine-tuning of the result, if any: iteration `final`.
    if let Some(f) = &state.final_tune {
        s += &report_row(f, "final".into());
    }
    s
}

fn report_row(r: &IterationRecord, iteration: String) -> String {
    let removed: Vec<&str> = r.removed.iter().map(|l| l.act.as_str()).collect();
    line(&[
        iteration,
        removed.join(";"),
        r.removed_total.to_string(),
        r.activations_left.to_string(),
        opt(r.train_acc),
        opt(r.val_acc_before_ft),
        r.val_acc.to_string(),
        opt(r.test_acc),
        opt(r.val_loss),
        opt(r.test_loss),
        r.footprint.params.to_string(),
        r.footprint.params_active.to_string(),
        r.footprint.macs.to_string(),
        r.footprint.macs_active.to_string(),
        r.accepted.to_string(),
        format!("{:.1}", r.seconds),
    ])
}

/// `scores.csv`: for each iteration, every candidate it ranked (scores of the model it started
/// from), with its loss gap and rank and whether it was removed.
pub fn scores_csv(state: &CompressState) -> String {
    let mut s = SCORES_COLUMNS.join(",") + "\n";
    for r in &state.iterations {
        let Some(rk) = &r.ranking else { continue };
        for e in &rk.entries {
            s += &line(&[
                r.iteration.to_string(),
                e.row.act.clone(),
                opt(e.row.bn.clone()),
                e.row.source.clone(),
                e.row.channels.to_string(),
                opt(e.row.on),
                opt(e.row.off),
                opt(e.row.entropy),
                opt(e.row.mean_error),
                opt(e.loss),
                opt(e.gap),
                e.rank.to_string(),
                e.removed.to_string(),
            ]);
        }
    }
    s
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, |w| {
        w.write_all(text.as_bytes())
            .map_err(|e| tlc_engine::Error::io(path, e))
    })?;
    Ok(())
}

/// Write every report file into `dir`.
pub fn write_all(dir: &Path, state: &CompressState) -> Result<()> {
    let json = serde_json::to_string_pretty(state).expect("the state serialises");
    write_text(&dir.join(REPORT_JSON), &(json + "\n"))?;
    write_text(&dir.join(REPORT_CSV), &report_csv(state))?;
    write_text(&dir.join(SCORES_CSV), &scores_csv(state))?;
    write_text(&dir.join(ACCURACY_SVG), &plot::accuracy_svg(state)?)?;
    write_text(&dir.join(ENTROPY_SVG), &plot::entropy_svg(state)?)?;
    Ok(())
}
