//! `sipguard`: the daemon and CLI. The verbs that drive a live filter (run, rules, stats,
//! status, detach, replay) arrive with the daemon; `classify` shows what the filter makes of a
//! request line, using the same parser as the kernel.

use anyhow::Result;
use clap::{Parser, Subcommand};
use guard_common::{Domain, Parsed, parse_payload};
use sipguard::Settings;

#[derive(Parser)]
#[command(
    name = "sipguard",
    version,
    about = "XDP filter against SIP toll fraud"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Show how a SIP request line is parsed and normalised (no kernel needed).
    Classify {
        /// The request line, e.g. "INVITE sip:0023276123456@pbx SIP/2.0".
        line: String,
        /// International dialling prefixes (default: 00 011).
        #[arg(long = "intl-prefix")]
        intl_prefixes: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.verb {
        Verb::Classify {
            line,
            intl_prefixes,
        } => classify(&line, intl_prefixes),
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
