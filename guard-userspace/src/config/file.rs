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
//! incomplete_action = "monitor"       # a number not read to its end: block | allow | monitor
//! tiny_first_fragment = "drop"        # a first IP fragment too short for a number: drop | pass
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
    marker::PhantomData,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use guard_common::{Action, Mode};
use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};
use thiserror::Error;
use toml::Spanned;

use guard_common::number::GLOBAL_POLICY;
use ipnet::IpNet;

use crate::model::{
    country,
    customers::{Customer, Customers, Policy, check_name},
    limits::{Limits as RuleLimits, QuarantineSettings, Rate, RateError, Scope, parse_duration},
    reply::{Status, StatusError},
    rules::{Origin, Prefix, Rule, RuleSet},
    settings::{Settings, TinyFragment},
};

/// Where `sipguard run` looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/sipguard/sipguard.toml";

/// The shipped default config (blocks +232, +870, +881, +882, +883, +979; monitors the rest of
/// international traffic). `sipguard run` uses it when no --config is given and
/// [`DEFAULT_PATH`] does not exist.
pub const EMBEDDED: &str = include_str!("../../defaults/sipguard.toml");

/// Default `[metrics] top_rules`: per-rule series for the 500 busiest rules of each interface,
/// so that a scrape stays small (about 0.3 MB) whatever the rule count.
pub const DEFAULT_TOP_RULES: u32 = 500;

/// Most `[metrics] top_rules`: 100,000 rules of 13 series each are about 30 MB a scrape.
pub const MAX_TOP_RULES: u32 = 100_000;

/// Default `[metrics] top_customers`: series of their own for the 50 customers with the most
/// stopped calls per interface.
pub const DEFAULT_TOP_CUSTOMERS: u32 = 50;

/// Default `[metrics] listen` address: loopback only, unless the operator says otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9960";

/// `[events]`: where drop events go, besides `sipguard events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventOutputs {
    /// A JSON-lines file, appended to.
    pub file: Option<PathBuf>,
    /// JSON lines on stdout (the journal, under systemd).
    #[serde(default)]
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
    #[error("{path} is {kind}, not a regular file: sipguard reads only regular files")]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "{path} is {size}, above the {} MiB cap on config and import files",
        MAX_FILE_BYTES >> 20
    )]
    TooLarge { path: String, size: String },
    #[error("{path} {problem}: refused, as sshd refuses such keys; fix it with `{fix}`")]
    Insecure {
        path: String,
        problem: String,
        fix: String,
    },
}

/// What SIGTERM does to the attached program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum FailMode {
    /// Leave the pinned program attached: a restart or an upgrade leaves no gap.
    #[default]
    Keep,
    /// Detach and remove the pins.
    Detach,
}

impl TryFrom<String> for FailMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "keep" => Ok(Self::Keep),
            "detach" => Ok(Self::Detach),
            other => Err(format!(
                "unknown fail_mode `{other}` (expected keep or detach)"
            )),
        }
    }
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
    pub metrics: Option<SocketAddr>,
    /// `[metrics] top_rules`: per-rule series are exported for this many of each interface's
    /// busiest rules (0: only the totals over all rules).
    pub top_rules: u32,
    /// `[metrics] top_customers`: customers with series of their own per interface.
    pub top_customers: u32,
    /// `[[policy]]` and `[[customer]]` (the policies' rules are in `rules`, under their ids).
    pub customers: Customers,
    /// Warnings that do not stop the config (a customer with no sources).
    pub warnings: Vec<String>,
    /// `[settings] reject_code` / `reject_reason`: the response of `reject` rules that give
    /// none of their own (403 Forbidden).
    pub reject: Status,
    /// `[quarantine]`, if the config has one.
    pub quarantine: Option<QuarantineSettings>,
}

// The file as serde reads it. Every value has a type that checks it as it is read, so a bad
// value is reported with its own message at its own line; `parse` checks only what involves
// more than one value. A type read as an array element checks inside its visitor (see
// `IntElement`); the others may check after reading, as `try_from` does.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    settings: Option<RawSettings>,
    #[serde(default)]
    events: EventOutputs,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    policy: Vec<Spanned<RawPolicy>>,
    #[serde(default)]
    customer: Vec<Spanned<RawCustomer>>,
    quarantine: Option<Spanned<RawQuarantine>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<Spanned<String>>,
    inherit: Option<bool>,
    comment: Option<String>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustomer {
    name: Option<Spanned<String>>,
    #[serde(default)]
    sources: Vec<Spanned<String>>,
    #[serde(default)]
    vlans: Vec<Spanned<i64>>,
    policy: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    sip_ports: Option<SipPorts>,
    international_prefixes: Option<IntlPrefixList>,
    mode: Option<Parsed<Mode>>,
    fail_mode: Option<FailMode>,
    kernel_debug_log: Option<bool>,
    track_calls: Option<bool>,
    event_rate: Option<Bounded<EventRate>>,
    event_burst: Option<Bounded<EventBurst>>,
    max_rules: Option<Bounded<MaxRules>>,
    limit_buckets: Option<Bounded<LimitBuckets>>,
    incomplete_action: Option<Parsed<Action>>,
    tiny_first_fragment: Option<Parsed<TinyFragment>>,
    reject_code: Option<Spanned<i64>>,
    reject_reason: Option<Spanned<String>>,
}

impl RawSettings {
    /// The settings, with the default for every field not given.
    fn into_settings(self) -> (Settings, FailMode) {
        let d = Settings::default();
        let settings = Settings {
            sip_ports: self.sip_ports.map_or(d.sip_ports, |p| p.0),
            intl_prefixes: self.international_prefixes.map_or(d.intl_prefixes, |p| p.0),
            mode: self.mode.map_or(d.mode, |m| m.0),
            kernel_debug_log: self.kernel_debug_log.unwrap_or(d.kernel_debug_log),
            track_calls: self.track_calls.unwrap_or(d.track_calls),
            event_rate: self.event_rate.map_or(d.event_rate, |n| n.0),
            event_burst: self.event_burst.map_or(d.event_burst, |n| n.0),
            max_rules: self.max_rules.map_or(d.max_rules, |n| n.0),
            limit_buckets: self.limit_buckets.map_or(d.limit_buckets, |n| n.0),
            incomplete_action: self.incomplete_action.map_or(d.incomplete_action, |a| a.0),
            tiny_first_fragment: self
                .tiny_first_fragment
                .map_or(d.tiny_first_fragment, |t| t.0),
        };
        (settings, self.fail_mode.unwrap_or_default())
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default)]
    listen: MetricsListen,
    top_rules: Option<Bounded<TopRules>>,
    top_customers: Option<Bounded<TopCustomers>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    prefix: Option<Prefix>,
    country: Option<Spanned<CountryPrefixes>>,
    action: Option<Parsed<Action>>,
    comment: Option<String>,
    reject_code: Option<Spanned<i64>>,
    reject_reason: Option<Spanned<String>>,
    limit: Option<Spanned<String>>,
    burst: Option<Spanned<i64>>,
    repeat_limit: Option<Spanned<String>>,
    over_limit: Option<Spanned<String>>,
}

