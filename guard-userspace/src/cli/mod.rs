//! The command line: one file per verb. The top layer: verbs read the [`report`](crate::report)
//! and render it, edit through the [`kernel`](crate::kernel) and [`config`](crate::config)
//! layers, and `run` starts the [`daemon`](crate::daemon). Rendering is separate from reading,
//! so every table and JSON form is tested without root.

pub mod check_config;
pub mod classify;
pub mod config_page;
pub mod customers;
pub mod default_config;
pub mod detach;
pub mod docs;
pub mod events;
pub mod explain;
pub mod fleet;
pub mod prepare;
pub mod quarantine;
pub mod replay;
pub mod rules;
pub mod run;
pub mod stats;
pub mod status;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use guard_common::Action;

use crate::{
    config::state::{self, StateDir},
    kernel::{
        pins::{self, PinRoot},
        privilege, sys,
    },
};

/// Where the pinned state and the state directory are.
pub struct Ctx {
    pub pins: PinRoot,
    pub state: StateDir,
}

#[derive(Parser)]
#[command(
    name = "sipguard",
    version,
    about = "XDP filter against SIP toll fraud",
    long_about = "XDP filter against SIP toll fraud. `sipguard run` attaches an XDP program that \
        parses SIP on the router's interfaces and drops or rejects INVITEs to barred destinations, \
        per customer, with rate limits and quarantines; the other verbs show and edit what it \
        enforces. The filter stays attached and enforcing when the daemon stops (fail_mode = \
        keep, the default): `systemctl stop sipguard` does not open the gate, `sipguard detach` \
        does. The config file is described in sipguard.toml(5)."
)]
pub struct Cli {
    /// Where the pinned program, links and maps live (one directory per interface).
    #[arg(long, global = true, env = "SIPGUARD_PIN_ROOT", default_value = pins::DEFAULT_ROOT)]
    pub pin_root: PathBuf,
    /// Runtime rule edits, the daemon record and the lock.
    #[arg(long, global = true, env = "SIPGUARD_STATE_DIR", default_value = state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand)]
pub enum Verb {
    /// Load, attach and pin the filter, apply the config, and keep it applied.
    ///
    /// Stopping the daemon (SIGTERM, systemctl stop sipguard, a crash) leaves the filter
    /// attached and enforcing the last rules it applied: with the default fail_mode = keep a
    /// stopped daemon never opens the gate. `sipguard detach --iface IF` removes the filter;
    /// fail_mode = detach in the config makes stopping remove it. SIGHUP or a change of the
    /// config file reloads it: all of the new config, or none of it when it is invalid.
    /// Under systemd (Type=notify) it reports ready once every interface is attached and the
    /// config applied. It needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_NET_RAW (root, or
    /// these as ambient capabilities), and names any that is missing.
    Run(run::RunArgs),
    /// List or edit the live rules (effective at once; kept across reloads and restarts).
    Rules {
        #[command(subcommand)]
        verb: rules::RulesVerb,
    },
    /// List or edit the customers (edits are live at once, kept across reloads and restarts).
    Customers {
        #[command(subcommand)]
        verb: customers::CustomersVerb,
    },
    /// The policies of the last commit (the config's [[policy]] tables).
    Policies {
        #[command(subcommand)]
        verb: customers::PoliciesVerb,
    },
    /// Validate a config file without root and without a kernel: the errors `run` would give,
    /// or a summary of what it holds. Exit codes: 0 valid, 1 invalid, 2 unreadable.
    CheckConfig {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// As root, before a daemon that runs as USER starts (the systemd unit does it): mount
    /// bpffs if needed, give USER the pin root and the state directory.
    Prepare {
        /// The daemon's user (the package's is `sipguard`).
        #[arg(long)]
        user: String,
    },
    /// The fleet: the rule document in etcd that every router applies (status, get, push).
    Fleet {
        /// The fleet file: etcd endpoints, key prefix, TLS, user.
        #[arg(long, default_value = crate::config::fleet::DEFAULT_PATH)]
        fleet: PathBuf,
        #[command(subcommand)]
        verb: fleet::FleetVerb,
    },
    /// Write the manual pages (sipguard.1, one per verb, sipguard.toml.5) into DIR.
    Man { dir: PathBuf },
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Quarantined customers and sources: list, add, release (live at once).
    Quarantine {
        #[command(subcommand)]
        verb: quarantine::QuarantineVerb,
    },
    /// Per-rule and global counters, sorted by drops.
    Stats(stats::StatsArgs),
    /// Drop events of the running daemon (the recent ones; --follow keeps streaming).
    Events {
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Interfaces, XDP mode, program id, rule count, mode, config, daemon.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove the filter from an interface.
    Detach {
        #[arg(long)]
        iface: String,
        /// Keep the maps (rules and counters) pinned for a later `run`.
        #[arg(long)]
        keep_maps: bool,
    },
    /// Run a pcap/pcapng capture through a private instance loaded with a config file.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        capture: PathBuf,
    },
    /// Which customer, policy and rule decide an INVITE to URI from a source, and the verdict
    /// (from the XDP program itself, in a private test run of the config).
    Explain {
        /// The config (default: /etc/sipguard/sipguard.toml, else the built-in default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The INVITE's source address (IPv4 or IPv6).
        #[arg(long)]
        src: std::net::IpAddr,
        /// The outer VLAN it arrives on (0: untagged).
        #[arg(long, default_value_t = 0)]
        vlan: u16,
        #[arg(long)]
        json: bool,
        /// The Request-URI, e.g. sip:+23276123456@gw.example.net or tel:+23276123456.
        uri: String,
    },
    /// Print the built-in default config (a starting point for /etc/sipguard/sipguard.toml).
    DefaultConfig,
    /// Show how a SIP request line is parsed and normalised (no kernel needed).
    Classify {
        /// The request line, e.g. "INVITE sip:0023276123456@pbx SIP/2.0".
        line: String,
        /// International dialling prefixes (default: 00 011).
        #[arg(long = "intl-prefix")]
        intl_prefixes: Vec<String>,
    },
}

impl Verb {
    /// The capabilities the verb needs (none: it works without root, no kernel, no pins).
    /// `run` checks its own, after the arguments.
    fn needs(&self) -> &'static [privilege::Need] {
        match self {
            Verb::Classify { .. }
            | Verb::DefaultConfig
            | Verb::CheckConfig { .. }
            | Verb::Man { .. }
            | Verb::Completions { .. }
            | Verb::Prepare { .. }
            | Verb::Fleet { .. }
            | Verb::Run(_) => &[],
            Verb::Detach { .. } => privilege::DETACH,
            _ => privilege::MAPS,
        }
    }
}

/// `--action block|allow|monitor`.
fn action_arg(s: &str) -> Result<Action, String> {
    s.parse::<Action>().map_err(|e| e.to_string())
}

/// Runs the verb of `cli`.
pub fn dispatch(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        pins: PinRoot::new(cli.pin_root),
        state: StateDir::new(cli.state_dir),
    };
    privilege::check("this verb", cli.verb.needs()).map_err(anyhow::Error::msg)?;
    // Not for the verbs with network sockets: a peer that closes its end (etcd refusing a TLS
    // client) would kill them silently through a write on the socket.
    if !matches!(cli.verb, Verb::Run(_) | Verb::Fleet { .. }) {
        sys::default_sigpipe();
    }
    match cli.verb {
        Verb::Run(args) => run::run(ctx, args),
        Verb::Rules { verb } => rules::run(&ctx, verb),
        Verb::Quarantine { verb } => quarantine::run(&ctx, verb),
        Verb::Customers { verb } => customers::customers(&ctx, verb),
        Verb::Policies { verb } => customers::policies(&ctx, verb),
        Verb::Stats(args) => stats::run(&ctx, args),
        Verb::Status { json } => status::run(&ctx, json),
        Verb::Events { follow, json } => events::run(&ctx, follow, json),
        Verb::Detach { iface, keep_maps } => detach::run(&ctx, &iface, keep_maps),
        Verb::Replay {
            config,
            json,
            capture,
        } => replay::run(&config, &capture, json),
        Verb::Classify {
            line,
            intl_prefixes,
        } => classify::run(&line, intl_prefixes),
        Verb::Explain {
            config,
            src,
            vlan,
            json,
            uri,
        } => explain::run(config.as_deref(), src, vlan, &uri, json),
        Verb::DefaultConfig => default_config::run(),
        Verb::CheckConfig { file, json } => check_config::run(&file, json),
        Verb::Prepare { user } => prepare::run(&ctx, &user),
        Verb::Fleet { fleet, verb } => fleet::run(&fleet, verb),
        Verb::Man { dir } => docs::man(&dir),
        Verb::Completions { shell } => docs::completions(shell),
    }
}

/// `s`, cut to `n` characters with an ellipsis.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_arguments_name_the_problem() {
        let err = |args: &[&str]| {
            Cli::try_parse_from(args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err(&["sipguard", "rules", "add", "+232", "--action", "drop"]);
        assert!(
            e.contains("unknown action `drop` (expected block, allow, monitor or reject)"),
            "{e}"
        );
        let e = err(&["sipguard", "rules", "add", "+23a", "--action", "block"]);
        assert!(e.contains("`a` at position 4 is not a digit"), "{e}");
        let e = err(&["sipguard", "rules", "del", "+1x"]);
        assert!(e.contains("`x` at position 3 is not a digit"), "{e}");
        let e = err(&["sipguard", "stats", "--watch", "0"]);
        assert!(e.contains("0 is not in 1.."), "{e}");
        let e = err(&["sipguard", "stats", "--rule", "+232"]);
        assert!(e.contains("--sources"), "{e}");
    }

    #[test]
    fn truncation_keeps_short_strings_and_marks_cut_ones() {
        assert_eq!(truncate("Sierra Leone", 28), "Sierra Leone");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
