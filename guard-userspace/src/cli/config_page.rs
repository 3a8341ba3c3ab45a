//! `sipguard.toml(5)`: the config file's manual page, from one table of every section and key
//! (rendered with `roff`, as clap_mangen renders the verbs' pages). A unit test holds the table
//! to the parser: every key the parser accepts is documented, and nothing else is.

use roff::{Roff, bold, italic, roman};

use crate::config::file::{DEFAULT_METRICS_LISTEN, DEFAULT_TOP_CUSTOMERS, DEFAULT_TOP_RULES};

/// One key of a section.
pub struct Key {
    pub name: &'static str,
    /// The value's form and its default.
    pub value: &'static str,
    pub text: &'static str,
}

/// One section (`[settings]`, `[[rule]]`, …) and its keys.
pub struct Section {
    pub header: &'static str,
    pub text: &'static str,
    pub keys: &'static [Key],
}

const RULE_KEYS: &[Key] = &[
    Key {
        name: "prefix",
        value: "string, e.g. \"+232\"",
        text: "The E.164 destination prefix the rule decides (\"+\" alone: every international number). Give prefix or country, not both.",
    },
    Key {
        name: "country",
        value: "ISO 3166 code, e.g. \"SL\"",
        text: "Every calling prefix of the country (the rule is repeated for each). NANP countries expand to their area codes, never to +1.",
    },
    Key {
        name: "action",
        value: "block | reject | allow | monitor",
        text: "block drops the INVITE; reject drops it and answers the caller with a SIP response; allow passes it; monitor passes it and counts it as a would-drop.",
    },
    Key {
        name: "comment",
        value: "string",
        text: "Shown by sipguard rules list, in events and in metrics labels.",
    },
    Key {
        name: "reject_code",
        value: "400 to 699 (default [settings] reject_code, 403)",
        text: "The status code of the response of a reject rule.",
    },
    Key {
        name: "reject_reason",
        value: "string (default \"Forbidden\")",
        text: "The reason phrase of that response.",
    },
    Key {
        name: "limit",
        value: "\"N/sec|min|hour|day\", e.g. \"10/min\"",
        text: "At most N new calls per customer (or per source address outside any customer) through this rule; retransmissions never count.",
    },
    Key {
        name: "burst",
        value: "integer (default: the rate's N)",
        text: "How many calls of the limit may come at once.",
    },
    Key {
        name: "repeat_limit",
        value: "\"N/DURATION\", e.g. \"3/10min\"",
        text: "At most N calls to one full number from one customer within the duration.",
    },
    Key {
        name: "over_limit",
        value: "block | reject | monitor (default block)",
        text: "What happens to a call over limit or repeat_limit.",
    },
];

