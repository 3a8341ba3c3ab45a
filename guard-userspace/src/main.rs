//! `sipguard`: the daemon (`run`) and the CLI verbs that work on its pinned state. Everything
//! is in the library; this only parses the command line and reports the error.

use std::process::ExitCode;

use clap::Parser as _;
use sipguard::cli::{Cli, dispatch};

fn main() -> ExitCode {
    let cli = Cli::parse();
    sipguard::logging::init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            sipguard::logging::print_error(&e);
            // `check-config` documents its codes: 1 invalid, 2 unreadable.
            match e.downcast_ref::<sipguard::cli::check_config::CheckFailed>() {
                Some(c) => ExitCode::from(c.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}
