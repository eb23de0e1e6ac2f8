//! Progress bars on stderr, drawn only when stderr is a terminal (hidden otherwise, so pipes
//! and test output stay clean), and the log writer that keeps log lines off the bars.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        MultiProgress::with_draw_target(target)
    })
}

fn add(bar: ProgressBar, template: &str, prefix: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ");
    bars().add(bar.with_style(style).with_prefix(prefix.to_string()))
}

/// A bar over `len` items (`prefix [====>   ] pos/len msg (elapsed, eta)`).
pub fn bar(len: usize, prefix: &str) -> ProgressBar {
    add(
        ProgressBar::new(len as u64),
        "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        prefix,
    )
}

/// A counter of items when their number is not known in advance (`prefix pos msg (elapsed,
/// rate)`), e.g. lines read from stdin.
pub fn counter(prefix: &str) -> ProgressBar {
    add(
        ProgressBar::no_length(),
        "{prefix} {pos} lines {msg} ({elapsed}, {per_sec})",
        prefix,
    )
}

/// A bar over training steps; [`train_message`] fills its message.
pub fn train_bar(total_steps: usize, prefix: &str) -> ProgressBar {
    add(
        ProgressBar::new(total_steps as u64),
        "{prefix} [{bar:30}] {pos}/{len} steps | {msg}",
        prefix,
    )
}

/// A training bar over `trainer`'s configured steps, starting at its current step and moved
/// by its progress callback; call `finish_and_clear` when the run returns.
pub fn attach_train_bar(trainer: &mut elmer::train::Trainer, prefix: &str) -> ProgressBar {
    let bar = train_bar(trainer.state().config.steps, prefix);
    bar.set_position(trainer.state().step as u64);
    let b = bar.clone();
    trainer.set_progress(move |p| {
        b.set_position(p.step as u64);
        b.set_message(train_message(p));
    });
    bar
}

/// The training bar's message: loss, tokens/s, ETA (the trainer's estimate).
pub fn train_message(p: &elmer::train::StepProgress<'_>) -> String {
    let eval = p
        .entry
        .eval_loss
        .map(|l| format!(" | eval {l:.4}"))
        .unwrap_or_default();
    format!(
        "loss {:.4}{eval} | {:.0} tok/s | eta {}",
        p.entry.loss,
        p.entry.tokens_per_sec,
        HumanDuration(Duration::from_secs_f64(p.eta_secs.max(0.0)))
    )
}

/// A spinner with a message, for work without a count.
pub fn spinner(msg: &str) -> ProgressBar {
    let s = add(
        ProgressBar::new_spinner(),
        "{spinner} {msg} ({elapsed})",
        "",
    );
    s.set_message(msg.to_string());
    if !s.is_hidden() {
        s.enable_steady_tick(Duration::from_millis(120));
    }
    s
}

/// Removes every bar from the terminal (before the final error line, say).
pub fn clear() {
    let _ = bars().clear();
}

/// Writes log lines to stderr with the progress bars suspended around each one.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        bars().suspend(|| std::io::stderr().lock().write_all(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
