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
    /// With --fleet: only what is enforced until the first fleet document arrives.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Take the rules from etcd, as the fleet file says (default /etc/sipguard/fleet.toml):
    /// every revision of the fleet's document is validated and applied as a reload is, and
    /// the last one applied is enforced across restarts while etcd is unreachable.
    #[arg(long, num_args = 0..=1, default_missing_value = crate::config::fleet::DEFAULT_PATH)]
    pub fleet: Option<PathBuf>,
}

pub fn run(ctx: Ctx, args: RunArgs) -> Result<()> {
    let fleet = match &args.fleet {
        Some(p) => Some(
            crate::config::fleet::FleetConfig::load(p)
                .context("the fleet file is invalid; nothing was loaded")?,
        ),
        None => None,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(daemon::run(RunOptions {
            ifaces: args.ifaces,
            xdp_mode: args.xdp_mode,
            config: args.config,
            fleet,
            pins: ctx.pins,
            state: ctx.state,
        }))
}