/// Every section of the file, in the order the page gives them.
pub const SECTIONS: &[Section] = &[
    Section {
        header: "[settings]",
        text: "How the filter reads SIP and what it does when it cannot.",
        keys: &[
            Key {
                name: "sip_ports",
                value: "list of UDP/TCP ports (default [5060])",
                text: "The destination ports whose traffic is parsed as SIP; all other traffic passes untouched.",
            },
            Key {
                name: "international_prefixes",
                value: "list of digit strings (default [\"00\", \"011\"])",
                text: "The dialling prefixes that make a number international (00232… becomes +232…).",
            },
            Key {
                name: "mode",
                value: "enforce | monitor (default enforce)",
                text: "monitor turns every drop into a counted would-drop: nothing is dropped.",
            },
            Key {
                name: "fail_mode",
                value: "keep | detach (default keep)",
                text: "What stopping the daemon does: keep leaves the filter attached and enforcing (systemctl stop, a crash or an upgrade never open the gate); detach removes it.",
            },
            Key {
                name: "kernel_debug_log",
                value: "bool (default false)",
                text: "The XDP program's own log lines (aya-log) in the daemon's log; for debugging only.",
            },
            Key {
                name: "track_calls",
                value: "bool (default true)",
                text: "Remember Call-IDs, so that retransmissions and re-INVITEs of a call are decided and counted once.",
            },
            Key {
                name: "event_rate",
                value: "0 to 1000000 per second (default 50)",
                text: "Drop events the kernel sends per second at most (0: none); counters count every drop whatever this is.",
            },
            Key {
                name: "event_burst",
                value: "0 to 1000000 (default 100)",
                text: "Drop events that may come at once.",
            },
            Key {
                name: "max_rules",
                value: "1 to 4000000 (default 262144)",
                text: "Rule capacity, applied when the maps are created (a change needs sipguard detach and a new start).",
            },
            Key {
                name: "limit_buckets",
                value: "1024 to 16777216 (default 65536)",
                text: "Rate-limit state entries (customers × limited rules, plus numbers under repeat_limit).",
            },
            Key {
                name: "incomplete_action",
                value: "block | allow | monitor (default monitor)",
                text: "What decides a number the filter cannot read to its end (an over-long URI or parameter list).",
            },
            Key {
                name: "tiny_first_fragment",
                value: "drop | pass (default drop)",
                text: "A first IP fragment too short to hold a request line and its number; no SIP stack sends one.",
            },
            Key {
                name: "reject_code",
                value: "400 to 699 (default 403)",
                text: "The response of reject rules that give none of their own.",
            },
            Key {
                name: "reject_reason",
                value: "string (default \"Forbidden\")",
                text: "Its reason phrase.",
            },
        ],
    },
    Section {
        header: "[[rule]]",
        text: "A global rule: it decides for every caller, unless the caller's customer has a policy whose rules decide (the longest matching prefix wins; a tie goes to the policy).",
        keys: RULE_KEYS,
    },
    Section {
        header: "[[policy]]",
        text: "A named set of rules for customers.",
        keys: &[
            Key {
                name: "name",
                value: "string",
                text: "Customers refer to it by this name.",
            },
            Key {
                name: "inherit",
                value: "bool (default true)",
                text: "Whether the global rules still decide the prefixes the policy does not cover; false: only the policy's own rules.",
            },
            Key {
                name: "comment",
                value: "string",
                text: "Free text.",
            },
            Key {
                name: "rule",
                value: "[[policy.rule]] tables",
                text: "The policy's rules: the keys of [[rule]].",
            },
        ],
    },
    Section {
        header: "[[customer]]",
        text: "A customer, recognised by the source addresses (and VLANs) of its PBXs.",
        keys: &[
            Key {
                name: "name",
                value: "string",
                text: "Unique; used by sipguard customers, events and metrics.",
            },
            Key {
                name: "sources",
                value: "list of CIDRs, IPv4 or IPv6",
                text: "The source addresses of its INVITEs. Two customers cannot share an address on one VLAN.",
            },
            Key {
                name: "vlans",
                value: "list of VLAN ids (default: any)",
                text: "The outer VLANs its traffic arrives on, for carriers whose customers overlap in address space.",
            },
            Key {
                name: "policy",
                value: "string",
                text: "The [[policy]] that decides for it (none: the global rules).",
            },
        ],
    },
    Section {
        header: "[quarantine]",
        text: "Stops, in the kernel, a customer (or source) whose PBX calls like a hacked one, for a while. At least one trigger is needed.",
        keys: &[
            Key {
                name: "calls",
                value: "integer",
                text: "Trigger: more than this many calls in scope within the window.",
            },
            Key {
                name: "over_limit",
                value: "integer",
                text: "Trigger: more than this many calls over a limit within the window.",
            },
            Key {
                name: "window",
                value: "duration, e.g. \"10min\" (default 10min)",
                text: "The window of the triggers.",
            },
            Key {
                name: "duration",
                value: "duration (default 1h)",
                text: "How long a quarantine lasts; sipguard quarantine release ends it early.",
            },
            Key {
                name: "scope",
                value: "international | all (default international)",
                text: "Which calls count and which are stopped.",
            },
            Key {
                name: "action",
                value: "reject | block (default reject)",
                text: "What a quarantined caller's calls get.",
            },
            Key {
                name: "reject_code",
                value: "400 to 699 (default 403)",
                text: "The response of action = reject.",
            },
            Key {
                name: "reject_reason",
                value: "string (default \"Forbidden\")",
                text: "Its reason phrase.",
            },
        ],
    },
    Section {
        header: "[events]",
        text: "Where drop events go, besides sipguard events.",
        keys: &[
            Key {
                name: "file",
                value: "path",
                text: "A JSON-lines file, appended to (under the systemd unit: below /var/log/sipguard, the one writable log directory).",
            },
            Key {
                name: "stdout",
                value: "bool (default false)",
                text: "JSON lines on standard output: the journal, under systemd.",
            },
        ],
    },
    Section {
        header: "[metrics]",
        text: "The Prometheus endpoint /metrics.",
        keys: &[
            Key {
                name: "listen",
                value: "\"IP:PORT\" | \"off\"",
                text: "The address to serve on (the default is below).",
            },
            Key {
                name: "top_rules",
                value: "0 to 100000",
                text: "Per-rule series for this many of the busiest rules per interface.",
            },
            Key {
                name: "top_customers",
                value: "0 to 100000",
                text: "Series of their own for this many customers with the most stopped calls.",
            },
        ],
    },
];

