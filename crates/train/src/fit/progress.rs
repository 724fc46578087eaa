//! Progress bars (indicatif) or one log line per epoch.
use super::{Callback, Control, EpochEnd, EpochMetrics, FitEnd, FitState, StepLoss};
use crate::Result;
use indicatif::{ProgressBar, ProgressStyle};

/// How much a run prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// Progress bars for epochs and batches (on a terminal).
    #[default]
    Bars,
    /// One log line per epoch (`--quiet`).
    Lines,
    /// Nothing.
    Silent,
}

/// Shows a run's progress on stderr, each line prefixed with the run's name.
pub struct Progress {
    name: String,
    verbosity: Verbosity,
    epoch_bar: ProgressBar,
    batch_bar: ProgressBar,
}

impl Progress {
    pub fn new(name: impl Into<String>, verbosity: Verbosity) -> Self {
        Self {
            name: name.into(),
            verbosity,
            epoch_bar: ProgressBar::hidden(),
            batch_bar: ProgressBar::hidden(),
        }
    }

    fn print(&self, line: String) {
        match self.verbosity {
            // A hidden bar (stderr not a terminal) drops `println`: log lines then.
            Verbosity::Bars if self.epoch_bar.is_hidden() => eprintln!("{line}"),
            Verbosity::Bars => self.epoch_bar.println(line),
            Verbosity::Lines => eprintln!("{line}"),
            Verbosity::Silent => {}
        }
    }
}

impl Callback for Progress {
    fn on_fit_start(&mut self, state: &FitState, epochs: usize) -> Result<()> {
        if self.verbosity == Verbosity::Bars {
            self.epoch_bar = ProgressBar::new(epochs as u64);
            self.epoch_bar.set_style(
                ProgressStyle::with_template("{prefix} epoch {pos}/{len} [{bar:25}] {elapsed}<{eta} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            self.epoch_bar.set_prefix(self.name.clone());
            self.epoch_bar.set_position(state.epochs_done() as u64);
        }
        Ok(())
    }

    fn on_epoch_start(&mut self, _epoch: usize, batches: usize) -> Result<()> {
        self.batch_bar = if self.verbosity == Verbosity::Bars && batches > 1 {
            let b = ProgressBar::new(batches as u64);
            b.set_style(
                ProgressStyle::with_template("  {pos}/{len} batches [{bar:25}] {per_sec} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        Ok(())
    }

    fn on_batch_end(&mut self, step: &StepLoss, mean_loss: f64) -> Result<()> {
        self.batch_bar.inc(1);
        if step.step.is_multiple_of(20) {
            self.batch_bar.set_message(format!("loss {mean_loss:.4}"));
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, end: &mut EpochEnd<'_>) -> Result<Control> {
        self.batch_bar.finish_and_clear();
        let line = epoch_line(end.metrics());
        self.print(format!("{} {line}", self.name));
        self.epoch_bar.set_message(line);
        self.epoch_bar.inc(1);
        Ok(Control::Continue)
    }

    fn on_fit_end(&mut self, end: &FitEnd<'_>) -> Result<()> {
        if end.stopped_early {
            self.print(format!(
                "{}: early stop after epoch {} ({} epochs without improvement)",
                self.name,
                end.state.epochs_done(),
                end.state.epochs_without_improvement
            ));
        }
        self.epoch_bar.finish_and_clear();
        Ok(())
    }
}

/// `epoch   3 lr 1.00e-2 train loss 0.1234 acc 0.9650 | val loss ... acc ... | 0.4s`.
pub fn epoch_line(m: &EpochMetrics) -> String {
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let mut s = format!(
        "epoch {:>3} lr {:.2e} train loss {:.4} acc {:.4}",
        get("epoch"),
        get("lr"),
        get("train_loss"),
        get("train_accuracy")
    );
    if let (Some(l), Some(a)) = (m.get("val_loss"), m.get("val_accuracy")) {
        s += &format!(" | val loss {l:.4} acc {a:.4}");
    }
    s += &format!(" | {:.1}s", get("seconds"));
    s
}
