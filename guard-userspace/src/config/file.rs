//! The config file (TOML): settings and rules, validated completely before anything is applied.
//!
//! Every error names the file and the line. Unknown keys are errors, so a typo (`acton`) is
//! never silently ignored.
//!
//! ```toml
//! [settings]
//! sip_ports = [5060, 5080]
//! international_prefixes = ["010"]   # default ["00", "011"]
//! mode = "enforce"                    # or "monitor"
//! fail_mode = "keep"                  # or "detach": what SIGTERM does to the attached program
//! max_rules = 2000000                 # rule capacity (default 262144), applied at load
//!
//! [[rule]]
//! prefix = "+232"        # '+' = international; without '+' = national dial string
//! action = "block"       # block | allow | monitor
//! comment = "Sierra Leone"
//!
//! [[rule]]
//! country = "JM"         # ISO 3166 alpha-2, expanded to its calling prefixes (+1658, +1876)
//! action = "block"
//! ```

use std::{
    collections::BTreeMap,
    fmt, fs,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::model::{
    country,
    rules::{Origin, Prefix, Rule, RuleSet},
    settings::Settings,
};

/// Where `sipguard run` looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/sipguard/sipguard.toml";

/// The shipped default config (blocks +232, +870, +881, +882, +883, +979; monitors the rest of
/// international traffic). `sipguard run` uses it when no --config is given and
/// [`DEFAULT_PATH`] does not exist.
pub const EMBEDDED: &str = include_str!("../../defaults/sipguard.toml");

/// Default `[metrics] listen` address: loopback only, unless the operator says otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9960";

/// `[events]`: where drop events go, besides `sipguard events`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventOutputs {
    /// A JSON-lines file, appended to.
    pub file: Option<PathBuf>,
    /// JSON lines on stdout (the journal, under systemd).
    pub stdout: bool,
}

/// What `sipguard run` reads: a file, or the embedded default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigLocation {
    File(PathBuf),
    Embedded,
}

impl ConfigLocation {
    /// `--config FILE` if given, else [`DEFAULT_PATH`] if it exists, else the embedded default.
    pub fn resolve(explicit: Option<&Path>) -> Self {
        match explicit {
            Some(p) => Self::File(p.to_path_buf()),
            None if Path::new(DEFAULT_PATH).exists() => Self::File(DEFAULT_PATH.into()),
            None => Self::Embedded,
        }
    }

    pub fn load(&self) -> Result<ConfigFile, ConfigError> {
        match self {
            Self::File(p) => load(p),
            Self::Embedded => parse(Path::new("<built-in default config>"), EMBEDDED),
        }
    }

    /// The file to watch for changes.
    pub fn watched(&self) -> &Path {
        match self {
            Self::File(p) => p,
            Self::Embedded => Path::new(DEFAULT_PATH),
        }
    }
}

impl fmt::Display for ConfigLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Embedded => f.write_str("the built-in default rules"),
        }
    }
}

/// A config problem, located.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}: {message}")]
    At {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// What SIGTERM does to the attached program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Leave the pinned program attached: a restart or an upgrade leaves no gap.
    #[default]
    Keep,
    /// Detach and remove the pins.
    Detach,
}

impl fmt::Display for FailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailMode::Keep => "keep",
            FailMode::Detach => "detach",
        })
    }
}

/// A validated config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub settings: Settings,
    pub fail_mode: FailMode,
    pub rules: RuleSet,
    /// Whether the file had a `[settings]` table (import files must not).
    pub has_settings: bool,
    /// `[events]`: where drop events go (besides `sipguard events`).
    pub events: EventOutputs,
    /// `[metrics] listen`: the Prometheus endpoint, `None` when "off".
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    file: Option<String>,
    stdout: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    settings: Option<Spanned<RawSettings>>,
    events: Option<RawEvents>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    sip_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    international_prefixes: Option<Spanned<Vec<Spanned<String>>>>,
    mode: Option<Spanned<String>>,
    fail_mode: Option<Spanned<String>>,
    kernel_debug_log: Option<bool>,
    track_calls: Option<bool>,
    event_rate: Option<Spanned<i64>>,
    event_burst: Option<Spanned<i64>>,
    max_rules: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    prefix: Option<Spanned<String>>,
    country: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    comment: Option<String>,
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse(path, &text)
}

