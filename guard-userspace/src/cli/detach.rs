//! `sipguard detach --iface IF [--keep-maps]`: removes the filter from an interface.

use anyhow::Result;

use super::Ctx;
use crate::kernel::pins::{self, LINK_PIN};

pub fn run(ctx: &Ctx, iface: &str, keep_maps: bool) -> Result<()> {
    let dir = ctx.pins.require_iface(iface)?;
    let _lock = ctx.state.lock()?;
    let link = dir.join(LINK_PIN);
    if link.exists() {
        pins::detach_link(&link)?;
        println!("{iface}: detached");
    } else {
        println!("{iface}: was not attached");
    }
    ctx.pins.remove(iface, keep_maps)?;
    ctx.state.set_iface_mode(iface, None)?;
    if keep_maps {
        println!(
            "{iface}: maps kept (rules and counters) under {}",
            dir.display()
        );
    }
    if let Ok(Some(d)) = ctx.state.running_daemon()
        && d.ifaces.iter().any(|i| i.name == iface)
    {
        eprintln!(
            "note: the daemon (pid {}) still runs for {iface}; it re-attaches when restarted",
            d.pid
        );
    }
    Ok(())
}
