//! `sipguard`: the daemon (`run`) and the CLI verbs that work on its pinned state.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use guard_common::{Domain, Parsed, parse_payload};
use sipguard::{
    Prefix, Settings,
    cli::{self, Ctx, Edit},
    daemon::{self, ModeChoice, RunOptions},
    pins::{self, PinRoot},
    rules::{RuleEntry, RuleSet, Source, parse_action},
    state::{self, StateDir},
};

#[derive(Parser)]
#[command(
    name = "sipguard",
    version,
    about = "XDP filter against SIP toll fraud"
)]
struct Cli {
    /// Where the pinned program, links and maps live (one directory per interface).
    #[arg(long, global = true, env = "SIPGUARD_PIN_ROOT", default_value = pins::DEFAULT_ROOT)]
    pin_root: PathBuf,
    /// Runtime rule edits, the daemon record and the lock.
    #[arg(long, global = true, env = "SIPGUARD_STATE_DIR", default_value = state::DEFAULT_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Load, attach and pin the filter, apply the config, and keep it applied.
    Run {
        /// Interface to guard (repeat for several).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: ModeChoice,
        /// Config file (default /etc/sipguard/sipguard.toml, else the built-in default rules).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List or edit the live rules (effective at once; kept across reloads and restarts).
    Rules {
        #[command(subcommand)]
        verb: RulesVerb,
    },
    /// Per-rule and global counters, sorted by drops.
    Stats {
        #[arg(long)]
        json: bool,
        /// Print again every SECS seconds.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
        /// Only the N rules with the most drops.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// Zero the counters after printing them.
        #[arg(long)]
        reset: bool,
        /// Show the sources (PBXs, customers) that hit the rules instead.
        #[arg(long)]
        sources: bool,
        /// With --sources: only this rule's sources.
        #[arg(long, value_name = "PREFIX", requires = "sources")]
        rule: Option<String>,
    },
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

#[derive(Subcommand)]
enum RulesVerb {
    /// The live rules.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a rule for PREFIX (`+232`, `0990`) or for a country (`--country SL`).
    Add {
        #[arg(required_unless_present = "country", conflicts_with = "country")]
        prefix: Option<String>,
        #[arg(long, value_name = "CC")]
        country: Option<String>,
        #[arg(long, value_parser = parse_action_arg)]
        action: guard_common::Action,
        #[arg(long)]
        comment: Option<String>,
        /// Replace a rule of the same prefix with another action.
        #[arg(long)]
        replace: bool,
    },
    /// Delete the rule for PREFIX.
    Del { prefix: String },
    /// Add every [[rule]] of FILE (config format), all or nothing.
    Import { file: PathBuf },
}

fn parse_action_arg(s: &str) -> Result<guard_common::Action, String> {
    parse_action(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        pins: PinRoot::new(cli.pin_root),
        state: StateDir::new(cli.state_dir),
    };
    let needs_root = !matches!(cli.verb, Verb::Classify { .. } | Verb::DefaultConfig);
    if needs_root && !sipguard::is_root() {
        anyhow::bail!(
            "this verb needs root (CAP_BPF and CAP_NET_ADMIN to open the pinned maps or load the program)"
        );
    }
    match cli.verb {
        Verb::Run {
            ifaces,
            xdp_mode,
            config,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(daemon::run(RunOptions {
                ifaces,
                xdp_mode,
                config,
                pins: ctx.pins,
                state: ctx.state,
            })),
        Verb::Rules { verb } => match verb {
            RulesVerb::List { json } => cli::rules_list(&ctx, json),
            RulesVerb::Add {
                prefix,
                country,
                action,
                comment,
                replace,
            } => {
                let rules = match (prefix, country) {
                    (_, Some(cc)) => cli::country_rules(&cc, action, comment)?,
                    (Some(p), None) => {
                        let prefix: Prefix = p.parse()?;
                        RuleSet::from([(
                            prefix,
                            RuleEntry {
                                action,
                                comment,
                                country: None,
                                source: Source::Runtime,
                            },
                        )])
                    }
                    (None, None) => anyhow::bail!("give a PREFIX or --country CC"),
                };
                println!("{}", cli::edit_rules(&ctx, Edit::Add { rules, replace })?);
                Ok(())
            }
            RulesVerb::Del { prefix } => {
                let prefix: Prefix = prefix.parse()?;
                println!("{}", cli::edit_rules(&ctx, Edit::Del(prefix))?);
                Ok(())
            }
            RulesVerb::Import { file } => {
                let rules = cli::import_rules(&file)?;
                println!(
                    "{}",
                    cli::edit_rules(
                        &ctx,
                        Edit::Add {
                            rules,
                            replace: false
                        }
                    )?
                );
                Ok(())
            }
        },
        Verb::Stats {
            json,
            watch,
            top,
            reset,
            sources,
            rule,
        } => {
            if sources {
                let rule = rule.map(|r| r.parse::<Prefix>()).transpose()?;
                cli::sources(&ctx, rule.as_ref(), top, json)
            } else {
                cli::stats(&ctx, json, top, watch, reset)
            }
        }
        Verb::Status { json } => cli::status(&ctx, json),
        Verb::Events { follow, json } => sipguard::events::follow(&ctx.state.dir, follow, json),
        Verb::Detach { iface, keep_maps } => cli::detach(&ctx, &iface, keep_maps),
        Verb::Replay {
            config,
            json,
            capture,
        } => sipguard::replay::run(&config, &capture, json).map(|_| ()),
        Verb::Classify {
            line,
            intl_prefixes,
        } => classify(&line, intl_prefixes),
        Verb::DefaultConfig => {
            print!("{}", sipguard::config::EMBEDDED);
            Ok(())
        }
    }
}

fn classify(line: &str, intl_prefixes: Vec<String>) -> Result<()> {
    let mut settings = Settings::default();
    if !intl_prefixes.is_empty() {
        settings.intl_prefixes = intl_prefixes;
    }
    let config = settings.to_config()?;
    let payload = format!("{line}\r\n");
    match parse_payload(payload.as_bytes()) {
        Parsed::NotInvite => println!("not an INVITE: passes"),
        Parsed::UnparsableUri => {
            println!("INVITE with an unparsable Request-URI: passes (counted)")
        }
        Parsed::NoNumber => println!("INVITE without a dialled number: passes"),
        Parsed::Number { number, complete } => {
            let (domain, n) = config.intl_prefixes.normalize(&number);
            let digits: String = (0..n.len as usize)
                .filter_map(|i| n.digit(i))
                .map(|d| char::from(b'0' + d))
                .collect();
            let shown = match domain {
                Domain::International => format!("+{digits}"),
                Domain::National => digits,
            };
            let kind = if domain == Domain::International {
                "international"
            } else {
                "national"
            };
            let note = if complete {
                ""
            } else {
                " (user part longer than the inspected window)"
            };
            println!("INVITE to {shown} ({kind}){note}");
        }
    }
    Ok(())
}
