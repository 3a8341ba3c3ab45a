//! The fleet's store: the etcd keys of [`config::fleet`](crate::config::fleet), read and
//! written with `etcd-client` (etcd v3 over gRPC, TLS and user/password as the fleet settings
//! say). Used by the daemon's watch (`run --fleet`) and by `sipguard fleet`. Every call has the
//! settings' timeout; nothing here retries (the callers decide).

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};
use thiserror::Error;

use crate::config::fleet::{FleetConfig, NodeStatus};

#[derive(Debug, Error)]
pub enum StoreError {
    // The etcd error is part of the message, not a cause under it: anyhow would print it
    // twice.
    #[error("cannot reach {what}: {cause}")]
    Unreachable {
        what: String,
        cause: etcd_client::Error,
    },
    #[error("{what}: {action}: {cause}")]
    Request {
        what: String,
        action: &'static str,
        cause: etcd_client::Error,
    },
    #[error("{path}: cannot read: {source}")]
    Tls {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "conflict: the fleet document is at revision {current}, not {expected} as this push assumed (someone else pushed); get it with `sipguard fleet get`, merge, and push again"
    )]
    Conflict { expected: i64, current: i64 },
    #[error("{key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The document at `<prefix>/config` and its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    pub revision: i64,
}

/// A router as the store knows it: registered (`nodes/`), and its status if its lease lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    pub node: String,
    pub status: Option<NodeStatus>,
}

/// The error of `action` on the fleet's etcd, for `map_err`.
pub fn request(
    cfg: &FleetConfig,
    action: &'static str,
) -> impl FnOnce(etcd_client::Error) -> StoreError + use<> {
    let what = cfg.describe();
    move |cause| StoreError::Request {
        what,
        action,
        cause,
    }
}

pub struct Store {
    pub cfg: FleetConfig,
    pub client: Client,
}

impl Store {
    /// Connects with the settings' endpoints, TLS, user and timeouts.
    pub async fn connect(cfg: &FleetConfig) -> Result<Self, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.timeout)
            .with_timeout(cfg.timeout)
            .with_keep_alive(Duration::from_secs(2), cfg.timeout);
        if let Some(tls) = &cfg.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|source| StoreError::Tls {
                    path: p.display().to_string(),
                    source,
                })
            };
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(t);
        }
        if let Some((user, password)) = &cfg.user {
            opts = opts.with_user(user, password);
        }
        let client = tokio::time::timeout(
            cfg.timeout,
            Client::connect(cfg.endpoints.clone(), Some(opts)),
        )
        .await
        .unwrap_or_else(|_| Err(etcd_client::Error::ElectError("connect timed out".into())))
        .map_err(|cause| StoreError::Unreachable {
            what: cfg.describe(),
            cause,
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            client,
        })
    }

    fn request(&self, action: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
        request(&self.cfg, action)
    }

    /// The document, or None when nobody has pushed one.
    pub async fn document(&mut self) -> Result<Option<Document>, StoreError> {
        let key = self.cfg.config_key();
        let r = self
            .client
            .get(key.clone(), None)
            .await
            .map_err(self.request("reading the fleet document"))?;
        let Some(kv) = r.kvs().first() else {
            return Ok(None);
        };
        let text = kv.value_str().map_err(|e| StoreError::Corrupt {
            key: key.clone(),
            reason: format!("not UTF-8 text: {e}"),
        })?;
        Ok(Some(Document {
            text: text.to_string(),
            revision: kv.mod_revision(),
        }))
    }

    /// Writes `text` if the document is still at `expected` (0: no document yet); the new
    /// revision, or [`StoreError::Conflict`].
    pub async fn push(&mut self, text: &str, expected: i64) -> Result<i64, StoreError> {
        let key = self.cfg.config_key();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(key.clone(), text, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = self
            .client
            .txn(txn)
            .await
            .map_err(self.request("writing the fleet document"))?;
        if r.succeeded() {
            return Ok(r.header().map_or(0, |h| h.revision()));
        }
        let current = r
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            })
            .unwrap_or(0);
        Err(StoreError::Conflict { expected, current })
    }

    /// Every router that ever reported, with the status of those whose lease lives.
    pub async fn routers(&mut self) -> Result<Vec<Router>, StoreError> {
        let nodes = self
            .client
            .get(
                self.cfg.nodes_prefix(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(self.request("listing the routers"))?;
        let statuses = self
            .client
            .get(
                self.cfg.status_prefix(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(self.request("reading the routers' status"))?;
        let mut out: Vec<Router> = Vec::new();
        let np = self.cfg.nodes_prefix();
        for kv in nodes.kvs() {
            let key = kv.key_str().unwrap_or_default();
            out.push(Router {
                node: key.strip_prefix(&np).unwrap_or(key).to_string(),
                status: None,
            });
        }
        let sp = self.cfg.status_prefix();
        for kv in statuses.kvs() {
            let key = kv.key_str().unwrap_or_default();
            let node = key.strip_prefix(&sp).unwrap_or(key).to_string();
            let status: NodeStatus =
                serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
            match out.iter_mut().find(|r| r.node == node) {
                Some(r) => r.status = Some(status),
                None => out.push(Router {
                    node,
                    status: Some(status),
                }),
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    /// Registers this router (`nodes/<node>`, no lease).
    pub async fn register(&mut self) -> Result<(), StoreError> {
        let key = self.cfg.node_key();
        let value = serde_json::json!({ "node": self.cfg.node }).to_string();
        self.client
            .put(key, value, None)
            .await
            .map_err(self.request("registering this router"))?;
        Ok(())
    }

    /// Writes this router's status under `lease`.
    pub async fn put_status(&mut self, status: &NodeStatus, lease: i64) -> Result<(), StoreError> {
        let value = serde_json::to_string(status).unwrap_or_default();
        self.client
            .put(
                self.cfg.status_key(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(self.request("writing this router's status"))?;
        Ok(())
    }
}
