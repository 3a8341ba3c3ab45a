//! `cargo xtask fuzz [--time SECS] [--runs N] [TARGET...]`: runs the cargo-fuzz targets in `fuzz/` one
//! after the other and prints a table of executions, exec/s and crashes.
//!
//! - cargo-fuzz is installed (`cargo install cargo-fuzz --locked`) when missing; the targets are
//!   built and run with nightly (`rustup run nightly cargo fuzz ...`), address sanitizer and
//!   debug assertions (so arithmetic overflow is a crash too).
//! - Corpus policy: the committed seeds in `fuzz/corpus/TARGET/` are only read. libFuzzer writes
//!   the inputs it finds into its first corpus directory, which is a scratch directory,
//!   `target/fuzz-corpus/TARGET/`, kept between runs (later runs start from what earlier ones
//!   found) and never committed. Promote an input to the seeds by hand (`cargo +nightly fuzz
//!   cmin` helps) when it is worth keeping.
//! - Crashes go to `fuzz/artifacts/TARGET/` (ignored by git); the table names the file, and
//!   the verb fails. `cargo +nightly fuzz tmin TARGET FILE` minimises one.
//! - libFuzzer's output goes to `target/fuzz-logs/TARGET.log`; only its `INITED` and `DONE`
//!   lines (and the end of the log after a crash) are shown.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::util;

/// Every target, with the `-max_len` it runs with: a little over what the code under test looks
/// at (the scanners' windows), or a bound on what a realistic input needs (config, capture), so
/// that inputs and what is allocated for them stay bounded.
pub const TARGETS: [(&str, u32); 5] = [
    ("uri_scanner", 512),
    ("header_scanner", 2048),
    ("normalise", 256),
    ("config", 4096),
    ("capture", 16384),
];

/// The targets that need the host crate (guard-userspace, whose build compiles the XDP object and
/// the whole daemon): built only with the fuzz crate's `host` feature.
pub const HOST_TARGETS: [&str; 2] = ["config", "capture"];

/// One target's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub target: String,
    pub executions: Option<u64>,
    pub exec_per_sec: Option<u64>,
    /// The artifact libFuzzer wrote (a crash, leak, timeout or out-of-memory input).
    pub crash: Option<String>,
    /// libFuzzer's exit status was not success, even if no artifact was named.
    pub failed: bool,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.crash.is_none() && !self.failed
    }
}

/// How long each target runs: `secs` seconds, or `runs` executions if that comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub secs: u64,
    pub runs: Option<u64>,
}

