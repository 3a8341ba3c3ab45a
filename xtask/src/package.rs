//! `cargo xtask package`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in guard-userspace/Cargo.toml. Before it runs, the release binary
//! writes the manual pages and the completions it is built with into
//! `target/release/package/` (the assets cargo-deb picks up); after it, lintian checks the
//! archive and its tags are printed (errors fail the build).

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::{build, setup, util};

/// The completion scripts: shell, then the file name each shell looks for.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "sipguard"),
    ("zsh", "_sipguard"),
    ("fish", "sipguard.fish"),
];

pub fn run() -> anyhow::Result<()> {
    setup::run(setup::Scope::Full)?;
    build::build_userspace()?;
    let deb = build_deb()?;
    println!("package: {}", deb.display());
    Ok(())
}

/// Generates the assets and runs cargo-deb (no new build); the path of the .deb.
pub fn build_deb() -> anyhow::Result<PathBuf> {
    let root = util::workspace_root();
    let bin = root.join("target/release/sipguard");
    let out = root.join("target/release/package");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let comp = out.join("completions");
    std::fs::create_dir_all(&comp).with_context(|| format!("creating {}", comp.display()))?;
    util::run(
        std::process::Command::new(&bin)
            .arg("man")
            .arg(out.join("man")),
    )?;
    // Debian ships manual pages gzipped (-n: no name or time inside, so builds are identical).
    util::run(
        util::tool("gzip").args(["-9nf", "--"]).args(
            std::fs::read_dir(out.join("man"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "1" || x == "5")),
        ),
    )?;
    for (shell, name) in COMPLETIONS {
        let text = util::stdout_of(std::process::Command::new(&bin).args(["completions", shell]))
            .with_context(|| format!("sipguard completions {shell}"))?;
        std::fs::write(comp.join(name), text + "\n")
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    let debs = root.join("target/debian");
    let printed = util::stdout_of(
        util::cargo()
            .args(["deb", "-p", "guard-userspace", "--no-build", "--output"])
            .arg(&debs),
    )
    .context("cargo deb failed (is cargo-deb installed? `cargo xtask setup` installs it)")?;
    let deb = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    if !deb.is_file() {
        bail!("cargo deb printed no package path: {printed}");
    }
    lintian(&deb)?;
    Ok(deb)
}

/// Runs lintian on `deb` and prints its tags; an error tag fails.
fn lintian(deb: &std::path::Path) -> anyhow::Result<()> {
    let out = util::tool("lintian")
        .args([
            "--no-tag-display-limit",
            "--suppress-tags",
            "no-manual-page",
        ])
        .arg(deb)
        .output()
        .context("starting lintian")?;
    let tags = String::from_utf8_lossy(&out.stdout);
    let errors = tags.lines().filter(|l| l.starts_with("E:")).count();
    let warnings = tags.lines().filter(|l| l.starts_with("W:")).count();
    for l in tags.lines() {
        println!("lintian: {l}");
    }
    println!("lintian: {errors} error(s), {warnings} warning(s)");
    if errors > 0 {
        bail!("lintian reports {errors} error(s) on {}", deb.display());
    }
    Ok(())
}