/// Validates config text; `path` is only used in messages and kept in the result.
pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let shown = path.display().to_string();
    let lines = LineIndex::new(text);
    let at = |span: Range<usize>, message: String| ConfigError::At {
        path: shown.clone(),
        line: lines.line_of(span.start),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => at(span, e.message().trim().to_string()),
        None => ConfigError::File {
            path: shown.clone(),
            message: e.message().trim().to_string(),
        },
    })?;

    let mut settings = Settings::default();
    let mut fail_mode = FailMode::default();
    let has_settings = raw.settings.is_some();
    if let Some(s) = raw.settings {
        let RawSettings {
            sip_ports,
            international_prefixes,
            mode,
            fail_mode: fm,
            kernel_debug_log,
            track_calls,
            event_rate,
            event_burst,
            max_rules,
        } = s.into_inner();
        if let Some(v) = max_rules {
            let n = *v.get_ref();
            let max = guard_common::MAX_RULES_LIMIT;
            if !(1..=i64::from(max)).contains(&n) {
                return Err(at(
                    v.span(),
                    format!("max_rules: {n} is out of range (1 to {max})"),
                ));
            }
            settings.max_rules = n as u32;
        }
        for (name, v, slot) in [
            ("event_rate", event_rate, &mut settings.event_rate),
            ("event_burst", event_burst, &mut settings.event_burst),
        ] {
            if let Some(v) = v {
                let n = *v.get_ref();
                if !(0..=1_000_000).contains(&n) {
                    return Err(at(
                        v.span(),
                        format!("{name}: {n} is out of range (0 to 1000000)"),
                    ));
                }
                *slot = n as u32;
            }
        }
        settings.track_calls = track_calls.unwrap_or(true);
        if let Some(ports) = sip_ports {
            let span = ports.span();
            let ports = ports.into_inner();
            if ports.is_empty() {
                return Err(at(
                    span,
                    "sip_ports is empty: at least one SIP port is needed".into(),
                ));
            }
            settings.sip_ports = Vec::new();
            for p in ports {
                let (span, v) = (p.span(), *p.get_ref());
                if !(1..=65535).contains(&v) {
                    return Err(at(
                        span,
                        format!("sip_ports: {v} is not a UDP port (1 to 65535)"),
                    ));
                }
                settings.sip_ports.push(v as u16);
            }
        }
        if let Some(prefixes) = international_prefixes {
            let span = prefixes.span();
            let prefixes = prefixes.into_inner();
            let max = guard_common::number::MAX_INTL_PREFIXES;
            if prefixes.len() > max {
                return Err(at(
                    span,
                    format!(
                        "international_prefixes: {} given, at most {max} are supported",
                        prefixes.len()
                    ),
                ));
            }
            settings.intl_prefixes = Vec::new();
            for p in prefixes {
                let span = p.span();
                let p = p.into_inner();
                if guard_common::IntlPrefix::from_digits(&p).is_none() {
                    return Err(at(
                        span,
                        format!(
                            "international prefix `{p}` must be 1 to {} digits",
                            guard_common::number::MAX_INTL_PREFIX_DIGITS
                        ),
                    ));
                }
                settings.intl_prefixes.push(p);
            }
        }
        if let Some(m) = mode {
            settings.mode = m
                .get_ref()
                .parse()
                .map_err(|e: guard_common::ParseModeError| at(m.span(), e.to_string()))?;
        }
        if let Some(f) = fm {
            fail_mode = match f.get_ref().as_str() {
                "keep" => FailMode::Keep,
                "detach" => FailMode::Detach,
                other => {
                    return Err(at(
                        f.span(),
                        format!("unknown fail_mode `{other}` (expected keep or detach)"),
                    ));
                }
            };
        }
        settings.kernel_debug_log = kernel_debug_log.unwrap_or(false);
    }
    // Anything the kernel config would refuse, refused here with the file's name.
    settings.to_config().map_err(|e| ConfigError::File {
        path: shown.clone(),
        message: e.to_string(),
    })?;

    let events = raw
        .events
        .map(|e| EventOutputs {
            file: e.file.map(PathBuf::from),
            stdout: e.stdout.unwrap_or(false),
        })
        .unwrap_or_default();
    let metrics = match raw.metrics.and_then(|m| m.listen) {
        None => Some(
            DEFAULT_METRICS_LISTEN
                .parse()
                .expect("the default listen address parses"),
        ),
        Some(l) if l.get_ref() == "off" => None,
        Some(l) => Some(l.get_ref().parse().map_err(|_| {
            at(
                l.span(),
                format!(
                    "metrics listen address `{}` is not IP:PORT (e.g. 127.0.0.1:9960) or \"off\"",
                    l.get_ref()
                ),
            )
        })?),
    };

    let mut rules = RuleSet::new();
    // Where each prefix was defined, for conflict messages.
    let mut defined_at: BTreeMap<Prefix, usize> = BTreeMap::new();
    for r in raw.rule {
        let span = r.span();
        let line = lines.line_of(span.start);
        let RawRule {
            prefix,
            country,
            action,
            comment,
        } = r.into_inner();
        let action = match action {
            Some(a) => a
                .get_ref()
                .parse()
                .map_err(|e: guard_common::ParseActionError| at(a.span(), e.to_string()))?,
            None => {
                return Err(at(
                    span,
                    "rule has no `action` (block, allow or monitor)".into(),
                ));
            }
        };
        let (prefixes, country_code): (Vec<Prefix>, Option<String>) = match (prefix, country) {
            (Some(p), None) => {
                let prefix = p
                    .get_ref()
                    .parse::<Prefix>()
                    .map_err(|e| at(p.span(), e.to_string()))?;
                (vec![prefix], None)
            }
            (None, Some(c)) => {
                let expanded =
                    country::expand(c.get_ref()).map_err(|e| at(c.span(), e.to_string()))?;
                let prefixes = expanded
                    .prefixes
                    .iter()
                    .map(|d| format!("+{d}").parse::<Prefix>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| at(c.span(), e.to_string()))?;
                (prefixes, Some(expanded.alpha2))
            }
            (Some(_), Some(c)) => {
                return Err(at(
                    c.span(),
                    "a rule has either `prefix` or `country`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(at(span, "rule has neither `prefix` nor `country`".into()));
            }
        };
        for prefix in prefixes {
            if let Some(old) = rules.get(&prefix) {
                if old.action != action {
                    return Err(ConfigError::At {
                        path: shown.clone(),
                        line,
                        message: format!(
                            "rule conflict: {prefix} is `{}` here but `{}` at line {}",
                            action.as_str(),
                            old.action.as_str(),
                            defined_at[&prefix]
                        ),
                    });
                }
                continue;
            }
            defined_at.insert(prefix.clone(), line);
            rules.insert(
                prefix,
                Rule {
                    action,
                    comment: comment.clone(),
                    country: country_code.clone(),
                    origin: Origin::Config,
                },
            );
        }
    }
    // A config file's rules must fit its own max_rules. An import file (no [settings]) is
    // checked against the live maps' size when it is applied.
    let limit = if has_settings {
        settings.max_rules
    } else {
        guard_common::MAX_RULES_LIMIT
    };
    if rules.len() > limit as usize {
        return Err(ConfigError::File {
            path: shown,
            message: format!(
                "{} rules: the rule map holds at most {limit}{}",
                rules.len(),
                if has_settings {
                    " (max_rules in [settings])"
                } else {
                    ""
                }
            ),
        });
    }
    Ok(ConfigFile {
        path: path.to_path_buf(),
        settings,
        fail_mode,
        rules,
        has_settings,
        events,
        metrics,
    })
}

/// Byte offsets where lines start, for turning spans into line numbers in O(log n).
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        Self(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        )
    }

    /// 1-based line of byte offset `pos`.
    fn line_of(&self, pos: usize) -> usize {
        self.0.partition_point(|&start| start <= pos).max(1)
    }
}

