//! The crate's modules are layers and import only from the layers below them (see `lib.rs`):
//! no import circle can come back unnoticed. Reads the sources; no root, no kernel.

use std::{collections::BTreeMap, fs, path::Path};

/// Layer of each top-level module: a module may import from a lower number only.
const LAYERS: [(&str, u8); 9] = [
    ("model", 0),
    // Log output for the binary: imports nothing of the crate.
    ("logging", 0),
    ("config", 1),
    ("kernel", 1),
    ("report", 2),
    ("replay", 2),
    ("fleet", 2),
    ("daemon", 3),
    ("cli", 4),
];

/// Top-level modules named by `crate::` paths in `text`, including `use crate::{a::.., b}`.
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Names at the top level of the group: the first word after `{` or `,` at depth 0.
            let mut depth = 0;
            let mut word = String::new();
            let mut expect = true;
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expect = true,
                    c if expect && depth == 0 && (c.is_ascii_alphanumeric() || c == '_') => {
                        word.push(c)
                    }
                    _ if expect && !word.is_empty() => {
                        out.push(std::mem::take(&mut word));
                        expect = false;
                    }
                    _ => {}
                }
            }
            if !word.is_empty() {
                out.push(word);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_import_only_from_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank: BTreeMap<&str, u8> = LAYERS.into_iter().collect();
    let mut seen = 0;
    let mut wrong = Vec::new();
    for (layer, r) in LAYERS {
        let mut all = Vec::new();
        // A layer is a directory of modules, or one file.
        let file = src.join(format!("{layer}.rs"));
        if file.exists() {
            all.push(file);
        } else {
            files(&src.join(layer), &mut all);
        }
        assert!(!all.is_empty(), "no sources under src/{layer}");
        for f in all {
            let text = fs::read_to_string(&f).unwrap();
            for m in imports(&text) {
                seen += 1;
                if let Some(&d) = rank.get(m.as_str())
                    && m != layer
                    && d >= r
                {
                    wrong.push(format!("{} imports crate::{m}", f.display()));
                }
            }
        }
    }
    assert!(seen > 50, "the import scan found only {seen} imports");
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
    // Every top-level module of lib.rs has a layer.
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let m = line.trim_end_matches(';');
        assert!(rank.contains_key(m), "module {m} has no layer in this test");
    }
}

#[test]
fn the_import_scan_sees_groups_and_paths() {
    let text = "use crate::{\n    config::state::{self, X},\n    kernel::{maps::Maps, sys},\n    model,\n};\nfn f() { crate::report::x(); }";
    assert_eq!(imports(text), ["config", "kernel", "model", "report"]);
}
