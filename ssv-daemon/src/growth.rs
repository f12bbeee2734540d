//! The growth service for writers on this host, timed for the metrics
//! and reported as events. Extensions are combined across hosts
//! (`Pool::extend_combined`): a call may grow other hosts' LVs in its
//! commit, or find its own grown by another host's.

use crate::events::Events;
use crate::metrics::Metrics;
use crate::pool::PoolExtender;
use crate::Result;
use san::BlockDev;
use std::sync::Arc;

/// The pool's extender with metrics and events.
pub(crate) struct MeteredExtender {
    pub inner: PoolExtender,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
    pub pool: String,
}

impl thin::Extender for MeteredExtender {
    fn extend(&self, req: &thin::GrowthRequest) -> std::result::Result<Arc<dyn BlockDev>, String> {
        self.grow(req, None).map_err(|e| e.to_string())
    }

    fn notice(&self, req: &thin::GrowthRequest) {
        let served = self.metrics.extensions_served_for_others.clone();
        self.inner.notice_combined(req, move |n| {
            served.inc_by(n);
        });
    }
}

impl MeteredExtender {
    /// Grows `req.lv` (of `volume`, when the caller knows it), counted in
    /// the metrics and told as an event.
    pub fn grow(
        &self,
        req: &thin::GrowthRequest,
        volume: Option<&str>,
    ) -> Result<Arc<dyn BlockDev>> {
        let t = std::time::Instant::now();
        let served = self.metrics.extensions_served_for_others.clone();
        let r = self.inner.extend_combined(req, move |n| {
            served.inc_by(n);
        });
        self.metrics
            .extension_seconds
            .observe(t.elapsed().as_secs_f64());
        match &r {
            Ok(x) => {
                self.metrics.extensions.inc();
                if !x.own_commit {
                    self.metrics.extensions_served_by_others.inc();
                }
                self.events.emit(
                    "volume.grown",
                    Some(&self.pool),
                    volume,
                    format!(
                        "LV {} grown to {} bytes in {:?}{}{}",
                        req.lv,
                        x.dev.size(),
                        t.elapsed(),
                        if req.urgent { " (a write waited)" } else { "" },
                        if x.own_commit {
                            ""
                        } else {
                            " by another commit"
                        }
                    ),
                );
            }
            Err(e) => {
                self.metrics.extension_failures.inc();
                self.events.emit(
                    "volume.grow_failed",
                    Some(&self.pool),
                    volume,
                    format!("LV {} could not grow: {e}", req.lv),
                );
            }
        }
        r.map(|x| x.dev)
    }
}
