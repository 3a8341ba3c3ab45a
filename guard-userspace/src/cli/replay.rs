//! `sipguard replay --config FILE [--json] CAPTURE`.

use std::path::Path;

use anyhow::Result;

pub fn run(config: &Path, capture: &Path, json: bool) -> Result<()> {
    crate::replay::run(config, capture, json).map(|_| ())
}