#[cfg(test)]
mod tests {
    use guard_common::Action;

    use super::*;

    fn p(text: &str) -> Result<ConfigFile, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    fn err(text: &str) -> String {
        p(text).expect_err("must fail").to_string()
    }

    #[test]
    fn full_example_parses() {
        let c = p(r#"
[settings]
sip_ports = [5060, 5080]
international_prefixes = ["010"]
mode = "monitor"
fail_mode = "detach"

[[rule]]
prefix = "+232"
action = "block"
comment = "Sierra Leone"

[[rule]]
prefix = "+23222"
action = "allow"

[[rule]]
country = "JM"
action = "block"
"#)
        .unwrap();
        assert_eq!(c.settings.sip_ports, vec![5060, 5080]);
        assert_eq!(c.settings.intl_prefixes, vec!["010".to_string()]);
        assert_eq!(c.settings.mode, guard_common::Mode::Monitor);
        assert_eq!(c.fail_mode, FailMode::Detach);
        let sl: Prefix = "+232".parse().unwrap();
        assert_eq!(c.rules[&sl].comment.as_deref(), Some("Sierra Leone"));
        let jm: Prefix = "+1876".parse().unwrap();
        assert_eq!(c.rules[&jm].country.as_deref(), Some("JM"));
        assert!(!c.rules.contains_key(&"+1".parse::<Prefix>().unwrap()));
    }

    #[test]
    fn the_shipped_default_blocks_the_fraud_destinations_and_monitors_the_rest() {
        let c = ConfigLocation::Embedded.load().unwrap();
        for p in ["+232", "+870", "+881", "+882", "+883", "+979"] {
            let e = &c.rules[&p.parse::<Prefix>().unwrap()];
            assert_eq!(e.action, Action::Block, "{p}");
            assert!(
                e.comment.as_deref().is_some_and(|c| c.len() > 20),
                "{p} says why"
            );
        }
        let all = &c.rules[&"+".parse::<Prefix>().unwrap()];
        assert_eq!(all.action, Action::Monitor);
        assert_eq!(c.rules.len(), 7);
        assert_eq!(c.settings, Settings::default());
        assert_eq!(c.fail_mode, FailMode::Keep);
    }

    #[test]
    fn defaults_when_settings_are_missing() {
        let c = p("").unwrap();
        assert_eq!(c.settings, Settings::default());
        assert_eq!(c.fail_mode, FailMode::Keep);
        assert!(c.rules.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "[[rule]]\nprefix = \"\"\naction = \"block\"\n",
                "t.toml:2: empty prefix",
            ),
            (
                "[[rule]]\nprefix = \"+23a\"\naction = \"block\"\n",
                "t.toml:2: prefix `+23a`: `a`",
            ),
            (
                &format!(
                    "[[rule]]\nprefix = \"+{}\"\naction = \"block\"\n",
                    "1".repeat(31)
                ),
                "t.toml:2: prefix `+1111111111111111111111111111111` has 31 digits",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"drop\"\n",
                "t.toml:3: unknown action `drop`",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\n",
                "t.toml:1: rule has no `action`",
            ),
            (
                "[[rule]]\ncountry = \"XX\"\naction = \"block\"\n",
                "t.toml:2: ",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"block\"\n\n[[rule]]\nprefix = \"+232\"\naction = \"allow\"\n",
                "t.toml:5: rule conflict: +232 is `allow` here but `block` at line 1",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\nacton = \"block\"\n",
                "t.toml:3: unknown field `acton`",
            ),
            (
                "[setings]\nmode = \"monitor\"\n",
                "t.toml:1: unknown field `setings`",
            ),
            (
                "[settings]\nsip_ports = [0]\n",
                "t.toml:2: sip_ports: 0 is not a UDP port",
            ),
            (
                "[settings]\nsip_ports = [5060, 70000]\n",
                "t.toml:2: sip_ports: 70000 is not a UDP port",
            ),
            (
                "[settings]\nsip_ports = []\n",
                "t.toml:2: sip_ports is empty",
            ),
            (
                "[settings]\nmode = \"enforcing\"\n",
                "t.toml:2: unknown mode `enforcing`",
            ),
            (
                "[settings]\nfail_mode = \"crash\"\n",
                "t.toml:2: unknown fail_mode `crash`",
            ),
            (
                "[settings]\ninternational_prefixes = [\"0x\"]\n",
                "t.toml:2: international prefix `0x`",
            ),
            (
                "[[rule]]\nprefix = \"+1\"\ncountry = \"JM\"\naction = \"block\"\n",
                "t.toml:3: a rule has either",
            ),
            (
                "[[rule]]\naction = \"block\"\n",
                "t.toml:1: rule has neither",
            ),
            ("[settings\n", "t.toml:1: "),
            (
                "[settings]\nmax_rules = 0\n",
                "t.toml:2: max_rules: 0 is out of range (1 to 4000000)",
            ),
            (
                "[settings]\nmode = \"enforce\"\nmax_rules = 4000001\n",
                "t.toml:3: max_rules: 4000001 is out of range (1 to 4000000)",
            ),
            (
                "[settings]\nmax_rules = \"many\"\n",
                "t.toml:2: invalid type",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "for {text:?}\n got: {got}\nwant: {want}..."
            );
        }
    }

