//! Large rule sets, and a filter pinned under a private pin root without a daemon, for the
//! capacity benchmark and tests: the `sipguard` CLI edits its pins as it would a daemon's.
//!
//! Everything is removed on drop (pins, state directory), also when a test fails.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use guard_common::Action;
use sipguard::{
    Filter, Prefix, Settings,
    config::state::StateDir,
    kernel::pins::PinRoot,
    model::rules::{Origin, Rule, RuleSet},
};

use crate::{harness::sipguard_bin, packet::Pkt};

/// A small deterministic generator (xorshift), so every run uses the same rule set.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Where generated rules never go: numbers under it are free for probes.
pub const FREE: &str = "+33";

/// `n` operator-style rules: random 6- to 9-digit international prefixes (none under +33),
/// mostly `block`, every tenth `monitor`.
pub fn rule_set(n: usize) -> RuleSet {
    rule_set_seeded(n, 0x5eed_cafe_f00d_d00d)
}

/// Like [`rule_set`], from another seed (a different set of the same shape).
pub fn rule_set_seeded(n: usize, seed: u64) -> RuleSet {
    let mut rng = Rng(seed);
    let mut out = RuleSet::new();
    while out.len() < n {
        let len = 6 + (rng.next_u64() % 4) as usize;
        let mut p = String::from("+");
        for i in 0..len {
            let d = (rng.next_u64() % 10) as u8;
            p.push(char::from(b'0' + if i == 0 && d == 0 { 4 } else { d }));
        }
        if p.starts_with(FREE) {
            continue;
        }
        let action = if out.len() % 10 == 9 {
            Action::Monitor
        } else {
            Action::Block
        };
        out.insert(p.parse().expect("generated prefix"), entry(action));
    }
    out
}

/// A runtime rule.
pub fn entry(action: Action) -> Rule {
    Rule::new(action, Origin::Runtime)
}

/// An IPv4 frame with an INVITE to a number under `prefix` (`+3399` -> `sip:+339912345@...`).
pub fn invite_under(prefix: &Prefix) -> Vec<u8> {
    let uri = format!("sip:{prefix}12345@carrier.example.net");
    Pkt::v4(&crate::packet::invite(&uri)).build()
}

/// A filter loaded with its maps pinned under a private pin root (interface directory
/// `bench0`, no XDP attachment: the program is run with BPF_PROG_TEST_RUN) and a private state
/// directory, so the real CLI can edit it.
pub struct PinnedFilter {
    pub filter: Filter,
    pub pins: PinRoot,
    pub state: StateDir,
    pub settings: Settings,
    root: PathBuf,
    dir: PathBuf,
}

impl PinnedFilter {
    pub const IFACE: &str = "bench0";

    pub fn new(tag: &str, max_rules: u32) -> Self {
        let id = format!("sgc-{}-{tag}", std::process::id());
        let root = PathBuf::from("/sys/fs/bpf").join(&id);
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&root);
        let _ = fs::remove_dir_all(&dir);
        let pins = PinRoot::new(&root);
        let state = StateDir::new(dir.join("state"));
        let pin_dir = pins.prepare(Self::IFACE).expect("pin directory");
        let settings = Settings {
            max_rules,
            ..Settings::default()
        };
        let mut filter = Filter::load_pinned(&pin_dir, max_rules).expect("load pinned filter");
        filter
            .maps
            .commit(&settings, &RuleSet::new())
            .expect("commit the settings");
        Self {
            filter,
            pins,
            state,
            settings,
            root,
            dir,
        }
    }

    /// `sipguard --pin-root .. --state-dir .. ARGS`, ready to spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(sipguard_bin());
        c.arg("--pin-root")
            .arg(&self.pins.root)
            .arg("--state-dir")
            .arg(&self.state.dir)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs the CLI; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let o = self
            .command(args)
            .env("RUST_LOG", "info")
            .output()
            .expect("run sipguard");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

impl Drop for PinnedFilter {
    fn drop(&mut self) {
        if self.root.exists()
            && let Err(e) = fs::remove_dir_all(&self.root)
        {
            eprintln!("cleanup {}: {e}", self.root.display());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
