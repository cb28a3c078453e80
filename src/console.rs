//! The operator's console, server side: one sample of the hub per second
//! (open connections, logouts by source, fan-out latency p50/p99, acks
//! as a share of deliveries), the last 15 minutes of them kept, and the
//! live feed a signed-in console reads: samples, new audit entries (from
//! the store, so every node's), and Pusher channel events as they are
//! triggered on this node.
//!
//! Must not: cost the trigger path when nobody watches (Pusher events are
//! copied only while a console is connected; samples are counters read
//! once a second).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::App;
use crate::metrics::Metrics;
use crate::util;

/// Samples kept: 15 minutes, one a second.
const KEEP: usize = 15 * 60;

/// One second of the hub.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t: i64,
    pub connections: i64,
    /// Logouts in this second, by source.
    pub logouts: BTreeMap<&'static str, u64>,
    /// Fan-out latency of this second's triggers (ms), if any.
    pub fanout_p50_ms: Option<f64>,
    pub fanout_p99_ms: Option<f64>,
    pub delivered: u64,
    pub acked: u64,
}

pub struct Console {
    samples: Mutex<VecDeque<Sample>>,
    last: Mutex<(BTreeMap<&'static str, u64>, u64, u64)>,
    /// Pusher events for connected consoles (only sent while one listens).
    pusher: broadcast::Sender<Value>,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            samples: Mutex::new(VecDeque::with_capacity(KEEP)),
            last: Mutex::default(),
            pusher: broadcast::channel(1024).0,
        }
    }
}

fn percentile(sorted: &[f32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(f64::from(sorted[i]) * 1000.0)
}

impl Console {
    /// Takes this second's sample.
    pub fn sample(&self, m: &Metrics) {
        let logouts = m
            .console
            .logouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut latencies = std::mem::take(
            &mut *m
                .console
                .recent_fanout
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        latencies.sort_by(|a, b| a.total_cmp(b));
        let delivered = m.messages_delivered.get();
        let acked = m.messages_acked.get();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let s = Sample {
            t: util::now_ms(),
            connections: m.connections.get(),
            logouts: logouts
                .iter()
                .map(|(k, v)| (*k, v - last.0.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
            fanout_p50_ms: percentile(&latencies, 0.5),
            fanout_p99_ms: percentile(&latencies, 0.99),
            delivered: delivered.saturating_sub(last.1),
            acked: acked.saturating_sub(last.2),
        };
        *last = (logouts, delivered, acked);
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn latest(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }

    /// Whether a console listens for Pusher events now.
    pub fn watching(&self) -> bool {
        self.pusher.receiver_count() > 0
    }

    /// A Pusher event as it was triggered (only called while watching).
    pub fn pusher_event(&self, app: &str, channel: &str, frame: &str) {
        let (event, data) = serde_json::from_str::<Value>(frame)
            .map(|v| (v["event"].clone(), v["data"].clone()))
            .unwrap_or_default();
        let data = match data {
            Value::String(s) if s.len() > 512 => {
                let cut = (0..=512)
                    .rev()
                    .find(|i| s.is_char_boundary(*i))
                    .unwrap_or(0);
                Value::String(format!("{}…", &s[..cut]))
            }
            other => other,
        };
        let _ = self.pusher.send(json!({
            "type": "pusher", "t": util::now_ms(), "app": app,
            "channel": channel, "event": event, "data": data,
        }));
    }

    pub fn subscribe_pusher(&self) -> broadcast::Receiver<Value> {
        self.pusher.subscribe()
    }
}

/// The sampler, every second until shutdown.
pub async fn sampler(app: std::sync::Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => app.console.sample(&app.metrics),
        }
    }
}

/// What a console's feed sends, line by line (NDJSON), until it goes away:
/// a hello (history), then samples, audit entries and Pusher events.
pub async fn feed(app: std::sync::Arc<App>, tx: tokio::sync::mpsc::Sender<String>) {
    let node = app.broker.as_ref().map(|b| b.node_id().to_string());
    let recent = app
        .audit
        .page(&crate::audit::Query {
            limit: Some(50),
            ..Default::default()
        })
        .await
        .map(|p| p.entries)
        .unwrap_or_default();
    let mut last_audit = recent.first().map(|e| e.id.clone());
    let hello = json!({
        "type": "hello", "node": node, "samples": app.console.samples(),
        "audit": recent, "pusher_apps": app.pusher.apps().iter().map(|a| &a.id).collect::<Vec<_>>(),
    });
    if tx.send(hello.to_string()).await.is_err() {
        return;
    }
    let mut pusher = app.console.subscribe_pusher();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_sample = 0;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            ev = pusher.recv() => {
                if let Ok(ev) = ev
                    && tx.send(ev.to_string()).await.is_err()
                {
                    return;
                }
            }
            _ = tick.tick() => {
                if let Some(s) = app.console.latest().filter(|s| s.t != last_sample) {
                    last_sample = s.t;
                    if tx.send(json!({"type": "sample", "sample": s}).to_string()).await.is_err() {
                        return;
                    }
                }
                let Ok(new) = app.audit.newer(last_audit.as_deref(), 200).await else {
                    continue;
                };
                for e in new {
                    last_audit = Some(e.id.clone());
                    if tx.send(json!({"type": "audit", "entry": e}).to_string()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