/// `[quarantine]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuarantine {
    calls: Option<Spanned<i64>>,
    over_limit: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    duration: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    reject_code: Option<Spanned<i64>>,
    reject_reason: Option<Spanned<String>>,
}

/// A value read from a TOML string by its `FromStr` (for guard-common's `Mode` and `Action`),
/// whose error message becomes the config error.
struct Parsed<T>(T);

impl<'de, T: FromStr<Err: fmt::Display>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map(Parsed)
            .map_err(de::Error::custom)
    }
}

/// An integer setting's name and range, for [`Bounded`].
trait Limits {
    const FIELD: &'static str;
    const MIN: u32;
    const MAX: u32;
}

/// An integer setting within `L`'s range: "max_rules: 0 is out of range (1 to 4000000)".
struct Bounded<L>(u32, PhantomData<L>);

impl<'de, L: Limits> Deserialize<'de> for Bounded<L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u32::try_from(n) {
            Ok(v) if (L::MIN..=L::MAX).contains(&v) => Ok(Self(v, PhantomData)),
            _ => Err(de::Error::custom(format_args!(
                "{}: {n} is out of range ({} to {})",
                L::FIELD,
                L::MIN,
                L::MAX
            ))),
        }
    }
}

enum MaxRules {}
impl Limits for MaxRules {
    const FIELD: &'static str = "max_rules";
    const MIN: u32 = 1;
    const MAX: u32 = guard_common::MAX_RULES_LIMIT;
}

enum LimitBuckets {}
impl Limits for LimitBuckets {
    const FIELD: &'static str = "limit_buckets";
    const MIN: u32 = 1024;
    const MAX: u32 = 16_777_216;
}

enum TopRules {}
impl Limits for TopRules {
    const FIELD: &'static str = "top_rules";
    const MIN: u32 = 0;
    const MAX: u32 = MAX_TOP_RULES;
}

enum TopCustomers {}
impl Limits for TopCustomers {
    const FIELD: &'static str = "top_customers";
    const MIN: u32 = 0;
    const MAX: u32 = MAX_TOP_RULES;
}

enum EventRate {}
impl Limits for EventRate {
    const FIELD: &'static str = "event_rate";
    const MIN: u32 = 0;
    const MAX: u32 = 1_000_000;
}

enum EventBurst {}
impl Limits for EventBurst {
    const FIELD: &'static str = "event_burst";
    const MIN: u32 = 0;
    const MAX: u32 = 1_000_000;
}

/// One of `sip_ports`. Checked inside the deserializer (see [`IntElement`]).
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_i64(IntElement(
            "a UDP port number",
            |n: i64| match u16::try_from(n) {
                Ok(p) if p != 0 => Ok(Self(p)),
                _ => Err(format!("sip_ports: {n} is not a UDP port (1 to 65535)")),
            },
        ))
    }
}

/// `sip_ports`: at least one.
#[derive(Deserialize)]
#[serde(try_from = "Vec<Port>")]
struct SipPorts(Vec<u16>);

impl TryFrom<Vec<Port>> for SipPorts {
    type Error = &'static str;

    fn try_from(ports: Vec<Port>) -> Result<Self, Self::Error> {
        if ports.is_empty() {
            return Err("sip_ports is empty: at least one SIP port is needed");
        }
        Ok(Self(ports.into_iter().map(|p| p.0).collect()))
    }
}

/// One of `international_prefixes`: 1 to `MAX_INTL_PREFIX_DIGITS` digits. Checked inside the
/// deserializer (see [`IntElement`]).
struct IntlPrefixText(String);

impl<'de> Deserialize<'de> for IntlPrefixText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrElement("a string of digits", |p: &str| {
            match guard_common::IntlPrefix::from_digits(p) {
                Some(_) => Ok(Self(p.to_string())),
                None => Err(format!(
                    "international prefix `{p}` must be 1 to {} digits",
                    guard_common::number::MAX_INTL_PREFIX_DIGITS
                )),
            }
        }))
    }
}

/// A visitor that checks an integer array element while toml's deserializer for that element
/// runs (what it expects, and the check); [`StrElement`] for strings.
///
/// toml gives an error the span of the value being read only while that value's deserializer
/// runs. An error raised after it returns (as with `try_from`) takes the span of the enclosing
/// table entry: right for a table value, but for an array element that is the whole array, and
/// the line would be the array's first, not the element's.
struct IntElement<F>(&'static str, F);

impl<'de, T, F: FnOnce(i64) -> Result<T, String>> Visitor<'de> for IntElement<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        (self.1)(n).map_err(E::custom)
    }
}

/// [`IntElement`] for a string array element.
struct StrElement<F>(&'static str, F);

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for StrElement<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        (self.1)(s).map_err(E::custom)
    }
}

/// `international_prefixes`: at most `MAX_INTL_PREFIXES`.
#[derive(Deserialize)]
#[serde(try_from = "Vec<IntlPrefixText>")]
struct IntlPrefixList(Vec<String>);

impl TryFrom<Vec<IntlPrefixText>> for IntlPrefixList {
    type Error = String;

    fn try_from(prefixes: Vec<IntlPrefixText>) -> Result<Self, String> {
        let max = guard_common::number::MAX_INTL_PREFIXES;
        if prefixes.len() > max {
            return Err(format!(
                "international_prefixes: {} given, at most {max} are supported",
                prefixes.len()
            ));
        }
        Ok(Self(prefixes.into_iter().map(|p| p.0).collect()))
    }
}

/// `[metrics] listen`: `"off"` (`None`) or `IP:PORT`.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct MetricsListen(Option<SocketAddr>);

impl Default for MetricsListen {
    fn default() -> Self {
        Self(Some(
            DEFAULT_METRICS_LISTEN
                .parse()
                .expect("the default listen address parses"),
        ))
    }
}

impl TryFrom<String> for MetricsListen {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a))).map_err(|_| {
            format!("metrics listen address `{s}` is not IP:PORT (e.g. 127.0.0.1:9960) or \"off\"")
        })
    }
}

/// A rule's `country`: the ISO 3166 code, expanded to its calling prefixes as it is read.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct CountryPrefixes {
    alpha2: String,
    prefixes: Vec<Prefix>,
}

impl TryFrom<String> for CountryPrefixes {
    type Error = String;

    fn try_from(code: String) -> Result<Self, String> {
        let expanded = country::expand(&code).map_err(|e| e.to_string())?;
        let prefixes = expanded
            .prefixes
            .iter()
            .map(|d| format!("+{d}").parse::<Prefix>())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            alpha2: expanded.alpha2,
            prefixes,
        })
    }
}

