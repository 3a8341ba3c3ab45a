//! `sipguard run --iface IF [--iface IF2 ...] [--xdp-mode auto|native|generic] [--config FILE]`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use super::Ctx;
use crate::daemon::{self, ModeChoice, RunOptions};

#[derive(Args)]
pub struct RunArgs {
    /// Interface to guard (repeat for several).
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: ModeChoice,
    /// Config file (default /etc/sipguard/sipguard.toml, else the built-in default rules).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(ctx: Ctx, args: RunArgs) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(daemon::run(RunOptions {
            ifaces: args.ifaces,
            xdp_mode: args.xdp_mode,
            config: args.config,
            pins: ctx.pins,
            state: ctx.state,
        }))
}
