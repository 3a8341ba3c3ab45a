//! Shared test support for sipguard's kernel tests and benchmarks: the frame builder, the
//! fixture table, a host-side reference verdict, network-namespace plumbing, and the INVITE
//! flood of the veth benchmark.

pub mod capacity;
pub mod fixtures;
pub mod flood;
pub mod harness;
pub mod mix;
pub mod netns;
pub mod packet;
pub mod pcap;
pub mod sipp;
pub mod topology;

use guard_common::{Action, Counter, Mode, Parsed, parse_payload};
use sipguard::{Filter, Prefix, Settings, Verdict};

/// A rule with a fixed counter id, written straight into the live trie (the daemon's commits
/// assign ids themselves): what the fixture table and the benchmarks check counters by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRule {
    pub prefix: Prefix,
    pub action: Action,
    pub id: u32,
}

impl TestRule {
    /// `TestRule::new("+232", Action::Block, 7)`.
    pub fn new(prefix: &str, action: Action, id: u32) -> Result<Self, sipguard::RuleError> {
        Ok(Self {
            prefix: prefix.parse()?,
            action,
            id,
        })
    }
}

/// Loads the filter with `settings` and `rules`.
pub fn load(settings: &Settings, rules: &[TestRule]) -> Filter {
    let mut f = Filter::load(settings).expect("load the XDP program (tests must run as root)");
    for r in rules {
        f.insert_rule(&r.prefix, r.action, r.id)
            .expect("insert rule");
    }
    f
}

/// What the filter should do with a UDP payload to a SIP port, computed on the host with the
/// shared parser and a plain longest-prefix search over `rules`.
pub fn host_verdict(
    payload: &[u8],
    settings: &Settings,
    rules: &[TestRule],
) -> (Verdict, Option<u32>) {
    let config = settings.to_config().expect("valid settings");
    let Parsed::Number { number, .. } = parse_payload(payload) else {
        return (Verdict::Pass, None);
    };
    let (domain, n) = config.intl_prefixes.normalize(&number);
    let digits: Vec<u8> = n.digits().collect();
    let best = rules
        .iter()
        .filter(|r| r.prefix.domain == domain && digits.starts_with(&r.prefix.digits))
        .max_by_key(|r| r.prefix.digits.len());
    match best {
        Some(r) if r.action == Action::Block && settings.mode == Mode::Enforce => {
            (Verdict::Drop, Some(r.id))
        }
        Some(r) => (Verdict::Pass, Some(r.id)),
        None => (Verdict::Pass, None),
    }
}

/// Global counters as a name → value list, for messages.
pub fn counter_snapshot(f: &Filter) -> Vec<(Counter, u64)> {
    let g = f.global_counters().expect("read counters");
    Counter::ALL.iter().map(|&c| (c, g.get(c))).collect()
}
