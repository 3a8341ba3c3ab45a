//! The fleet settings (`/etc/sipguard/fleet.toml`, a `[fleet]` table): where this router finds
//! the fleet's rule document in etcd, its own name there, and how it authenticates. They are
//! this router's own and never part of the distributed document, which is a whole
//! `sipguard.toml` (rules, policies, customers, limits, quarantine) stored at
//! `<prefix>/config`.
//!
//! Keys under the prefix:
//! - `<prefix>/config`: the document; its etcd mod revision is the fleet's rule version;
//! - `<prefix>/status/<node>`: what a router applied (JSON), under a lease that expires when
//!   the router is gone;
//! - `<prefix>/nodes/<node>`: a router that has ever reported (no lease), so that a router whose
//!   lease expired shows as gone instead of vanishing.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::file::{ConfigError, read};
use crate::model::limits::parse_duration;

/// Where `run --fleet` and `sipguard fleet` look by default.
pub const DEFAULT_PATH: &str = "/etc/sipguard/fleet.toml";

/// The state-directory file holding the last document this router applied, and its record.
pub const APPLIED_DOC: &str = "fleet-config.toml";
pub const APPLIED_RECORD: &str = "fleet.json";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// The key prefix, without a trailing slash (`/sipguard/prod`).
    pub prefix: String,
    /// This router's name under `<prefix>/status/`.
    pub node: String,
    pub tls: Option<FleetTls>,
    pub user: Option<(String, String)>,
    /// The lease of the status key: a router silent this long shows as gone.
    pub status_ttl: Duration,
    /// Each etcd request's timeout (and the connect timeout).
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetTls {
    pub ca: PathBuf,
    /// The client certificate and key (etcd's `--client-cert-auth`).
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    fleet: RawFleet,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    endpoints: Vec<String>,
    prefix: String,
    node: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    status_ttl: Option<String>,
    timeout: Option<String>,
}

impl FleetConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let f = raw.fleet;
        if f.endpoints.is_empty() {
            return Err(bad(
                "[fleet] endpoints: give at least one etcd endpoint".into()
            ));
        }
        for e in &f.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(bad(format!(
                    "[fleet] endpoint `{e}`: write it as http://HOST:PORT or https://HOST:PORT"
                )));
            }
        }
        let prefix = f.prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') || prefix.len() < 2 {
            return Err(bad(format!(
                "[fleet] prefix `{}`: a key path such as /sipguard/prod",
                f.prefix
            )));
        }
        let node = match f.node {
            Some(n) => n,
            None => {
                hostname().ok_or_else(|| bad("[fleet] node: not given and no hostname".into()))?
            }
        };
        if node.is_empty() || node.contains('/') || node.chars().any(char::is_whitespace) {
            return Err(bad(format!(
                "[fleet] node `{node}`: a name without `/` or spaces"
            )));
        }
        let https = f.endpoints.iter().any(|e| e.starts_with("https://"));
        let tls = match (f.ca, f.cert, f.key) {
            (None, None, None) => None,
            (Some(ca), None, None) => Some(FleetTls { ca, identity: None }),
            (Some(ca), Some(cert), Some(key)) => Some(FleetTls {
                ca,
                identity: Some((cert, key)),
            }),
            (None, _, _) => {
                return Err(bad(
                    "[fleet] cert and key need ca (the etcd CA certificate)".into(),
                ));
            }
            _ => return Err(bad("[fleet] cert and key go together".into())),
        };
        if https && tls.is_none() {
            return Err(bad(
                "[fleet] https endpoints need ca = \"/path/to/etcd-ca.pem\"".into(),
            ));
        }
        if tls.is_some() && !https {
            return Err(bad(
                "[fleet] ca/cert/key are given but the endpoints are http://: use https://".into(),
            ));
        }
        let password = match (f.password, f.password_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "[fleet] give password or password_file, not both".into()
                ));
            }
            (Some(p), None) => Some(p),
            (None, Some(file)) => Some(read(&file)?.trim_end_matches(['\n', '\r']).to_string()),
            (None, None) => None,
        };
        let user = match (f.user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err(bad("[fleet] user and password go together".into())),
        };
        let duration =
            |v: Option<String>, default: u64, what: &str| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(Duration::from_secs(default)),
                    Some(s) => parse_duration(&s)
                        .map(Duration::from_secs)
                        .map_err(|e| bad(format!("[fleet] {what}: {e}"))),
                }
            };
        let status_ttl = duration(f.status_ttl, 10, "status_ttl")?;
        if status_ttl < Duration::from_secs(2) {
            return Err(bad("[fleet] status_ttl: 2s at least".into()));
        }
        Ok(Self {
            endpoints: f.endpoints,
            prefix,
            node,
            tls,
            user,
            status_ttl,
            timeout: duration(f.timeout, 5, "timeout")?,
        })
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn status_prefix(&self) -> String {
        format!("{}/status/", self.prefix)
    }

    pub fn status_key(&self) -> String {
        format!("{}{}", self.status_prefix(), self.node)
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node_key(&self) -> String {
        format!("{}{}", self.nodes_prefix(), self.node)
    }

    /// `endpoints prefix`, for messages.
    pub fn describe(&self) -> String {
        format!("etcd {} {}", self.endpoints.join(","), self.prefix)
    }
}

