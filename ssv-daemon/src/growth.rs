//! The growth service for writers on this host, timed for the metrics
//! and reported as events.

use crate::events::Events;
use crate::metrics::Metrics;
use crate::pool::PoolExtender;
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
        let t = std::time::Instant::now();
        let r = self.inner.extend(req);
        self.metrics
            .extension_seconds
            .observe(t.elapsed().as_secs_f64());
        match &r {
            Ok(d) => {
                self.metrics.extensions.inc();
                self.events.emit(
                    "volume.grown",
                    Some(&self.pool),
                    None,
                    format!(
                        "LV {} grown to {} bytes in {:?}{}",
                        req.lv,
                        d.size(),
                        t.elapsed(),
                        if req.urgent { " (a write waited)" } else { "" }
                    ),
                );
            }
            Err(e) => {
                self.metrics.extension_failures.inc();
                self.events.emit(
                    "volume.grow_failed",
                    Some(&self.pool),
                    None,
                    format!("LV {} could not grow: {e}", req.lv),
                );
            }
        }
        r
    }
}