/// Reads and validates `path` (see [`read`] for what is refused before parsing).
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = read(path)?;
    parse(path, &text)
}

/// The largest config or import file sipguard reads. A config with a million rules in the
/// documented format, each with a short comment, is 81.8 MB (78 MiB; the test
/// `a_million_rules_fit_under_the_cap` measures it), so 64 MiB would be too small; 128 MiB
/// leaves room for longer comments. A file above the cap is refused before it is read.
pub const MAX_FILE_BYTES: u64 = 128 << 20;

/// Reads a config or import file, refusing (with a message that says what to do):
/// - anything but a regular file: a FIFO would block the reader forever, `/dev/zero` would
///   never end. It is opened with `O_NONBLOCK` (a FIFO without a writer does not block the
///   open) and checked with `fstat` on the open descriptor, so nothing is swapped in between;
/// - a file above [`MAX_FILE_BYTES`] (and at most that much is read, should it grow);
/// - a file that others could have written, as sshd's StrictModes refuses such keys: one
///   writable by group or others, one owned by a user other than root or the one sipguard runs
///   as, or one in a directory (on the way from `/`) that others may write without the sticky
///   bit, whose files anyone may replace.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    use std::{
        io::Read as _,
        os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    };

    let shown = path.display().to_string();
    let read_err = |e: std::io::Error| ConfigError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(ConfigError::NotRegular { path: shown, kind });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: shown,
            size: size_text(meta.len()),
        });
    }
    check_owner_and_mode(path, meta.uid(), meta.mode())?;
    check_directories(path)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: shown,
            size: format!("more than {}", size_text(MAX_FILE_BYTES)),
        });
    }
    Ok(text)
}

/// `70.0 MiB` (or bytes, for small sizes).
fn size_text(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// Refuses a file writable by group or others, or owned by someone but root and us.
fn check_owner_and_mode(path: &Path, uid: u32, mode: u32) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    if mode & 0o022 != 0 {
        return Err(ConfigError::Insecure {
            path: shown.clone(),
            problem: format!(
                "is writable by {} (mode {:04o}), so others could change the rules",
                if mode & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                },
                mode & 0o7777
            ),
            fix: format!("chmod go-w {shown}"),
        });
    }
    // SAFETY: geteuid has no failure mode and touches no memory of ours.
    let me = unsafe { libc::geteuid() };
    if uid != 0 && uid != me {
        return Err(ConfigError::Insecure {
            path: shown.clone(),
            problem: format!(
                "is owned by uid {uid}, neither root nor the user sipguard runs as (uid {me})"
            ),
            fix: format!("chown root {shown}"),
        });
    }
    Ok(())
}

/// Refuses a file in a directory that others may write without the sticky bit (anyone could
/// replace the file), from its parent up to `/`.
fn check_directories(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;

    let Ok(full) = fs::canonicalize(path) else {
        return Ok(());
    };
    for dir in full.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        if mode & 0o002 != 0 && mode & libc::S_ISVTX == 0 {
            let d = dir.display().to_string();
            return Err(ConfigError::Insecure {
                path: path.display().to_string(),
                problem: format!(
                    "is in {d}, a directory anyone may write (mode {:04o}, no sticky bit), so anyone could replace it",
                    mode & 0o7777
                ),
                fix: format!("chmod o-w {d}"),
            });
        }
    }
    Ok(())
}

/// Validates config text; `path` is only used in messages and kept in the result.
///
/// serde checks each value (see the types above); what is left here are the checks across
/// values: a rule's prefix or country and its action, conflicts between rules, the rule count
/// against `max_rules`, and the settings as a whole.
pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let shown = path.display().to_string();
    let lines = LineIndex::new(text);
    let at = |line: usize, message: String| ConfigError::At {
        path: shown.clone(),
        line,
        message,
    };
    let whole = |message: String| ConfigError::File {
        path: shown.clone(),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => at(lines.line_of(span.start), message),
            None => whole(message),
        }
    })?;

    let has_settings = raw.settings.is_some();
    let reject = match &raw.settings {
        Some(RawSettings {
            reject_code,
            reject_reason,
            ..
        }) if reject_code.is_some() || reject_reason.is_some() => {
            status_of(reject_code.clone(), reject_reason.clone(), &lines, &at)?
        }
        _ => Status::forbidden(),
    };
    let (settings, fail_mode) = raw
        .settings
        .map(RawSettings::into_settings)
        .unwrap_or_default();
    // Anything the kernel config would refuse, refused here with the file's name.
    settings.to_config().map_err(|e| whole(e.to_string()))?;

    let quarantine = raw
        .quarantine
        .map(|q| quarantine_of(q, &lines, &at))
        .transpose()?;
    let mut rules = RuleSet::new();
    add_rules(&mut rules, GLOBAL_POLICY, raw.rule, &lines, &at)?;
    let mut warnings = Vec::new();
    let customers = customers(
        &mut rules,
        raw.policy,
        raw.customer,
        &lines,
        &at,
        &mut warnings,
    )?;
    // A config file's rules must fit its own max_rules. An import file (no [settings]) is
    // checked against the live maps' size when it is applied.
    let limit = if has_settings {
        settings.max_rules
    } else {
        guard_common::MAX_RULES_LIMIT
    };
    if rules.len() > limit as usize {
        return Err(whole(format!(
            "{} rules: the rule map holds at most {limit}{}",
            rules.len(),
            if has_settings {
                " (max_rules in [settings])"
            } else {
                ""
            }
        )));
    }
    Ok(ConfigFile {
        path: path.to_path_buf(),
        settings,
        fail_mode,
        rules,
        has_settings,
        events: raw.events,
        metrics: raw.metrics.listen.0,
        top_rules: raw.metrics.top_rules.map_or(DEFAULT_TOP_RULES, |n| n.0),
        top_customers: raw
            .metrics
            .top_customers
            .map_or(DEFAULT_TOP_CUSTOMERS, |n| n.0),
        customers,
        warnings,
        reject,
        quarantine,
    })
}

