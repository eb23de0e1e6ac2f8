//! `tracing` on stderr: one plain line per event (`warning: ...`, `error: ...`, info without
//! a prefix, `debug: <target>: ...`), written around the progress bars.

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber: `RUST_LOG` when set, else info for the `elmer` targets (the
/// library and this binary), debug with `-v`, trace with `-vv`; warnings for everything else.
///
/// In a data-parallel job (started by `mpirun` / `srun`), ranks other than 0 only report
/// errors: rank 0 speaks for the job.
pub fn init(verbose: u8) {
    let default = match verbose {
        _ if elmer::train::distributed::launcher_rank().is_some_and(|r| r > 0) => "error",
        0 => "warn,elmer=info",
        1 => "warn,elmer=debug",
        _ => "warn,elmer=trace",
    };
    let mut invalid = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(&s).unwrap_or_else(|e| {
            invalid = Some(format!("RUST_LOG={s:?} is not a valid filter ({e})"));
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::progress::LogWriter)
        .event_format(Plain)
        .init();
    if let Some(m) = invalid {
        tracing::warn!("{m}; using {default:?}");
    }
}

/// The line format: the level as a word (none for info), the message and any fields.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        match *meta.level() {
            Level::ERROR => write!(w, "error: ")?,
            Level::WARN => write!(w, "warning: ")?,
            Level::INFO => {}
            Level::DEBUG => write!(w, "debug: {}: ", meta.target())?,
            Level::TRACE => write!(w, "trace: {}: ", meta.target())?,
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
