//! `cargo xtask <verb>`: one entry point for setting up, building, testing and linting sipguard.
//!
//! The alias lives in `.cargo/config.toml`. Every verb runs from the workspace root, whatever the
//! current directory.

mod bench;
mod build;
mod clippy;
mod demo;
mod fuzz;
mod package;
mod setup;
mod test;
mod util;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "sipguard build, test and setup tasks"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install whatever is missing: nightly rust-src, bpf-linker, test packages, bpffs mount.
    Setup,
    /// Setup, then build guard-userspace (and the embedded XDP object) in release mode.
    Build,
    /// Setup, build, then run every test once; the command CI runs.
    Test {
        /// Arguments forwarded to the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Setup, then run the sipguard-bench binary; `bench veth [ARGS]` runs the veth flood bench.
    Bench {
        /// `veth` and its arguments, or arguments forwarded to sipguard-bench (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Setup, build, then the Debian package (cargo-deb) in target/debian/, checked by lintian.
    Package,
    /// Setup, build, then real SIP calls through sipguard in namespaces, with a report.
    Demo,
    /// Clippy (warnings are errors) on the host crates, then a rustfmt check.
    Clippy,
    /// Run the cargo-fuzz targets in fuzz/ one after the other (nightly; installs cargo-fuzz).
    Fuzz {
        /// Seconds per target (an upper bound when --runs is given).
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Stop each target after this many executions (libFuzzer's -runs).
        #[arg(long)]
        runs: Option<u64>,
        /// Targets to run (default: all): uri_scanner, header_scanner, normalise, config, capture.
        targets: Vec<String>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().verb {
        Verb::Setup => setup::run(setup::Scope::Full).map(|()| ExitCode::SUCCESS),
        Verb::Build => build::run().map(|()| ExitCode::SUCCESS),
        Verb::Test { args } => test::run(&args),
        Verb::Bench { args } => bench::run(&args),
        Verb::Demo => demo::run(),
        Verb::Package => package::run().map(|()| ExitCode::SUCCESS),
        Verb::Clippy => clippy::run(),
        Verb::Fuzz {
            time,
            runs,
            targets,
        } => fuzz::run(fuzz::Limit { secs: time, runs }, &targets),
    };
    result.unwrap_or_else(|e| {
        // `{:#}` prints the whole context chain on one line, without a backtrace.
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
