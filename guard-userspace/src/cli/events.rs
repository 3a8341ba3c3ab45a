//! `sipguard events [--follow] [--json]`: the drop events of the running daemon, read from its
//! events socket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::Ctx;
use crate::{daemon::events::socket_path, report::event::EventRecord};

/// `sipguard events`.
pub fn run(ctx: &Ctx, follow: bool, json: bool) -> Result<()> {
    let path = socket_path(&ctx.state.dir);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot connect to {}: is `sipguard run` running (with this --state-dir)?",
            path.display()
        )
    })?;
    // The daemon answers at once; a daemon that does not is reported, not waited for forever.
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    if !follow {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
    }
    s.write_all(if follow { b"follow\n" } else { b"recent\n" })?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(s).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        writeln!(out, "{}", render(&line, json))?;
        out.flush()?;
    }
    Ok(())
}

/// One line from the daemon as shown: the JSON line itself, or its one-line form.
pub fn render(line: &str, json: bool) -> String {
    match serde_json::from_str::<EventRecord>(line) {
        Ok(r) if !json => r.line(),
        _ => line.to_string(),
    }
}