    #[test]
    fn max_rules_sets_the_capacity_and_bounds_the_config_rules() {
        assert_eq!(p("").unwrap().settings.max_rules, guard_common::MAX_RULES);
        let c = p("[settings]\nmax_rules = 2000000\n").unwrap();
        assert_eq!(c.settings.max_rules, 2_000_000);
        let rules = "[[rule]]\nprefix = \"+1\"\naction = \"block\"\n[[rule]]\nprefix = \"+2\"\naction = \"block\"\n[[rule]]\nprefix = \"+3\"\naction = \"block\"\n";
        let e = err(&format!("[settings]\nmax_rules = 2\n{rules}"));
        assert_eq!(
            e,
            "t.toml: 3 rules: the rule map holds at most 2 (max_rules in [settings])"
        );
        assert!(p(&format!("[settings]\nmax_rules = 3\n{rules}")).is_ok());
        // An import file (no [settings]) is checked against the live maps when applied.
        assert_eq!(p(rules).unwrap().rules.len(), 3);
    }

    #[test]
    fn shared_calling_code_country_is_refused_with_its_name() {
        let e = err("[[rule]]\ncountry = \"US\"\naction = \"block\"\n");
        assert!(e.starts_with("t.toml:2: "), "{e}");
        assert!(e.contains("US"), "{e}");
    }

    #[test]
    fn same_prefix_same_action_twice_is_accepted() {
        let c = p("[[rule]]\nprefix = \"+1876\"\naction = \"block\"\n[[rule]]\ncountry = \"JM\"\naction = \"block\"\n")
            .unwrap();
        assert_eq!(c.rules.len(), 2, "{:?}", c.rules.keys().collect::<Vec<_>>());
    }
}
