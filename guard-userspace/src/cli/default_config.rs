//! `sipguard default-config`: prints the built-in default config.

use anyhow::Result;

pub fn run() -> Result<()> {
    print!("{}", crate::config::EMBEDDED);
    Ok(())
}
