//! `sipguard replay --config FILE [--json] CAPTURE`: runs [`crate::replay::run`] and renders
//! its results as text or JSON lines.

use std::{
    fmt::Write as _,
    io::{BufWriter, Write as _},
    path::Path,
};

use anyhow::Result;
use serde_json::json;

use crate::{
    kernel::Verdict,
    replay::{Event, FrameResult, Outcome, Replay, Summary},
};

/// Prints each frame's line as replay gives it (a capture of any size, nothing kept), notes on
/// stderr, then the summary.
pub fn run(config: &Path, capture: &Path, json: bool) -> Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let summary = crate::replay::run(config, capture, |e| {
        match e {
            Event::Frame(f) => {
                let line = if json { frame_json(f) } else { frame_text(f) };
                writeln!(out, "{line}")?;
            }
            Event::Note(n) => {
                out.flush()?;
                eprintln!("note: {n}");
            }
        }
        Ok(())
    });
    // The frames before a file error are shown; then the error.
    out.flush()?;
    let summary = summary?;
    out.write_all(
        if json {
            summary_json(&summary)
        } else {
            summary_text(&summary)
        }
        .as_bytes(),
    )?;
    out.flush()?;
    Ok(())
}

/// The whole output: a line per frame, then the summary (one JSON object, or text lines).
pub fn render(replay: &Replay, json: bool) -> String {
    let mut out = String::new();
    for f in &replay.frames {
        out.push_str(&if json { frame_json(f) } else { frame_text(f) });
        out.push('\n');
    }
    out.push_str(&if json {
        summary_json(&replay.summary)
    } else {
        summary_text(&replay.summary)
    });
    out
}

fn verdict_str(v: &Outcome) -> &'static str {
    match v {
        Outcome::Ran(Verdict::Drop) => "drop",
        Outcome::Ran(Verdict::Pass) => "pass",
        Outcome::Ran(Verdict::Other(_)) => "other",
        Outcome::Skipped(_) => "skipped",
    }
}

fn frame_text(f: &FrameResult) -> String {
    let mut line = format!("frame {:>6}  {:<4}", f.number, verdict_str(&f.verdict));
    if let Outcome::Skipped(reason) = &f.verdict {
        let _ = write!(line, " ({reason})");
    }
    if let Some(m) = &f.method {
        let _ = write!(line, "  {m}");
    }
    if let Some(n) = &f.number_dialled {
        let _ = write!(line, "  {n}");
    }
    if let Some((p, a)) = &f.rule {
        let _ = write!(line, "  rule {p} ({})", a.as_str());
    }
    if let Some(r) = f.reason {
        let _ = write!(line, "  ({r})");
    }
    if let Some((got, of)) = f.snapped {
        let _ = write!(line, "  [snapped: {got} of {of} bytes]");
    }
    line
}

fn frame_json(f: &FrameResult) -> String {
    let mut v = json!({ "frame": f.number, "verdict": verdict_str(&f.verdict) });
    if let Outcome::Skipped(reason) = &f.verdict {
        v["reason"] = json!(reason);
    }
    if let Some(m) = &f.method {
        v["method"] = json!(m);
    }
    if let Some(n) = &f.number_dialled {
        v["number"] = json!(n);
    }
    if let Some((p, a)) = &f.rule {
        v["rule"] = json!(p.to_string());
        v["action"] = json!(a.as_str());
    }
    if let Some(r) = f.reason {
        v["reason"] = json!(r);
    }
    if f.snapped.is_some() {
        v["snapped"] = json!(true);
    }
    v.to_string()
}

fn summary_text(s: &Summary) -> String {
    let mut out = format!(
        "summary: {} frames, {} dropped, {} passed",
        s.frames, s.dropped, s.passed
    );
    if s.skipped > 0 {
        let _ = write!(out, ", {} skipped", s.skipped);
    }
    out.push('\n');
    for (p, n) in &s.dropped_by_rule {
        let _ = writeln!(out, "  {p}: {n} dropped");
    }
    out
}

