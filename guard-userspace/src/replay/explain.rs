//! `sipguard explain --config FILE --src ADDR [--vlan N] URI`: which customer, policy and rule
//! decide an INVITE to URI from ADDR, and the verdict. The INVITE runs through a private
//! instance of the XDP program loaded with FILE (BPF_PROG_TEST_RUN): the verdict and the rule
//! are the kernel's (the rule whose counter moved), the customer is the kernel's trie's answer
//! for ADDR; the number shown is the shared parser's normalisation, for reading only.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use etherparse::{PacketBuilder, VlanId};
use guard_common::{Action, parse_payload};

use crate::{
    config::ConfigFile,
    kernel::filter::Verdict,
    model::{reply::Status, rules::Prefix},
};

/// What decided an INVITE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub src: IpAddr,
    pub vlan: u16,
    pub uri: String,
    /// The customer's name and the source CIDRs it has; `None`: no customer (global rules).
    pub customer: Option<String>,
    /// The customer's policy and whether it inherits the global rules.
    pub policy: Option<(String, bool)>,
    /// The normalised number (`+23276123456`, or a national dial string), if one was read.
    pub number: Option<String>,
    /// The deciding rule: its policy (`None`: global), prefix and action.
    pub rule: Option<(Option<String>, Prefix, Action)>,
    /// The response of a `reject` rule.
    pub response: Option<Status>,
    pub verdict: Verdict,
}

/// The INVITE frame: from `src` (a documentation address of its family as the destination),
/// UDP to `port`, on `vlan` (0: untagged).
fn frame(src: IpAddr, vlan: u16, port: u16, uri: &str) -> Result<Vec<u8>> {
    let sip = format!(
        "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {src}:5060;branch=z9hG4bK-explain\r\nFrom: <sip:explain@sipguard.invalid>;tag=explain\r\nTo: <{uri}>\r\nCall-ID: explain@sipguard.invalid\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut out = Vec::new();
    macro_rules! ip {
        ($l2:expr) => {
            match src {
                IpAddr::V4(s) => $l2
                    .ipv4(s.octets(), [203, 0, 113, 1], 64)
                    .udp(5060, port)
                    .write(&mut out, sip.as_bytes()),
                IpAddr::V6(s) => $l2
                    .ipv6(
                        s.octets(),
                        "2001:db8::1".parse::<std::net::Ipv6Addr>()?.octets(),
                        64,
                    )
                    .udp(5060, port)
                    .write(&mut out, sip.as_bytes()),
            }
        };
    }
    if vlan != 0 {
        let id = VlanId::try_new(vlan).map_err(|e| anyhow::anyhow!("--vlan {vlan}: {e}"))?;
        ip!(eth.single_vlan(id))
    } else {
        ip!(eth)
    }
    .context("building the INVITE frame")?;
    Ok(out)
}

/// Explains an INVITE to `uri` from `src` on outer VLAN `vlan` under `cfg`.
pub fn explain(cfg: &ConfigFile, src: IpAddr, vlan: u16, uri: &str) -> Result<Explanation> {
    if vlan > 4094 {
        bail!("--vlan {vlan} is outside 0..4094 (0: untagged)");
    }
    if uri.is_empty() || uri.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        bail!("the URI must be one token without spaces or control characters: {uri:?}");
    }
    let filter = super::private_filter(cfg)?;
    let port = *cfg.settings.sip_ports.first().context("no SIP port")?;
    let f = frame(src, vlan, port, uri)?;
    let before = filter.maps.all_rule_counters()?;
    let verdict = filter.test_run(&f)?;
    let after = filter.maps.all_rule_counters()?;
    let moved = after
        .iter()
        .find(|(id, c)| before.get(id).map_or(0, |b| b.matched) < c.matched)
        .map(|(id, _)| *id);
    let rules = filter.maps.rules()?;
    let rule = moved.and_then(|id| {
        let (prefix, v) = rules.iter().find(|(_, v)| v.id == id)?;
        let policy = cfg.customers.policy_name(prefix.policy);
        Some((policy, prefix.clone(), Action::from_u8(v.action)?))
    });
    let response = rule.as_ref().and_then(|(_, prefix, action)| {
        (*action == Action::Reject).then(|| {
            cfg.rules
                .get(prefix)
                .and_then(|r| r.status.clone())
                .unwrap_or_else(|| cfg.reject.clone())
        })
    });
    let found = filter.maps.customer_for(vlan, src)?;
    let customer = found.and_then(|v| cfg.customers.customer_by_id(v.id));
    let policy = found.and_then(|v| {
        let name = cfg.customers.policy_name(v.policy)?;
        Some((name, v.flags & guard_common::CUSTOMER_FLAG_INHERIT != 0))
    });
    let line = format!("INVITE {uri} SIP/2.0\r\n");
    let number = match parse_payload(line.as_bytes()) {
        guard_common::Parsed::Number { number, .. } => {
            let intl = cfg.settings.to_config()?.intl_prefixes;
            let (domain, n) = intl.normalize(&number);
            Some(n.display(domain).to_string())
        }
        _ => None,
    };
    Ok(Explanation {
        src,
        vlan,
        uri: uri.to_string(),
        customer: customer.map(|c| c.name.clone()),
        policy,
        number,
        rule,
        response,
        verdict,
    })
}
