//! Progress for the terminal: indicatif bars when stderr is a terminal, plain lines otherwise (logs,
//! CI, a parent process watching the output), or nothing.

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use tlc_models::train::{EpochMetrics, Progress, StepReport};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Progress bars (indicatif).
    Bars,
    /// A line every tenth of an epoch.
    Plain,
    /// Only the per-epoch summaries.
    Quiet,
}

/// The CLI's [`Progress`]: bars or lines on stderr; per-epoch summaries on stdout.
pub struct Reporter {
    bars: bool,
    plain: bool,
    bar: Option<ProgressBar>,
    epochs: usize,
}

impl Reporter {
    pub fn new(mode: ProgressMode) -> Reporter {
        let tty = std::io::stderr().is_terminal();
        let bars = mode == ProgressMode::Bars || (mode == ProgressMode::Auto && tty);
        let plain = mode == ProgressMode::Plain || (mode == ProgressMode::Auto && !tty);
        Reporter {
            bars,
            plain,
            bar: None,
            epochs: 0,
        }
    }

    fn new_bar(&mut self, len: usize, prefix: String) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30.cyan/blue}] {pos:>4}/{len:4} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        self.bar = Some(bar);
    }

    fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// `0.8734` -> `87.34%`.
pub fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// One line summing up an epoch.
pub fn epoch_line(m: &EpochMetrics, epochs: usize) -> String {
    let mut s = format!(
        "epoch {}/{epochs}  lr {:.5}  train loss {:.4} acc {}",
        m.epoch,
        m.lr,
        m.train_loss,
        pct(m.train_acc)
    );
    if let (Some(l), Some(a)) = (m.val_loss, m.val_acc) {
        s += &format!("  val loss {l:.4} acc {}", pct(a));
    }
    if let (Some(l), Some(a)) = (m.test_loss, m.test_acc) {
        s += &format!("  test loss {l:.4} acc {}", pct(a));
    }
    s + &format!("  {:.0} img/s  {:.1} s", m.images_per_s, m.seconds)
}

impl Progress for Reporter {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        self.epochs = epochs;
        if self.bars {
            self.new_bar(batches, format!("epoch {epoch}/{epochs}"));
        }
    }

    fn step(&mut self, r: &StepReport) {
        let msg = format!(
            "loss {:.4} acc {} {:.0} img/s lr {:.4}",
            r.mean_loss,
            pct(r.accuracy),
            r.images_per_s,
            r.lr
        );
        if let Some(b) = &self.bar {
            b.set_position(r.batch as u64);
            b.set_message(msg);
        } else if self.plain
            && (r.batch.is_multiple_of((r.batches / 10).max(1)) || r.batch == r.batches)
        {
            eprintln!(
                "epoch {}/{} batch {}/{}: {msg}",
                r.epoch, self.epochs, r.batch, r.batches
            );
        }
    }

    fn eval_start(&mut self, what: &str, batches: usize) {
        if self.bars {
            self.new_bar(batches, what.to_string());
        }
    }

    fn eval_step(&mut self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn eval_end(&mut self) {
        self.clear();
    }

    fn epoch_end(&mut self, m: &EpochMetrics) {
        self.clear();
        outln!("{}", epoch_line(m, self.epochs));
    }

    fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
}