fn summary_json(s: &Summary) -> String {
    let v = json!({"summary": {
        "frames": s.frames,
        "dropped": s.dropped,
        "passed": s.passed,
        "skipped": s.skipped,
        "dropped_by_rule": s.dropped_by_rule,
    }});
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use guard_common::Action;

    use super::*;

    fn sample() -> Replay {
        let frames = vec![
            FrameResult {
                number: 1,
                verdict: Outcome::Ran(Verdict::Drop),
                method: Some("INVITE".into()),
                number_dialled: Some("+23276123456".into()),
                rule: Some(("+232".parse().unwrap(), Action::Block)),
                snapped: None,
                reason: None,
            },
            FrameResult {
                number: 2,
                verdict: Outcome::Ran(Verdict::Pass),
                method: None,
                number_dialled: None,
                rule: None,
                snapped: None,
                reason: None,
            },
            FrameResult {
                number: 123456,
                verdict: Outcome::Ran(Verdict::Drop),
                method: Some("INVITE".into()),
                number_dialled: Some("0900123".into()),
                rule: Some(("0900".parse().unwrap(), Action::Block)),
                snapped: Some((60, 1514)),
                reason: None,
            },
            FrameResult {
                number: 4,
                verdict: Outcome::Ran(Verdict::Pass),
                method: Some("OPTIONS".into()),
                number_dialled: Some("+4420".into()),
                rule: Some(("+44".parse().unwrap(), Action::Allow)),
                snapped: None,
                reason: None,
            },
            FrameResult {
                number: 5,
                verdict: Outcome::Ran(Verdict::Other(7)),
                method: None,
                number_dialled: None,
                rule: None,
                snapped: Some((0, 64)),
                reason: None,
            },
            FrameResult::skipped(
                6,
                "10 bytes, shorter than the 14-byte Ethernet header".into(),
            ),
        ];
        let summary = Summary::of(&frames);
        Replay { frames, summary }
    }

    #[test]
    fn text() {
        assert_eq!(
            render(&sample(), false),
            "frame      1  drop  INVITE  +23276123456  rule +232 (block)\n\
             frame      2  pass\n\
             frame 123456  drop  INVITE  0900123  rule 0900 (block)  [snapped: 60 of 1514 bytes]\n\
             frame      4  pass  OPTIONS  +4420  rule +44 (allow)\n\
             frame      5  other  [snapped: 0 of 64 bytes]\n\
             frame      6  skipped (10 bytes, shorter than the 14-byte Ethernet header)\n\
             summary: 6 frames, 2 dropped, 2 passed, 1 skipped\n  \
             +232: 1 dropped\n  \
             0900: 1 dropped\n"
        );
    }

    #[test]
    fn json_lines() {
        assert_eq!(
            render(&sample(), true),
            r#"{"action":"block","frame":1,"method":"INVITE","number":"+23276123456","rule":"+232","verdict":"drop"}
{"frame":2,"verdict":"pass"}
{"action":"block","frame":123456,"method":"INVITE","number":"0900123","rule":"0900","snapped":true,"verdict":"drop"}
{"action":"allow","frame":4,"method":"OPTIONS","number":"+4420","rule":"+44","verdict":"pass"}
{"frame":5,"snapped":true,"verdict":"other"}
{"frame":6,"reason":"10 bytes, shorter than the 14-byte Ethernet header","verdict":"skipped"}
{"summary":{"dropped":2,"dropped_by_rule":{"+232":1,"0900":1},"frames":6,"passed":2,"skipped":1}}
"#
        );
    }

    #[test]
    fn empty_capture() {
        let r = Replay {
            frames: Vec::new(),
            summary: Summary::default(),
        };
        assert_eq!(
            render(&r, false),
            "summary: 0 frames, 0 dropped, 0 passed\n"
        );
        assert_eq!(
            render(&r, true),
            "{\"summary\":{\"dropped\":0,\"dropped_by_rule\":{},\"frames\":0,\"passed\":0,\"skipped\":0}}\n"
        );
    }
}
