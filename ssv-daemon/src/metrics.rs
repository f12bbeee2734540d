//! Prometheus metrics (`GET /metrics`, OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

pub struct Metrics {
    registry: Registry,
    pub ops: Family<OpLabels, Counter>,
    pub op_seconds: Family<OpLabels, Histogram>,
    pub extensions: Counter,
    pub extension_failures: Counter,
    pub extensions_served_for_others: Counter,
    pub extensions_served_by_others: Counter,
    pub extension_seconds: Histogram,
    pub sessions: Gauge,
    pub pool_capacity: Family<PoolLabels, Gauge>,
    pub pool_free: Family<PoolLabels, Gauge>,
    pub pool_provisioned: Family<PoolLabels, Gauge>,
    pub pool_volumes: Family<PoolLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ssvd");
        let ops = Family::<OpLabels, Counter>::default();
        let op_seconds = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let extensions = Counter::default();
        let extension_failures = Counter::default();
        let extensions_served_for_others = Counter::default();
        let extensions_served_by_others = Counter::default();
        let extension_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let sessions = Gauge::default();
        let pool_capacity = Family::<PoolLabels, Gauge>::default();
        let pool_free = Family::<PoolLabels, Gauge>::default();
        let pool_provisioned = Family::<PoolLabels, Gauge>::default();
        let pool_volumes = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "operations",
            "API operations by kind and result",
            ops.clone(),
        );
        registry.register(
            "operation_seconds",
            "API operation latency",
            op_seconds.clone(),
        );
        registry.register(
            "lv_extensions",
            "LV extensions made for writers on this host",
            extensions.clone(),
        );
        registry.register(
            "lv_extension_failures",
            "LV extensions that failed",
            extension_failures.clone(),
        );
        registry.register(
            "lv_extensions_served_for_others",
            "Other hosts' LV extensions made in this host's combined commits",
            extensions_served_for_others.clone(),
        );
        registry.register(
            "lv_extensions_served_by_others",
            "Extensions for writers on this host made by another commit (another host's, or another writer's here)",
            extensions_served_by_others.clone(),
        );
        registry.register(
            "lv_extension_seconds",
            "Time to extend an LV under the pool lease",
            extension_seconds.clone(),
        );
        registry.register(
            "sessions",
            "Volumes open for writing on this host",
            sessions.clone(),
        );
        registry.register(
            "pool_capacity_bytes",
            "Data area of the pool's LUNs",
            pool_capacity.clone(),
        );
        registry.register(
            "pool_free_bytes",
            "Unallocated extents of the pool",
            pool_free.clone(),
        );
        registry.register(
            "pool_provisioned_bytes",
            "Sum of the volumes' virtual sizes",
            pool_provisioned.clone(),
        );
        registry.register("pool_volumes", "Volumes in the pool", pool_volumes.clone());
        Metrics {
            registry,
            ops,
            op_seconds,
            extensions,
            extension_failures,
            extensions_served_for_others,
            extensions_served_by_others,
            extension_seconds,
            sessions,
            pool_capacity,
            pool_free,
            pool_provisioned,
            pool_volumes,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::warn!("encoding metrics: {e}");
        }
        out
    }

    pub fn op(&self, op: &str, ok: bool, seconds: f64) {
        let l = OpLabels {
            op: op.into(),
            result: if ok { "ok" } else { "error" }.into(),
        };
        self.ops.get_or_create(&l).inc();
        self.op_seconds.get_or_create(&l).observe(seconds);
    }
}