/// Adds `raw` rules to `rules` under `policy`: a rule needs an action and a prefix or a
/// country; the same prefix twice with different actions is a conflict.
fn add_rules(
    rules: &mut RuleSet,
    policy: u16,
    raw: Vec<Spanned<RawRule>>,
    lines: &LineIndex,
    at: &dyn Fn(usize, String) -> ConfigError,
) -> Result<(), ConfigError> {
    // Where each prefix was defined, for conflict messages.
    let mut defined_at: BTreeMap<Prefix, usize> = BTreeMap::new();
    for r in raw {
        let line = lines.line_of(r.span().start);
        let RawRule {
            prefix,
            country,
            action,
            comment,
            reject_code,
            reject_reason,
            limit,
            burst,
            repeat_limit,
            over_limit,
        } = r.into_inner();
        let limits = limits_of(limit, burst, repeat_limit, over_limit, lines, at)?;
        let Some(Parsed(action)) = action else {
            return Err(at(
                line,
                "rule has no `action` (block, allow, monitor or reject)".into(),
            ));
        };
        let status = if reject_code.is_some() || reject_reason.is_some() {
            let spanned = reject_code
                .as_ref()
                .map(|c| c.span().start)
                .or(reject_reason.as_ref().map(|r| r.span().start))
                .unwrap_or_default();
            if action != Action::Reject {
                return Err(at(
                    lines.line_of(spanned),
                    format!(
                        "reject_code and reject_reason belong to `reject` rules; this rule is `{action}`"
                    ),
                ));
            }
            Some(status_of(reject_code, reject_reason, lines, at)?)
        } else {
            None
        };
        let (prefixes, country) = match (prefix, country) {
            (Some(p), None) => (vec![p], None),
            (None, Some(c)) => {
                let c = c.into_inner();
                (c.prefixes, Some(c.alpha2))
            }
            (Some(_), Some(c)) => {
                return Err(at(
                    lines.line_of(c.span().start),
                    "a rule has either `prefix` or `country`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(at(line, "rule has neither `prefix` nor `country`".into()));
            }
        };
        for prefix in prefixes {
            let prefix = prefix.in_policy(policy);
            if let Some(old) = rules.get(&prefix) {
                if old.action != action {
                    return Err(at(
                        line,
                        format!(
                            "rule conflict: {prefix} is `{}` here but `{}` at line {}",
                            action.as_str(),
                            old.action.as_str(),
                            defined_at[&prefix]
                        ),
                    ));
                }
                continue;
            }
            defined_at.insert(prefix.clone(), line);
            rules.insert(
                prefix,
                Rule {
                    action,
                    comment: comment.clone(),
                    country: country.clone(),
                    origin: Origin::Config,
                    status: status.clone(),
                    limits: limits.clone(),
                },
            );
        }
    }
    Ok(())
}

/// A rule's `limit`, `burst`, `repeat_limit` and `over_limit`, checked.
fn limits_of(
    limit: Option<Spanned<String>>,
    burst: Option<Spanned<i64>>,
    repeat_limit: Option<Spanned<String>>,
    over_limit: Option<Spanned<String>>,
    lines: &LineIndex,
    at: &dyn Fn(usize, String) -> ConfigError,
) -> Result<Option<RuleLimits>, ConfigError> {
    let rate = |v: Spanned<String>| -> Result<Rate, ConfigError> {
        let line = lines.line_of(v.span().start);
        v.into_inner()
            .parse()
            .map_err(|e: RateError| at(line, e.to_string()))
    };
    let (burst_at, over_at) = (
        burst.as_ref().map(|b| lines.line_of(b.span().start)),
        over_limit.as_ref().map(|o| lines.line_of(o.span().start)),
    );
    let limit = limit.map(rate).transpose()?;
    let repeat_limit = repeat_limit.map(rate).transpose()?;
    let burst = match burst {
        Some(b) => {
            let line = lines.line_of(b.span().start);
            let n = *b.get_ref();
            if limit.is_none() {
                return Err(at(line, "burst belongs to a rule with a `limit`".into()));
            }
            match u32::try_from(n) {
                Ok(n @ 1..) => Some(n),
                _ => return Err(at(line, format!("burst {n}: must be at least 1"))),
            }
        }
        None => None,
    };
    let over = match over_limit {
        Some(o) => {
            let line = lines.line_of(o.span().start);
            let text = o.into_inner();
            match text.parse::<Action>() {
                Ok(a @ (Action::Block | Action::Reject | Action::Monitor)) => a,
                _ => {
                    return Err(at(
                        line,
                        format!("over_limit `{text}`: use block, reject or monitor"),
                    ));
                }
            }
        }
        None => Action::Block,
    };
    if limit.is_none() && repeat_limit.is_none() {
        if let Some(line) = over_at.or(burst_at) {
            return Err(at(
                line,
                "over_limit belongs to a rule with a `limit` or `repeat_limit`".into(),
            ));
        }
        return Ok(None);
    }
    Ok(Some(RuleLimits {
        limit,
        burst,
        repeat_limit,
        over_limit: over,
    }))
}

/// `[quarantine]`, checked: a trigger (`calls` or `over_limit`), a window and a duration of 1 s
/// to 30 days, a scope, an action (block or reject) and its response.
fn quarantine_of(
    raw: Spanned<RawQuarantine>,
    lines: &LineIndex,
    at: &dyn Fn(usize, String) -> ConfigError,
) -> Result<QuarantineSettings, ConfigError> {
    let section = lines.line_of(raw.span().start);
    let q = raw.into_inner();
    let count = |v: Option<Spanned<i64>>, what: &str| -> Result<u32, ConfigError> {
        match v {
            None => Ok(0),
            Some(v) => {
                let line = lines.line_of(v.span().start);
                u32::try_from(*v.get_ref())
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| at(line, format!("{what} {}: must be at least 1", v.get_ref())))
            }
        }
    };
    let calls = count(q.calls, "calls")?;
    let over_limit = count(q.over_limit, "over_limit")?;
    if calls == 0 && over_limit == 0 {
        return Err(at(
            section,
            "[quarantine] has no trigger: give `calls` (more than N calls in scope within the window) or `over_limit` (more than N calls over a limit), or both".into(),
        ));
    }
    let duration = |v: Option<Spanned<String>>, default: u64| -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) => {
                let line = lines.line_of(v.span().start);
                parse_duration(v.get_ref()).map_err(|e| at(line, e.to_string()))
            }
        }
    };
    let window_secs = duration(q.window, 600)?;
    let duration_secs = duration(q.duration, 3600)?;
    let scope = match q.scope {
        None => Scope::International,
        Some(v) => match v.get_ref().as_str() {
            "international" => Scope::International,
            "all" => Scope::All,
            other => {
                return Err(at(
                    lines.line_of(v.span().start),
                    format!("scope `{other}`: use international or all"),
                ));
            }
        },
    };
    let action = match q.action {
        None => Action::Reject,
        Some(v) => match v.get_ref().parse::<Action>() {
            Ok(a @ (Action::Block | Action::Reject)) => a,
            _ => {
                return Err(at(
                    lines.line_of(v.span().start),
                    format!("quarantine action `{}`: use reject or block", v.get_ref()),
                ));
            }
        },
    };
    let status = status_of(q.reject_code, q.reject_reason, lines, at)?;
    Ok(QuarantineSettings {
        calls,
        over_limit,
        window_secs,
        duration_secs,
        scope,
        action,
        status,
    })
}

