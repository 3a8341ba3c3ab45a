//! The call mix of the end-to-end test and the demo: what a hacked PBX and a normal office
//! dial, with the rule of the shipped defaults (plus a `+23222 allow` exception) that decides
//! each destination.

/// A destination of the call mix: Request-URI user part (or tel: URI), the rule that decides
/// it, and whether the call must be blocked.
pub struct Dest {
    pub uri: &'static str,
    pub rule: Option<&'static str>,
    pub blocked: bool,
}

const fn d(uri: &'static str, rule: Option<&'static str>, blocked: bool) -> Dest {
    Dest { uri, rule, blocked }
}

/// The mix: domestic numbers, allowed international numbers, blocked numbers in every dial
/// form the filter supports, and an allow exception inside a blocked country. `@HOST` is
/// replaced by the carrier's address.
pub const MIX: &[Dest] = &[
    d("sip:0312345678@HOST", None, false),
    d("sip:+33142685300@HOST", Some("+"), false),
    d("sip:+23276123456@HOST", Some("+232"), true),
    d("sip:0120444444@HOST", None, false),
    d("sip:0023276123456@HOST", Some("+232"), true),
    d("sip:01149301234567@HOST", Some("+"), false),
    d("sip:01123276123456@HOST", Some("+232"), true),
    d("tel:+232-76-123-456", Some("+232"), true),
    d("sip:+23222123456@HOST", Some("+23222"), false),
    d("sip:+881631234567@HOST", Some("+881"), true),
    d("sip:00870773123456@HOST", Some("+870"), true),
    d("tel:+979-1-2345-6789", Some("+979"), true),
];

pub fn uris(host: &str) -> Vec<String> {
    MIX.iter().map(|m| m.uri.replace("HOST", host)).collect()
}

pub fn dest_of<'a>(uri: &str, host: &str) -> &'a Dest {
    MIX.iter()
        .find(|m| m.uri.replace("HOST", host) == uri)
        .unwrap_or_else(|| panic!("unknown URI in trace: {uri}"))
}

/// `sipguard ARGS` that add the mix's allow exception inside Sierra Leone (+23222), which the
/// shipped defaults do not have.
pub const ADD_EXCEPTION: [&str; 7] = [
    "rules",
    "add",
    "+23222",
    "--action",
    "allow",
    "--comment",
    "partner network inside Sierra Leone",
];
