//! The alerting rules in contrib/prometheus: valid for Prometheus (`promtool check rules`) and
//! firing when they should (`promtool test rules`, with series as sipguard exports them).
//! promtool comes with Debian's `prometheus` package, which `cargo xtask setup` installs.

use std::{path::Path, process::Command};

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool (Debian package `prometheus`; `cargo xtask setup` installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_fire_when_they_should() {
    let check = promtool(&["check", "rules", "alerts.yml"]);
    assert!(check.contains("SUCCESS: 3 rules found"), "{check}");
    let test = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn the_fleet_rules_are_valid_and_aggregate_across_routers() {
    let check = promtool(&["check", "rules", "fleet.yml"]);
    assert!(check.contains("SUCCESS: 11 rules found"), "{check}");
    let test = promtool(&["test", "rules", "fleet_test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}
