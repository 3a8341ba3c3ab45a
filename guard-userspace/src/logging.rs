//! Log output: a terminal gets colours and times; anything else (a pipe, a file, journald)
//! gets plain lines, each with its level. Under systemd (`JOURNAL_STREAM` names our stderr),
//! every line also starts with its syslog priority (`<3>` error … `<7>` debug), which journald
//! takes as the entry's priority (`journalctl -p warning` works) and strips, and the time is
//! left to journald.

use std::{
    fmt,
    io::{IsTerminal as _, Write as _},
    os::unix::fs::MetadataExt as _,
};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Whether stderr is the journal stream systemd gave us (`JOURNAL_STREAM=dev:ino`).
pub fn under_journald() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(m) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino())
}

/// The syslog priority of a level (sd-daemon(3)).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The default formatter, each line prefixed with `<priority>`.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the subscriber (RUST_LOG, default `info`) on stderr.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if under_journald() {
        let format = tracing_subscriber::fmt::format()
            .with_ansi(false)
            .without_time();
        base.with_ansi(false).event_format(Journald(format)).init();
    } else {
        base.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Prints the error that ends a command: `error: …`, and under journald every line of it
/// with the error priority, so that a many-line message stays one error in the journal.
pub fn print_error(e: &anyhow::Error) {
    let text = format!("{e:#}");
    let mut err = std::io::stderr().lock();
    if under_journald() {
        for (i, line) in text.lines().enumerate() {
            let lead = if i == 0 { "error: " } else { "  " };
            let _ = writeln!(err, "<3>{lead}{line}");
        }
    } else {
        let _ = writeln!(err, "error: {text}");
    }
}
