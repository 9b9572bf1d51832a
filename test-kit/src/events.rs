//! The supervisor's event feed as a test reads it: every event (samples aside) collected in
//! the background from the moment of [`Feed::watch`], waited for by what it says, and summed
//! as any watcher would to check it against GetStatus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arbiter::pb::supervisor::v1 as pb;
use pb::event::Kind;

use crate::leases::{Client, status};
use crate::waiting::{SOON, eventually};

/// Every event the supervisor publishes (samples aside), collected in the background.
#[derive(Clone, Default)]
pub struct Feed(Arc<Mutex<Vec<pb::Event>>>);

impl Feed {
    pub async fn watch(client: &Client) -> Feed {
        let mut stream = client
            .clone()
            .watch_events(pb::WatchEventsRequest {
                include_samples: false,
            })
            .await
            .expect("WatchEvents")
            .into_inner();
        let feed = Feed::default();
        let events = Arc::clone(&feed.0);
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                events.lock().unwrap().push(event);
            }
        });
        feed
    }

    pub fn kinds(&self) -> Vec<Kind> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| e.kind.clone())
            .collect()
    }

    /// Waits until an event matches `pick`, and returns what it picked.
    pub async fn wait_for<T>(&self, what: &str, pick: impl Fn(&Kind) -> Option<T>) -> T {
        eventually(SOON, what, || {
            let found = self.kinds().iter().find_map(&pick);
            async move { found }
        })
        .await
    }

    /// Granted and returning bytes per GPU uuid, summed from the feed as any watcher would.
    pub fn sums(&self) -> HashMap<String, (i128, i128)> {
        let mut sums: HashMap<String, (i128, i128)> = HashMap::new();
        for kind in self.kinds() {
            match kind {
                Kind::Granted(l) => sums.entry(l.gpu_uuid).or_default().0 += l.bytes as i128,
                Kind::Released(r) => {
                    let entry = sums.entry(r.gpu_uuid).or_default();
                    entry.0 -= r.bytes as i128;
                    entry.1 += r.returning_bytes as i128;
                }
                Kind::Revoked(r) => {
                    let entry = sums.entry(r.gpu_uuid).or_default();
                    entry.0 -= r.bytes as i128;
                    entry.1 += r.returning_bytes as i128;
                }
                Kind::Returned(r) => sums.entry(r.gpu_uuid).or_default().1 -= r.bytes as i128,
                _ => {}
            }
        }
        sums
    }

    /// Waits until the feed's sums agree with GetStatus on every GPU; returns the status.
    pub async fn balances(&self, client: &Client) -> pb::SupervisorStatus {
        eventually(SOON, "the event feed to balance with status", || {
            let client = client.clone();
            let sums = self.sums();
            async move {
                let status = status(&client).await;
                let agree = status.gpus.iter().all(|g| {
                    let (granted, returning) = sums.get(&g.uuid).copied().unwrap_or_default();
                    granted == g.granted_bytes as i128 && returning == g.returning_bytes as i128
                });
                agree.then_some(status)
            }
        })
        .await
    }
}
