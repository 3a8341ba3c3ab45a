//! `run --fleet`: the etcd side of a fleet router, a task beside the daemon's loop. It
//! connects, hands every revision of `<prefix>/config` to the loop (which validates and
//! commits it as it does a file reload), and keeps `<prefix>/status/<node>` up to date under a
//! lease. When etcd goes away the kernel keeps enforcing what was applied; the task reconnects
//! (1 s, doubling to 5 s) and catches up from the current revision. Nothing here waits on the
//! loop, and the loop never waits on etcd.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    config::fleet::{FleetConfig, NodeStatus},
    fleet::{Store, StoreError, request},
};

/// What the task tells the daemon's loop.
#[derive(Debug)]
pub enum FleetEvent {
    /// A revision of the document.
    Document { text: String, revision: i64 },
    /// Connected to etcd (true), or lost it (false, with why).
    Connected(bool, Option<String>),
    /// A watch event arrived (any: a new document, a deletion).
    Watched,
}

pub struct FleetTask {
    pub events: mpsc::Receiver<FleetEvent>,
    /// The status the task publishes (the loop sends each change).
    pub status: watch::Sender<NodeStatus>,
    task: JoinHandle<()>,
}

impl Drop for FleetTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the task. `applied` is the revision already in force (from the state directory).
pub fn spawn(cfg: FleetConfig, applied: i64, status: NodeStatus) -> FleetTask {
    let (tx, events) = mpsc::channel(16);
    let (status_tx, status_rx) = watch::channel(status);
    let task = tokio::spawn(run(cfg, applied, tx, status_rx));
    FleetTask {
        events,
        status: status_tx,
        task,
    }
}

async fn run(
    cfg: FleetConfig,
    mut seen: i64,
    tx: mpsc::Sender<FleetEvent>,
    mut status: watch::Receiver<NodeStatus>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut connected = None;
    loop {
        let e = session(&cfg, &mut seen, &tx, &mut status, &mut connected).await;
        if tx.is_closed() {
            return;
        }
        if connected != Some(false) {
            let _ = tx
                .send(FleetEvent::Connected(false, Some(e.to_string())))
                .await;
            connected = Some(false);
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection: returns why it ended.
async fn session(
    cfg: &FleetConfig,
    seen: &mut i64,
    tx: &mpsc::Sender<FleetEvent>,
    status: &mut watch::Receiver<NodeStatus>,
    connected: &mut Option<bool>,
) -> StoreError {
    match session_inner(cfg, seen, tx, status, connected).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn session_inner(
    cfg: &FleetConfig,
    seen: &mut i64,
    tx: &mpsc::Sender<FleetEvent>,
    status: &mut watch::Receiver<NodeStatus>,
    connected: &mut Option<bool>,
) -> Result<std::convert::Infallible, StoreError> {
    let mut store = Store::connect(cfg).await?;
    let request = |action| request(cfg, action);
    // Catch up: the current document, if newer than what is in force.
    let now = store.document().await?;
    let from = match now {
        Some(doc) => {
            let rev = doc.revision;
            if rev > *seen {
                *seen = rev;
                let _ = tx
                    .send(FleetEvent::Document {
                        text: doc.text,
                        revision: rev,
                    })
                    .await;
            }
            rev + 1
        }
        None => 0,
    };
    store.register().await?;
    let ttl = cfg.status_ttl.as_secs().max(2) as i64;
    let lease = store
        .client
        .lease_grant(ttl, None)
        .await
        .map_err(request("granting the status lease"))?
        .id();
    let (mut keeper, mut acks) = store
        .client
        .lease_keep_alive(lease)
        .await
        .map_err(request("keeping the status lease"))?;
    let first = status.borrow_and_update().clone();
    store.put_status(&first, lease).await?;
    let mut watch_opts = WatchOptions::new();
    if from > 0 {
        watch_opts = watch_opts.with_start_revision(from);
    }
    let mut stream = store
        .client
        .watch(cfg.config_key(), Some(watch_opts))
        .await
        .map_err(request("watching the fleet document"))?;
    if *connected != Some(true) {
        *connected = Some(true);
        let _ = tx.send(FleetEvent::Connected(true, None)).await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
    loop {
        tokio::select! {
            msg = stream.message() => {
                let msg = msg.map_err(request("watching the fleet document"))?;
                let Some(resp) = msg else {
                    return Err(StoreError::Corrupt {
                        key: cfg.config_key(),
                        reason: "the watch ended".into(),
                    });
                };
                if resp.canceled() {
                    return Err(StoreError::Corrupt {
                        key: cfg.config_key(),
                        reason: format!("the watch was cancelled: {}", resp.cancel_reason()),
                    });
                }
                for ev in resp.events() {
                    let _ = tx.send(FleetEvent::Watched).await;
                    let Some(kv) = ev.kv() else { continue };
                    match ev.event_type() {
                        EventType::Put => {
                            let rev = kv.mod_revision();
                            if rev <= *seen {
                                continue;
                            }
                            *seen = rev;
                            let text = String::from_utf8_lossy(kv.value()).into_owned();
                            let _ = tx.send(FleetEvent::Document { text, revision: rev }).await;
                        }
                        EventType::Delete => {
                            warn!(
                                key = %cfg.config_key(),
                                "the fleet document was deleted; the rules in force stay"
                            );
                        }
                    }
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    // The daemon is stopping.
                    std::future::pending::<()>().await;
                }
                let s = status.borrow_and_update().clone();
                store.put_status(&s, lease).await?;
            }
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(request("keeping the status lease"))?;
            }
            ack = acks.message() => {
                match ack.map_err(request("keeping the status lease"))? {
                    Some(a) if a.ttl() > 0 => {}
                    _ => {
                        info!("the status lease expired; registering again");
                        return Err(StoreError::Corrupt {
                            key: cfg.status_key(),
                            reason: "the status lease expired".into(),
                        });
                    }
                }
            }
        }
    }
}
