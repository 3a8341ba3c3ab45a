//! `sipguard man DIR` and `sipguard completions SHELL`: the manual pages (one for `sipguard`,
//! one per verb and sub-verb) and the shell completions, generated from the clap definitions
//! (clap_mangen, clap_complete), so they never drift from the command line.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use super::{Cli, config_page};

/// Writes `sipguard.1`, `sipguard-VERB[-SUBVERB].1` and `sipguard.toml.5` into `dir` (created
/// if needed) and lists them.
pub fn man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
    let toml5 = dir.join("sipguard.toml.5");
    std::fs::write(&toml5, config_page::render())
        .with_context(|| format!("writing {}", toml5.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("sipguard") && (n.ends_with(".1") || n.ends_with(".5")))
        .collect();
    pages.sort();
    println!("{} manual page(s) in {}:", pages.len(), dir.display());
    for p in pages {
        println!("  {p}");
    }
    Ok(())
}

/// Prints the completion script for `shell`.
pub fn completions(shell: Shell) -> Result<()> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "sipguard",
        &mut std::io::stdout(),
    );
    Ok(())
}