/// The page, in roff.
pub fn render() -> String {
    let mut page = Roff::new();
    page.control(
        "TH",
        [
            "SIPGUARD.TOML",
            "5",
            "",
            env!("CARGO_PKG_VERSION"),
            "sipguard",
        ],
    )
    .control("SH", ["NAME"])
    .text([roman("sipguard.toml - the sipguard configuration file")])
    .control("SH", ["SYNOPSIS"])
    .text([italic("/etc/sipguard/sipguard.toml")])
    .control("SH", ["DESCRIPTION"])
    .text([roman(
        "The TOML file that sipguard run reads: the rules, the per-customer policies, the \
             customers, the rate limits and the quarantine, and how the filter reads SIP. The \
             whole document is one model; a reload (SIGHUP, systemctl reload sipguard, or a \
             change of the file) applies all of it at once or, if any of it is invalid, none \
             of it: the previous rules stay in force and the error names the file and line.",
    )])
    .control("PP", [] as [&str; 0])
    .text([
        roman("Validate a file before deploying it with "),
        bold("sipguard check-config FILE"),
        roman(" (no root, no kernel): exit 0 valid, 1 invalid, 2 unreadable. "),
        bold("sipguard default-config"),
        roman(" prints the shipped default, a commented starting point."),
    ])
    .control("PP", [] as [&str; 0])
    .text([roman(
        "Rules added at run time (sipguard rules add, sipguard customers add) are kept \
             apart from this file, in /var/lib/sipguard/runtime.toml, and laid over it at \
             every reload and restart.",
    )]);
    for s in SECTIONS {
        page.control("SH", [s.header]).text([roman(s.text)]);
        for k in s.keys {
            page.control("TP", [] as [&str; 0])
                .text([bold(k.name), roman(" = "), italic(k.value)])
                .text([roman(k.text)]);
        }
    }
    let metrics_defaults = format!(
        "[metrics] defaults: listen = \"{DEFAULT_METRICS_LISTEN}\", top_rules = \
         {DEFAULT_TOP_RULES}, top_customers = {DEFAULT_TOP_CUSTOMERS}."
    );
    page.control("PP", [] as [&str; 0])
        .text([roman(metrics_defaults)])
        .control("SH", ["EXAMPLE"])
        .text([roman(
            "Block Sierra Leone and the satellite ranges for everybody, bar all international \
             calls for one customer with 403 responses, and limit everybody else's \
             international calls:",
        )])
        .control("PP", [] as [&str; 0])
        .control("nf", [] as [&str; 0])
        .text([roman(EXAMPLE)])
        .control("fi", [] as [&str; 0])
        .control("SH", ["FILES"])
        .control("TP", [] as [&str; 0])
        .text([italic("/etc/sipguard/sipguard.toml")])
        .text([roman(
            "This file (a conffile of the package: upgrades keep your edits).",
        )])
        .control("TP", [] as [&str; 0])
        .text([italic("/etc/default/sipguard")])
        .text([roman(
            "The interfaces sipguard.service guards (SIPGUARD_OPTS).",
        )])
        .control("TP", [] as [&str; 0])
        .text([italic("/var/lib/sipguard")])
        .text([roman(
            "Runtime edits, the daemon's record, the events socket.",
        )])
        .control("SH", ["SEE ALSO"])
        .text([roman(
            "sipguard(1), sipguard-run(1), sipguard-check-config(1), sipguard-rules(1), \
             sipguard-customers(1), sipguard-quarantine(1)",
        )]);
    page.render()
}

const EXAMPLE: &str = r#"[settings]
sip_ports = [5060]
fail_mode = "keep"

[[rule]]
country = "SL"
action = "block"

[[rule]]
prefix = "+881"
action = "block"

[[rule]]
prefix = "+"
action = "monitor"
limit = "10/min"
over_limit = "reject"

[[policy]]
name = "intl-barring"
inherit = false
[[policy.rule]]
prefix = "+"
action = "reject"

[[customer]]
name = "example-office"
sources = ["198.51.100.0/24", "2001:db8:100::/48"]
policy = "intl-barring"

[quarantine]
over_limit = 30
window = "10min"
duration = "1h"
"#;

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

    use super::*;
    use crate::config::file::parse;

    /// The keys the parser accepts in the table `header`, from its own "expected one of"
    /// message for an unknown key.
    fn accepted(header: &str) -> BTreeSet<String> {
        let doc = match header {
            "[[policy]]" => "[[policy]]\nname = \"p\"\nzz_unknown = 1\n".to_string(),
            h => format!("{h}\nzz_unknown = 1\n"),
        };
        let e = parse(Path::new("t.toml"), &doc).unwrap_err().to_string();
        let list = e
            .split("`zz_unknown`, expected")
            .nth(1)
            .unwrap_or_else(|| panic!("{header}: no key list in: {e}"));
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_key_the_parser_takes_is_documented_and_no_other() {
        for s in SECTIONS {
            let documented: BTreeSet<String> = s.keys.iter().map(|k| k.name.into()).collect();
            assert_eq!(accepted(s.header), documented, "section {}", s.header);
        }
        let top: BTreeSet<String> = SECTIONS
            .iter()
            .map(|s| s.header.trim_matches(['[', ']']).to_string())
            .collect();
        let e = parse(Path::new("t.toml"), "zz_unknown = 1\n")
            .unwrap_err()
            .to_string();
        for t in e
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| *t != "zz_unknown")
        {
            assert!(top.contains(t), "top-level table `{t}` is not documented");
        }
    }

    #[test]
    fn the_example_is_a_valid_config() {
        let c = parse(Path::new("example.toml"), EXAMPLE).unwrap();
        assert!(c.rules.len() > 3, "{}", c.rules.len());
        assert!(c.quarantine.is_some());
    }
}