/// A reject status from `reject_code` / `reject_reason` (each defaulting to 403 Forbidden's).
fn status_of(
    code: Option<Spanned<i64>>,
    reason: Option<Spanned<String>>,
    lines: &LineIndex,
    at: &dyn Fn(usize, String) -> ConfigError,
) -> Result<Status, ConfigError> {
    let d = Status::forbidden();
    let line = |pos: Option<usize>| lines.line_of(pos.unwrap_or_default());
    let code_at = code.as_ref().map(|c| c.span().start);
    let reason_at = reason.as_ref().map(|r| r.span().start);
    let code = code.map_or(i64::from(d.code), |c| *c.get_ref());
    let reason = reason.map_or(d.reason.clone(), |r| r.into_inner());
    Status::new(code, &reason).map_err(|e| match e {
        StatusError::Code(_) => at(line(code_at), e.to_string()),
        _ => at(line(reason_at), e.to_string()),
    })
}

/// `[[policy]]` (their rules go into `rules` under the policy's id) and `[[customer]]`.
fn customers(
    rules: &mut RuleSet,
    raw_policies: Vec<Spanned<RawPolicy>>,
    raw_customers: Vec<Spanned<RawCustomer>>,
    lines: &LineIndex,
    at: &dyn Fn(usize, String) -> ConfigError,
    warnings: &mut Vec<String>,
) -> Result<Customers, ConfigError> {
    let mut out = Customers::default();
    if raw_policies.len() > guard_common::MAX_POLICIES as usize {
        let line = lines.line_of(
            raw_policies[guard_common::MAX_POLICIES as usize]
                .span()
                .start,
        );
        return Err(at(
            line,
            format!("too many policies: at most {}", guard_common::MAX_POLICIES),
        ));
    }
    let mut policy_at: BTreeMap<String, usize> = BTreeMap::new();
    for (i, p) in raw_policies.into_iter().enumerate() {
        let line = lines.line_of(p.span().start);
        let RawPolicy {
            name,
            inherit,
            comment,
            rule,
        } = p.into_inner();
        let Some(name) = name else {
            return Err(at(line, "policy has no `name`".into()));
        };
        let name_line = lines.line_of(name.span().start);
        let name = name.into_inner();
        check_name("policy", &name).map_err(|m| at(name_line, m))?;
        if let Some(first) = policy_at.insert(name.clone(), name_line) {
            return Err(at(
                name_line,
                format!("duplicate policy name `{name}` (first at line {first})"),
            ));
        }
        let id = (i + 1) as u16;
        add_rules(rules, id, rule, lines, at)?;
        out.policies.push(Policy {
            name,
            id,
            inherit: inherit.unwrap_or(true),
            comment,
        });
    }
    let mut customer_at: BTreeMap<String, usize> = BTreeMap::new();
    // (VLAN, CIDR) -> (customer, line): a CIDR belongs to one customer per VLAN.
    let mut cidr_at: BTreeMap<(u16, IpNet), (String, usize)> = BTreeMap::new();
    for (i, c) in raw_customers.into_iter().enumerate() {
        let line = lines.line_of(c.span().start);
        let RawCustomer {
            name,
            sources,
            vlans,
            policy,
        } = c.into_inner();
        let Some(name) = name else {
            return Err(at(line, "customer has no `name`".into()));
        };
        let name_line = lines.line_of(name.span().start);
        let name = name.into_inner();
        check_name("customer", &name).map_err(|m| at(name_line, m))?;
        if let Some(first) = customer_at.insert(name.clone(), name_line) {
            return Err(at(
                name_line,
                format!("duplicate customer name `{name}` (first at line {first})"),
            ));
        }
        let policy = match policy {
            Some(p) => {
                let p_line = lines.line_of(p.span().start);
                let p = p.into_inner();
                if out.policy(&p).is_none() {
                    let known: Vec<&str> = out.policies.iter().map(|p| p.name.as_str()).collect();
                    return Err(at(
                        p_line,
                        format!(
                            "customer `{name}`: unknown policy `{p}` (policies: {})",
                            if known.is_empty() {
                                "none defined".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
                Some(p)
            }
            None => None,
        };
        let mut vlan_ids = Vec::new();
        for v in vlans {
            let v_line = lines.line_of(v.span().start);
            let v = v.into_inner();
            match u16::try_from(v) {
                Ok(id @ 1..=4094) => {
                    if !vlan_ids.contains(&id) {
                        vlan_ids.push(id);
                    }
                }
                _ => {
                    return Err(at(
                        v_line,
                        format!("customer `{name}`: VLAN {v} is outside 1..4094"),
                    ));
                }
            }
        }
        let mut nets = Vec::new();
        for src in sources {
            let s_line = lines.line_of(src.span().start);
            let text = src.into_inner();
            let net: IpNet = match text.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => match text.parse::<std::net::IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(at(
                            s_line,
                            format!(
                                "customer `{name}`: source `{text}` is not an IPv4 or IPv6 CIDR (e.g. 198.51.100.0/24, 2001:db8::/32)"
                            ),
                        ));
                    }
                },
            };
            if net.trunc() != net {
                return Err(at(
                    s_line,
                    format!(
                        "customer `{name}`: source `{text}` has host bits set (the network is {})",
                        net.trunc()
                    ),
                ));
            }
            let scopes: Vec<u16> = if vlan_ids.is_empty() {
                vec![0]
            } else {
                vlan_ids.clone()
            };
            for vlan in scopes {
                if let Some((other, other_line)) = cidr_at.get(&(vlan, net)) {
                    let on = if vlan == 0 {
                        String::new()
                    } else {
                        format!(" on VLAN {vlan}")
                    };
                    return Err(at(
                        s_line,
                        format!(
                            "customer `{name}`: source {net}{on} is already customer `{other}`'s (line {other_line})"
                        ),
                    ));
                }
                cidr_at.insert((vlan, net), (name.clone(), s_line));
            }
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        if nets.is_empty() {
            warnings.push(format!(
                "line {line}: customer `{name}` has no sources: no traffic is matched to it"
            ));
        }
        out.customers.push(Customer {
            name,
            id: (i + 1) as u32,
            sources: nets,
            vlans: vlan_ids,
            policy,
        });
    }
    Ok(out)
}

/// The built-in default config with its commented example customer and policy uncommented
/// (the demo runs it; a test checks it).
pub fn with_example_customer() -> String {
    let Some((head, example)) = EMBEDDED.split_once("# [[policy]]") else {
        return EMBEDDED.to_string();
    };
    let body: Vec<&str> = example
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| if l == "#" { "" } else { l })
        .collect();
    format!("{head}[[policy]]{}\n", body.join("\n"))
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
    fn the_default_configs_customer_example_works_uncommented() {
        assert!(
            EMBEDDED.contains("# [[policy]]"),
            "the commented example is there"
        );
        let c = p(&with_example_customer()).unwrap();
        assert_eq!(c.customers.customers.len(), 1);
        assert_eq!(c.customers.policies[0].name, "intl-barring");
        assert!(!c.customers.policies[0].inherit);
        assert!(
            c.rules
                .iter()
                .any(|(p, r)| p.policy == 1 && r.action == Action::Reject)
        );
        // As shipped, it is only a comment.
        assert!(p(EMBEDDED).unwrap().customers.is_empty());
    }

    #[test]
    fn the_default_configs_limit_and_quarantine_examples_work_uncommented() {
        let uncomment = |block: &str| -> String {
            block
                .lines()
                .map(|l| l.trim_start_matches('#').trim_start())
                .map(|l| l.split("  #").next().unwrap_or(l).trim_end())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (_, after) = EMBEDDED
            .split_once("# [quarantine]")
            .expect("the example is there");
        let block = after.split("\n\n").next().unwrap();
        let q = p(&uncomment(&format!("[quarantine]{block}")))
            .unwrap()
            .quarantine
            .expect("a quarantine");
        assert_eq!((q.over_limit, q.calls), (30, 200));
        assert_eq!((q.window_secs, q.duration_secs), (600, 3600));
        assert_eq!(q.action, Action::Reject);
        let limits: String = EMBEDDED
            .lines()
            .filter(|l| l.starts_with("#   ") && l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let rule = format!(
            "[[rule]]\nprefix = \"+\"\naction = \"allow\"\n{}",
            uncomment(&limits)
        );
        let c = p(&rule).unwrap();
        let l = c
            .rules
            .values()
            .next()
            .unwrap()
            .limits
            .clone()
            .expect("limits");
        assert_eq!(l.limit.unwrap().to_string(), "10/min");
        assert_eq!(l.burst, Some(5));
        assert_eq!(l.over_limit, Action::Reject);
        assert_eq!(l.repeat_limit.unwrap().to_string(), "3/10min");
        // As shipped, it is only a comment.
        assert!(p(EMBEDDED).unwrap().quarantine.is_none());
    }

    #[test]
    fn reject_statuses_are_checked_where_they_stand() {
        let cases: &[(&str, &str)] = &[
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"reject\"\nreject_code = 399\n",
                "t.toml:4: reject code 399 is outside 400..699",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"reject\"\nreject_code = 700\n",
                "t.toml:4: reject code 700 is outside 400..699",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"reject\"\nreject_reason = \"No\\r\\nX: y\"\n",
                "t.toml:4: reject reason contains '\\r'",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"reject\"\nreject_reason = \"Interdit é\"\n",
                "t.toml:4: reject reason contains 'é'",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"block\"\nreject_code = 603\n",
                "t.toml:4: reject_code and reject_reason belong to `reject` rules; this rule is `block`",
            ),
            (
                "[settings]\nreject_code = 200\n",
                "t.toml:2: reject code 200 is outside 400..699",
            ),
            (
                "[settings]\nincomplete_action = \"reject\"\n",
                "t.toml: incomplete_action = \"reject\"",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "for {text:?}\n got: {got}\nwant: {want}..."
            );
        }
        let c = p("[settings]\nreject_code = 603\nreject_reason = \"Decline\"\n[[rule]]\nprefix = \"+232\"\naction = \"reject\"\n[[rule]]\nprefix = \"+881\"\naction = \"reject\"\nreject_code = 480\nreject_reason = \"Temporarily Unavailable\"\n").unwrap();
        assert_eq!(c.reject.to_string(), "603 Decline");
        let status = |p: &str| c.rules[&p.parse::<Prefix>().unwrap()].status.clone();
        assert_eq!(status("+232"), None, "the default applies");
        assert_eq!(
            status("+881").unwrap().to_string(),
            "480 Temporarily Unavailable"
        );
    }

    #[test]
    fn customers_and_policies_errors_name_the_line() {
        let policy =
            "[[policy]]\nname = \"barred\"\n[[policy.rule]]\nprefix = \"+\"\naction = \"block\"\n";
        let cases: &[(&str, &str)] = &[
            (
                "[[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/24\"]\npolicy = \"nope\"\n",
                "t.toml:9: customer `a`: unknown policy `nope` (policies: barred)",
            ),
            (
                "[[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/33\"]\n",
                "t.toml:8: customer `a`: source `198.51.100.0/33` is not an IPv4 or IPv6 CIDR",
            ),
            (
                "[[customer]]\nname = \"a\"\nsources = [\"198.51.100.7/24\"]\n",
                "t.toml:8: customer `a`: source `198.51.100.7/24` has host bits set (the network is 198.51.100.0/24)",
            ),
            (
                "[[customer]]\nname = \"a\"\nsources = [\"2001:db8::1/32\"]\n",
                "t.toml:8: customer `a`: source `2001:db8::1/32` has host bits set (the network is 2001:db8::/32)",
            ),
            (
                "[[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/24\"]\n[[customer]]\nname = \"b\"\nsources = [\"203.0.113.0/24\", \"198.51.100.0/24\"]\n",
                "t.toml:11: customer `b`: source 198.51.100.0/24 is already customer `a`'s (line 8)",
            ),
            (
                "[[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/24\"]\nvlans = [4095]\n",
                "t.toml:9: customer `a`: VLAN 4095 is outside 1..4094",
            ),
            (
                "[[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/24\"]\nvlans = [0]\n",
                "t.toml:9: customer `a`: VLAN 0 is outside 1..4094",
            ),
            (
                "[[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/24\"]\n[[customer]]\nname = \"a\"\n",
                "t.toml:10: duplicate customer name `a` (first at line 7)",
            ),
            (
                "[[policy]]\nname = \"barred\"\n",
                "t.toml:7: duplicate policy name `barred` (first at line 2)",
            ),
            (
                "[[policy]]\nname = \"x\"\n[[policy.rule]]\nprefix = \"+44\"\naction = \"block\"\n[[policy.rule]]\nprefix = \"+44\"\naction = \"allow\"\n",
                "t.toml:11: rule conflict: +44 is `allow` here but `block` at line 8",
            ),
            (
                "[[policy]]\nname = \"bad name\"\n",
                "t.toml:7: policy name `bad name`: use 1 to 64 letters",
            ),
            (
                "[[customer]]\nsources = []\n",
                "t.toml:6: customer has no `name`",
            ),
        ];
        for (tail, want) in cases {
            let text = format!("{policy}{tail}");
            let got = err(&text);
            assert!(
                got.starts_with(want),
                "for {text:?}\n got: {got}\nwant: {want}..."
            );
        }
        // The same CIDR on different VLANs is two customers' (overlapping address plans).
        let c = p(&format!(
            "{policy}[[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/24\"]\nvlans = [100]\n\
             [[customer]]\nname = \"b\"\nsources = [\"198.51.100.0/24\"]\nvlans = [200]\npolicy = \"barred\"\n\
             [[customer]]\nname = \"empty\"\n"
        ))
        .unwrap();
        assert_eq!(c.customers.customers.len(), 3);
        assert_eq!(c.customers.entries().len(), 2);
        assert_eq!(
            c.warnings,
            ["line 15: customer `empty` has no sources: no traffic is matched to it"]
        );
        // The policy's rule is in the rule set under its id, apart from the global rules.
        assert_eq!(c.rules.len(), 1);
        assert!(c.rules.keys().all(|p| p.policy == 1));
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
            (
                "[settings]\nmax_rules = -1\n",
                "t.toml:2: max_rules: -1 is out of range (1 to 4000000)",
            ),
            (
                "[settings]\nevent_rate = 1000001\n",
                "t.toml:2: event_rate: 1000001 is out of range (0 to 1000000)",
            ),
            (
                "[settings]\nevent_burst = -5\n",
                "t.toml:2: event_burst: -5 is out of range (0 to 1000000)",
            ),
            (
                "[settings]\nsip_ports = [-1]\n",
                "t.toml:2: sip_ports: -1 is not a UDP port (1 to 65535)",
            ),
            ("[settings]\nsip_ports = 5060\n", "t.toml:2: invalid type"),
            (
                "[settings]\ninternational_prefixes = [\"00\", \"011\", \"010\", \"0011\", \"001\"]\n",
                "t.toml:2: international_prefixes: 5 given, at most 4 are supported",
            ),
            (
                "[settings]\ninternational_prefixes = [\"123456789\"]\n",
                "t.toml:2: international prefix `123456789` must be 1 to 8 digits",
            ),
            (
                "[settings]\nfail_mode = \"crash\"\n",
                "t.toml:2: unknown fail_mode `crash` (expected keep or detach)",
            ),
            (
                "[settings]\ntrack_calls = \"yes\"\n",
                "t.toml:2: invalid type",
            ),
            (
                "[metrics]\nlisten = \"localhost\"\n",
                "t.toml:2: metrics listen address `localhost` is not IP:PORT",
            ),
            ("[metrics]\nlisten = 9960\n", "t.toml:2: invalid type"),
            (
                "[metrics]\ntop_rules = -1\n",
                "t.toml:2: top_rules: -1 is out of range (0 to 100000)",
            ),
            (
                "[metrics]\ntop_rules = 100001\n",
                "t.toml:2: top_rules: 100001 is out of range (0 to 100000)",
            ),
            (
                "[events]\nstdout = true\nfiles = \"/tmp/e\"\n",
                "t.toml:3: unknown field `files`",
            ),
            (
                "[[rule]]\ncountry = \"J\"\naction = \"block\"\n",
                "t.toml:2: country `J`: expected an ISO 3166-1 alpha-2 code",
            ),
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"block\"\ncomment = 7\n",
                "t.toml:4: invalid type",
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

    /// Errors deep in a file name the line of the bad value itself, not of its table.
    #[test]
    fn errors_deep_in_the_file_name_the_value_line() {
        let head = "# sipguard\n\n[settings]\nkernel_debug_log = false\nfail_mode = \"keep\"\n\n";
        assert_eq!(head.lines().count(), 6);
        let cases: &[(&str, &str)] = &[
            ("max_rules = 0\n", "t.toml:7: max_rules: 0"),
            (
                "track_calls = true\n\nevent_rate = 2000000\n",
                "t.toml:9: event_rate: 2000000",
            ),
            (
                "sip_ports = [\n  5060,\n  70000,\n]\n",
                "t.toml:9: sip_ports: 70000 is not a UDP port (1 to 65535)",
            ),
            (
                "international_prefixes = [\n  \"00\",\n  \"0x\",\n]\n",
                "t.toml:9: international prefix `0x`",
            ),
            ("\n\nmode = \"on\"\n", "t.toml:9: unknown mode `on`"),
            (
                "[[rule]]\nprefix = \"+232\"\naction = \"drop\"\n",
                "t.toml:9: unknown action `drop`",
            ),
            (
                "[[rule]]\naction = \"block\"\ncountry = \"ZZ\"\n",
                "t.toml:9: unknown country `ZZ`",
            ),
            (
                "[[rule]]\naction = \"block\"\nprefix = \"+1a\"\n",
                "t.toml:9: prefix `+1a`",
            ),
            (
                "[[rule]]\naction = \"block\"\nprefix = \"+1\"\ncountry = \"JM\"\n",
                "t.toml:10: a rule has either `prefix` or `country`, not both",
            ),
            (
                "[[rule]]\nprefix = \"+1\"\naction = \"block\"\n[[rule]]\nprefix = \"+2\"\n",
                "t.toml:10: rule has no `action`",
            ),
            (
                "[metrics]\n\nlisten = \"127.0.0.1\"\n",
                "t.toml:9: metrics listen address `127.0.0.1`",
            ),
            (
                "[[rule]]\nprefix = \"+1876\"\naction = \"allow\"\n\n[[rule]]\ncountry = \"JM\"\naction = \"block\"\n",
                "t.toml:11: rule conflict: +1876 is `block` here but `allow` at line 7",
            ),
        ];
        for (tail, want) in cases {
            let text = format!("{head}{tail}");
            let got = err(&text);
            assert!(
                got.starts_with(want),
                "for {text:?}\n got: {got}\nwant: {want}..."
            );
        }
    }

    #[test]
    fn events_and_metrics_settings() {
        let c = p("").unwrap();
        assert_eq!(c.events, EventOutputs::default());
        assert_eq!(c.metrics, Some(DEFAULT_METRICS_LISTEN.parse().unwrap()));
        let c = p(
            "[events]\nfile = \"/var/log/sipguard.jsonl\"\nstdout = true\n[metrics]\nlisten = \"off\"\n",
        )
        .unwrap();
        assert_eq!(
            c.events,
            EventOutputs {
                file: Some("/var/log/sipguard.jsonl".into()),
                stdout: true
            }
        );
        assert_eq!(c.metrics, None);
        let c = p("[events]\n[metrics]\nlisten = \"[::1]:9000\"\n").unwrap();
        assert_eq!(c.events, EventOutputs::default());
        assert_eq!(c.metrics, Some("[::1]:9000".parse().unwrap()));
        assert_eq!(c.top_rules, DEFAULT_TOP_RULES);
        let c = p("[metrics]\ntop_rules = 0\n").unwrap();
        assert_eq!((c.metrics.is_some(), c.top_rules), (true, 0));
        assert_eq!(
            p("[metrics]\ntop_rules = 100000\n").unwrap().top_rules,
            100_000
        );
    }

    #[test]
    fn every_setting_is_read() {
        let c = p("[settings]\nsip_ports = [5060, 65535]\ninternational_prefixes = [\"00\", \"011\", \"010\", \"12345678\"]\nmode = \"monitor\"\nfail_mode = \"keep\"\nkernel_debug_log = true\ntrack_calls = false\nevent_rate = 0\nevent_burst = 1000000\nmax_rules = 4000000\nincomplete_action = \"block\"\ntiny_first_fragment = \"pass\"\nlimit_buckets = 2048\n").unwrap();
        assert_eq!(
            c.settings,
            Settings {
                sip_ports: vec![5060, 65535],
                intl_prefixes: vec!["00".into(), "011".into(), "010".into(), "12345678".into()],
                mode: guard_common::Mode::Monitor,
                kernel_debug_log: true,
                track_calls: false,
                event_rate: 0,
                event_burst: 1_000_000,
                max_rules: guard_common::MAX_RULES_LIMIT,
                incomplete_action: Action::Block,
                tiny_first_fragment: TinyFragment::Pass,
                limit_buckets: 2048,
            }
        );
        assert!(c.has_settings);
        let e = err("[settings]\n\ntiny_first_fragment = \"keep\"\n");
        assert!(
            e.starts_with("t.toml:3: unknown tiny_first_fragment `keep` (expected drop or pass)"),
            "{e}"
        );
        let e = err("[settings]\nincomplete_action = \"drop\"\n");
        assert!(
            e.starts_with(
                "t.toml:2: unknown action `drop` (expected block, allow, monitor or reject)"
            ),
            "{e}"
        );
        assert_eq!(c.fail_mode, FailMode::Keep);
        // A [settings] table with nothing in it is all defaults.
        let c = p("[settings]\n").unwrap();
        assert_eq!(c.settings, Settings::default());
        assert!(c.has_settings);
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

    /// A fresh directory under the temp dir (sticky, so its files may be read).
    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-file-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    const ONE_RULE: &str = "[[rule]]\nprefix = \"+232\"\naction = \"block\"\n";

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tmp_dir("fifo");
        let fifo = d.join("sipguard.toml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer ever opens the FIFO: a blocking open or read would never return.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(load(&path).map(|_| ())).unwrap());
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("load of a FIFO blocked")
            .expect_err("a FIFO was read");
        assert_eq!(
            e.to_string(),
            format!(
                "{} is a FIFO, not a regular file: sipguard reads only regular files",
                fifo.display()
            )
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn devices_and_directories_are_refused() {
        let e = load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(
            e,
            "/dev/zero is a character device, not a regular file: sipguard reads only regular files"
        );
        let d = tmp_dir("dir");
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("is a directory, not a regular file"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_above_the_cap_is_refused_unread() {
        let d = tmp_dir("big");
        let f = d.join("sipguard.toml");
        // Sparse: 134 MiB that take no disk and would take no time to refuse.
        let file = fs::File::create(&f).unwrap();
        file.set_len(MAX_FILE_BYTES + (6 << 20)).unwrap();
        let t = std::time::Instant::now();
        let e = load(&f).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{} is 134 MiB, above the 128 MiB cap on config and import files",
                f.display()
            )
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // At the cap it is read (and then fails to parse, being NULs).
        file.set_len(1 << 20).unwrap();
        assert!(
            matches!(load(&f), Err(ConfigError::At { .. })),
            "{:?}",
            load(&f)
        );
        let _ = fs::remove_dir_all(&d);
    }

    /// The documented format, every rule with a comment: what a million rules take.
    fn million_rule_config() -> String {
        let mut out = String::from("[settings]\nmax_rules = 1000000\n\n");
        for i in 0..1_000_000u32 {
            // 7- to 9-digit prefixes, as an operator's number ranges.
            let prefix = 2_000_000 + u64::from(i) * 7_919 % 997_999_999;
            out.push_str(&format!(
                "[[rule]]\nprefix = \"+{prefix}\"\naction = \"block\"\ncomment = \"premium range {i}\"\n\n"
            ));
        }
        out
    }

    #[test]
    fn a_million_rules_fit_under_the_cap() {
        let text = million_rule_config();
        println!(
            "1,000,000 rules: {} bytes ({})",
            text.len(),
            size_text(text.len() as u64)
        );
        assert!((text.len() as u64) < MAX_FILE_BYTES, "{}", text.len());
    }

    #[test]
    fn a_file_others_can_write_is_refused_with_the_fix() {
        let d = tmp_dir("mode");
        let f = d.join("sipguard.toml");
        fs::write(&f, ONE_RULE).unwrap();
        chmod(&f, 0o644);
        assert_eq!(load(&f).unwrap().rules.len(), 1);
        chmod(&f, 0o600);
        assert!(load(&f).is_ok());
        chmod(&f, 0o666);
        let e = load(&f).unwrap_err().to_string();
        let shown = f.display();
        assert_eq!(
            e,
            format!(
                "{shown} is writable by others (mode 0666), so others could change the rules: refused, as sshd refuses such keys; fix it with `chmod go-w {shown}`"
            )
        );
        chmod(&f, 0o664);
        let e = load(&f).unwrap_err().to_string();
        assert!(
            e.contains("is writable by its group (mode 0664)") && e.contains("chmod go-w"),
            "{e}"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        // SAFETY: no failure mode.
        let me = unsafe { libc::geteuid() };
        let e = check_owner_and_mode(Path::new("/x.toml"), me + 1, 0o100644)
            .unwrap_err()
            .to_string();
        if me != 0 {
            assert!(check_owner_and_mode(Path::new("/x.toml"), 0, 0o100644).is_ok());
        }
        assert_eq!(
            e,
            format!(
                "/x.toml is owned by uid {}, neither root nor the user sipguard runs as (uid {me}): refused, as sshd refuses such keys; fix it with `chown root /x.toml`",
                me + 1
            )
        );
        assert!(check_owner_and_mode(Path::new("/x.toml"), me, 0o100644).is_ok());
        if me == 0 {
            // A real file of another owner.
            let d = tmp_dir("owner");
            let f = d.join("sipguard.toml");
            fs::write(&f, ONE_RULE).unwrap();
            std::os::unix::fs::chown(&f, Some(4_242), None).unwrap();
            let e = load(&f).unwrap_err().to_string();
            assert!(e.contains("is owned by uid 4242"), "{e}");
            let _ = fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn a_file_in_a_directory_anyone_may_write_is_refused_unless_sticky() {
        let d = tmp_dir("opendir");
        let f = d.join("sipguard.toml");
        fs::write(&f, ONE_RULE).unwrap();
        chmod(&f, 0o644);
        chmod(&d, 0o777);
        let e = load(&f).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "is in {}, a directory anyone may write (mode 0777, no sticky bit)",
                d.display()
            )) && e.contains(&format!("chmod o-w {}", d.display())),
            "{e}"
        );
        // Sticky (as /tmp): only the file's owner may replace it.
        chmod(&d, 0o1777);
        assert!(load(&f).is_ok());
        chmod(&d, 0o755);
        assert!(load(&f).is_ok());
        let _ = fs::remove_dir_all(&d);
    }
}