/// What the state directory records of fleet mode: where the rules come from and the revision
/// in force. Its presence makes `rules add` and `customers add` refuse (the fleet's document is
/// the truth; a local edit would be lost, or would make this router differ unseen).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecord {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node: String,
    /// The etcd revision of the document in force (0: none yet).
    pub revision: i64,
    pub applied_unix: u64,
}

impl FleetRecord {
    /// The refusal of a local edit on a fleet router.
    pub fn refusal(&self, what: &str) -> String {
        format!(
            "this router takes its rules from etcd ({} {}, node {}): a local {what} would differ from the fleet's document unseen and be lost at its next revision. Edit the fleet's document instead: `sipguard fleet get > sipguard.toml`, edit it, `sipguard fleet push sipguard.toml`",
            self.endpoints.join(","),
            self.prefix,
            self.node
        )
    }
}

/// What a router reports at `<prefix>/status/<node>` (and keeps in its state directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// The etcd revision of the document in force (0: none from etcd yet).
    pub revision: i64,
    /// When it was applied (Unix seconds).
    pub applied_unix: u64,
    /// Rules in force (config and runtime edits).
    pub rules: usize,
    /// Runtime edits laid over the document (from before fleet mode).
    pub local_edits: usize,
    /// The last revision refused, and why (None: the last one seen was applied).
    pub error: Option<NodeError>,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeError {
    pub revision: i64,
    pub message: String,
}

/// The machine's host name.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .ok()
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FleetConfig, String> {
        FleetConfig::parse(Path::new("fleet.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_plain_and_a_tls_fleet_parse() {
        let f = parse(
            "[fleet]\nendpoints = [\"http://198.51.100.1:2379\"]\nprefix = \"/sipguard/prod/\"\nnode = \"edge-1\"\n",
        )
        .unwrap();
        assert_eq!(f.config_key(), "/sipguard/prod/config");
        assert_eq!(f.status_key(), "/sipguard/prod/status/edge-1");
        assert_eq!(f.status_ttl, Duration::from_secs(10));
        let t = parse(
            "[fleet]\nendpoints = [\"https://198.51.100.1:2379\"]\nprefix = \"/p\"\nnode = \"n\"\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nuser = \"u\"\npassword = \"pw\"\nstatus_ttl = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(
            t.tls.unwrap().identity,
            Some(("/c.pem".into(), "/k.pem".into()))
        );
        assert_eq!(t.user, Some(("u".into(), "pw".into())));
    }

    #[test]
    fn bad_fleet_settings_name_the_problem() {
        for (text, want) in [
            (
                "[fleet]\nendpoints = []\nprefix = \"/p\"\n",
                "at least one etcd endpoint",
            ),
            (
                "[fleet]\nendpoints = [\"198.51.100.1:2379\"]\nprefix = \"/p\"\n",
                "write it as http://HOST:PORT",
            ),
            (
                "[fleet]\nendpoints = [\"http://h:1\"]\nprefix = \"p\"\n",
                "a key path such as /sipguard/prod",
            ),
            (
                "[fleet]\nendpoints = [\"https://h:1\"]\nprefix = \"/p\"\nnode = \"n\"\n",
                "https endpoints need ca",
            ),
            (
                "[fleet]\nendpoints = [\"http://h:1\"]\nprefix = \"/p\"\nnode = \"a/b\"\n",
                "without `/` or spaces",
            ),
            (
                "[fleet]\nendpoints = [\"http://h:1\"]\nprefix = \"/p\"\nnode = \"n\"\nuser = \"u\"\n",
                "user and password go together",
            ),
            (
                "[fleet]\nendpoints = [\"http://h:1\"]\nprefix = \"/p\"\nnodes = \"n\"\n",
                "unknown field `nodes`",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}\nwant: {want}\n got: {e}");
        }
    }
}
