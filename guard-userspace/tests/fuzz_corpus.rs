//! The seed corpora of the config and capture fuzz targets (`fuzz/corpus/`), run through the same
//! checks as the targets (`fuzz/checks/`). The CI fuzz smoke runs the scanner targets only: the
//! host targets' build (the whole daemon under the sanitizer) is left to `cargo xtask fuzz`.

use std::{fs, path::Path};

#[path = "../../fuzz/checks/config.rs"]
mod config;

#[path = "../../fuzz/checks/capture.rs"]
mod capture;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "{}: {} seeds", dir.display(), out.len());
    out
}

#[test]
fn the_config_corpus_passes_the_config_target_checks() {
    for (name, data) in corpus("config") {
        let r = std::panic::catch_unwind(|| config::check(&data));
        assert!(r.is_ok(), "{name}");
    }
}

#[test]
fn the_capture_corpus_passes_the_capture_target_checks() {
    for (name, data) in corpus("capture") {
        let r = std::panic::catch_unwind(|| capture::check(&data));
        assert!(r.is_ok(), "{name}");
    }
}