/// `cargo xtask fuzz`.
pub fn run(limit: Limit, targets: &[String]) -> anyhow::Result<std::process::ExitCode> {
    let targets = select(targets)?;
    let outcomes = fuzz(&targets, limit)?;
    print_table(&outcomes);
    Ok(if outcomes.iter().all(Outcome::ok) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// The named targets (all when none is named), each with its `-max_len`.
pub fn select(names: &[String]) -> anyhow::Result<Vec<(&'static str, u32)>> {
    if names.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    names
        .iter()
        .map(|n| {
            TARGETS
                .iter()
                .find(|(t, _)| t == n)
                .copied()
                .with_context(|| {
                    let all: Vec<_> = TARGETS.iter().map(|(t, _)| *t).collect();
                    format!("unknown fuzz target `{n}` (targets: {})", all.join(", "))
                })
        })
        .collect()
}

/// Installs cargo-fuzz if needed, builds the targets, then runs each within `limit`.
pub fn fuzz(targets: &[(&str, u32)], limit: Limit) -> anyhow::Result<Vec<Outcome>> {
    let secs = limit.secs;
    ensure_cargo_fuzz()?;
    let root = util::workspace_root();
    let started = Instant::now();
    // One build for all targets (guard-userspace's build script builds the XDP object once);
    // without a host target, the fuzz crate is built without guard-userspace, in a minute.
    let host = targets.iter().any(|(t, _)| HOST_TARGETS.contains(t));
    let features: &[&str] = if host {
        &[]
    } else {
        &["--no-default-features"]
    };
    util::run(
        cargo_fuzz()
            .args(["build", "--debug-assertions"])
            .args(features),
    )?;
    println!(
        "fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut outcomes = Vec::new();
    for &(target, max_len) in targets {
        let scratch = root.join("target/fuzz-corpus").join(target);
        let seeds = root.join("fuzz/corpus").join(target);
        let logs = root.join("target/fuzz-logs");
        fs::create_dir_all(&scratch)
            .and_then(|()| fs::create_dir_all(&logs))
            .with_context(|| format!("creating {}", scratch.display()))?;
        let log = logs.join(format!("{target}.log"));
        println!("fuzz: {target} for {secs} s (log: {})", log.display());
        let mut cmd = cargo_fuzz();
        cmd.args(["run", "--debug-assertions"])
            .args(features)
            .arg(target)
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg(format!("-max_len={max_len}"))
            .arg("-print_final_stats=1");
        if let Some(runs) = limit.runs {
            cmd.arg(format!("-runs={runs}"));
        }
        outcomes.push(run_target(target, &mut cmd, &log)?);
    }
    Ok(outcomes)
}

/// `rustup run nightly cargo fuzz`, from the workspace root (cargo-fuzz finds `fuzz/` there).
fn cargo_fuzz() -> Command {
    let mut cmd = util::tool("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(util::workspace_root());
    cmd
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if util::stdout_of(util::tool("cargo-fuzz").arg("--version")).is_some() {
        return Ok(());
    }
    println!("installing: cargo-fuzz");
    util::run(util::tool("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// Runs one target, libFuzzer's output (stderr, and cargo's) into `log`, and reads the result.
fn run_target(target: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Outcome> {
    let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{}`", util::describe(cmd)))?;
    let stderr = child.stderr.take().context("child stderr was not piped")?;
    let mut stats = Stats::default();
    for line in BufReader::new(stderr).split(b'\n') {
        let line =
            String::from_utf8_lossy(&line.context("reading libFuzzer's output")?).into_owned();
        writeln!(file, "{line}").with_context(|| format!("writing {}", log.display()))?;
        if matches!(status_word(&line), Some("INITED" | "DONE")) {
            println!("  {line}");
        }
        stats.add_line(&line);
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let outcome = Outcome {
        target: target.to_string(),
        executions: stats.executions,
        exec_per_sec: stats.exec_per_sec,
        crash: stats.artifact,
        failed: !status.success(),
    };
    if !outcome.ok() {
        eprintln!(
            "fuzz: {target} failed ({status}); the end of {}:",
            log.display()
        );
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("  {line}");
        }
    }
    Ok(outcome)
}

/// What libFuzzer's output says about a run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    artifact: Option<String>,
}

impl Stats {
    /// Reads the final stats (`-print_final_stats=1`: `stat::number_of_executed_units: N`,
    /// `stat::average_exec_per_sec: N`), or failing those the `#N DONE cov: ... exec/s: N`
    /// line, and the `Test unit written to PATH` line of a crash.
    fn add_line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = v.trim().parse().ok().or(self.executions);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = v.trim().parse().ok().or(self.exec_per_sec);
        } else if status_word(line) == Some("DONE") {
            if self.executions.is_none() {
                self.executions = line
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.strip_prefix('#')?.parse().ok());
            }
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w == "exec/s:" && self.exec_per_sec.is_none() {
                    self.exec_per_sec = words.next().and_then(|n| n.parse().ok());
                }
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            self.artifact = Some(path.trim().to_string());
        }
    }
}

/// The word after `#N` in libFuzzer's status lines (`#4096\tpulse  cov: ...`): `INITED`,
/// `NEW`, `pulse`, `DONE`, ...
fn status_word(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    words.next()?.strip_prefix('#')?;
    words.next()
}

fn print_table(outcomes: &[Outcome]) {
    let num = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    println!();
    println!(
        "{:<16} {:>14} {:>10}  crashes",
        "target", "executions", "exec/s"
    );
    for o in outcomes {
        let crash = match (&o.crash, o.failed) {
            (Some(path), _) => path.clone(),
            (None, true) => "failed (see its log)".to_string(),
            (None, false) => "0".to_string(),
        };
        println!(
            "{:<16} {:>14} {:>10}  {crash}",
            o.target,
            num(o.executions),
            num(o.exec_per_sec)
        );
    }
}

/// The smoke `cargo xtask test` runs: every target for `secs` seconds; `Ok(summary line)` or
/// an error naming the targets that crashed.
/// The scanner and normalisation targets run for `secs` seconds each. The config and capture
/// targets are left to `cargo xtask fuzz`: their build (the whole daemon under the sanitizer)
/// takes longer than CI's budget; their seed corpora run in guard-userspace's unit tests.
pub fn smoke(secs: u64) -> anyhow::Result<String> {
    let started = Instant::now();
    let targets: Vec<(&str, u32)> = TARGETS
        .iter()
        .copied()
        .filter(|(t, _)| !HOST_TARGETS.contains(t))
        .collect();
    let outcomes = fuzz(&targets, Limit { secs, runs: None })?;
    print_table(&outcomes);
    let executions: u64 = outcomes.iter().filter_map(|o| o.executions).sum();
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.target.as_str())
        .collect();
    let summary = format!(
        "fuzz smoke: {} targets, {executions} executions, {} crashed, {:.0} s",
        outcomes.len(),
        bad.len(),
        started.elapsed().as_secs_f64()
    );
    if !bad.is_empty() {
        bail!("{summary}: {}", bad.join(", "));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_stats_and_artifacts() {
        let mut s = Stats::default();
        for line in [
            "INFO: Seed: 1234",
            "#2\tINITED cov: 120 ft: 130 corp: 10/2Kb exec/s: 0 rss: 40Mb",
            "#1048576\tpulse  cov: 300 ft: 900 corp: 80/9Kb lim: 512 exec/s: 349525 rss: 60Mb",
            "#10534219\tDONE   cov: 301 ft: 950 corp: 82/9Kb lim: 512 exec/s: 175570 rss: 61Mb",
            "Done 10534219 runs in 61 second(s)",
            "stat::number_of_executed_units: 10534220",
            "stat::average_exec_per_sec:     175570",
            "stat::new_units_added:          72",
        ] {
            s.add_line(line);
        }
        assert_eq!(s.executions, Some(10_534_220));
        assert_eq!(s.exec_per_sec, Some(175_570));
        assert_eq!(s.artifact, None);

        let mut s = Stats::default();
        s.add_line("#77\tDONE   cov: 1 ft: 2 corp: 1/1b lim: 4 exec/s: 38 rss: 30Mb");
        assert_eq!((s.executions, s.exec_per_sec), (Some(77), Some(38)));
        s.add_line(
            "artifact_prefix='/w/fuzz/artifacts/capture/'; Test unit written to /w/fuzz/artifacts/capture/crash-da39a3ee",
        );
        assert_eq!(
            s.artifact.as_deref(),
            Some("/w/fuzz/artifacts/capture/crash-da39a3ee")
        );
    }

    #[test]
    fn selects_targets_by_name() {
        assert_eq!(select(&[]).unwrap().len(), TARGETS.len());
        let one = select(&["capture".to_string()]).unwrap();
        assert_eq!(one, [("capture", 16384)]);
        let e = select(&["nope".to_string()]).unwrap_err().to_string();
        assert!(e.contains("unknown fuzz target `nope`"), "{e}");
        assert!(e.contains("uri_scanner"), "{e}");
    }
}
