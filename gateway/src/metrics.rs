//! The Prometheus recorder: its buckets and the series it shows from the
//! first scrape (the names and their descriptions: `switchboard-telemetry`).

use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_telemetry::names;

use crate::outbound::Backlog;
use crate::GatewayError;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const LAG_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
];
const BYTES_BUCKETS: &[f64] = &[
    0.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];
const AGE_BUCKETS: &[f64] = &[0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The standard `process_*` series (resident memory, CPU seconds, open and
/// maximum file descriptors, start time), read when scraped.
static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// Samples the process series; called on every scrape.
pub fn collect_process() {
    PROCESS.collect();
}

/// Samples every connection's delivery lag (see [`Backlog`]):
/// node-wide totals as gauges, and each connection once into the
/// histograms, so that a few lagging connections show among many idle ones.
pub fn sample_backlogs(backlogs: impl Iterator<Item = Backlog>) {
    let (mut events, mut bytes, mut oldest, mut idle) = (0, 0, Duration::ZERO, 0u64);
    let per_events = metrics::histogram!(names::CONNECTION_QUEUED_EVENTS);
    let per_bytes = metrics::histogram!(names::CONNECTION_QUEUED_BYTES);
    let per_age = metrics::histogram!(names::CONNECTION_OLDEST_EVENT_AGE_SECONDS);
    for b in backlogs {
        if b.events == 0 {
            idle += 1;
            continue;
        }
        events += b.events;
        bytes += b.bytes;
        oldest = oldest.max(b.oldest_age);
        per_events.record(b.events as f64);
        per_bytes.record(b.bytes as f64);
        per_age.record(b.oldest_age.as_secs_f64());
    }
    // Most connections have nothing queued: recorded in one go.
    for h in [&per_events, &per_bytes, &per_age] {
        h.record_many(0.0, idle as usize);
    }
    metrics::gauge!(names::OUTBOUND_QUEUED_EVENTS).set(events as f64);
    metrics::gauge!(names::OUTBOUND_QUEUED_BYTES).set(bytes as f64);
    metrics::gauge!(names::OUTBOUND_OLDEST_EVENT_AGE_SECONDS).set(oldest.as_secs_f64());
}

/// The recorder installed in this process, once it is.
static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide recorder and registers every metric, so that
/// each name is exported from the first scrape. Later calls (several nodes
/// or tests in one process) get the recorder already installed, and leave
/// what it has counted as it is.
pub fn install() -> Result<PrometheusHandle, GatewayError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = &*installed {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::PUBLISH_TO_DELIVERY_SECONDS.into()),
            LATENCY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::REPLICATION_LAG_OFFSETS.into()),
                LAG_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::CONNECTION_QUEUED_EVENTS.into()),
                LAG_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::CONNECTION_QUEUED_BYTES.into()),
                BYTES_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::CONNECTION_OLDEST_EVENT_AGE_SECONDS.into()),
                AGE_BUCKETS,
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| GatewayError::Start(format!("metrics: {e}")))?;
    switchboard_telemetry::describe();
    PROCESS.describe();
    PROCESS.collect();
    metrics::gauge!(
        names::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "git" => env!("SWITCHBOARD_GIT"),
    )
    .set(1.0);

    for transport in ["ws", "sse", "poll"] {
        metrics::gauge!(names::CONNECTIONS, "transport" => transport).set(0.0);
        metrics::counter!(names::CONNECTIONS_OPENED_TOTAL, "transport" => transport).absolute(0);
    }
    for reason in [
        "normal",
        "client_close",
        "client_gone",
        "heartbeat_timeout",
        "policy",
        "draining",
    ] {
        metrics::counter!(names::CONNECTIONS_CLOSED_TOTAL, "reason" => reason, "transport" => "ws")
            .absolute(0);
    }
    metrics::counter!(names::CONNECTIONS_REFUSED_TOTAL, "reason" => "address_rate").absolute(0);
    metrics::gauge!(names::ROOMS).set(0.0);
    metrics::counter!(names::MESSAGES_PUBLISHED_TOTAL).absolute(0);
    metrics::counter!(names::MESSAGES_DELIVERED_TOTAL).absolute(0);
    metrics::counter!(names::SLOW_CONSUMERS_TOTAL).absolute(0);
    metrics::gauge!(names::PRESENCE_USERS).set(0.0);
    metrics::gauge!(names::CLUSTER_NODES).set(1.0);
    for direction in ["in", "out"] {
        metrics::counter!(names::CLUSTER_MESSAGES_TOTAL, "direction" => direction).absolute(0);
    }
    // Registers the histogram (it renders with empty buckets until used).
    let _ = metrics::histogram!(names::PUBLISH_TO_DELIVERY_SECONDS);
    *installed = Some(handle.clone());
    Ok(handle)
}

#[cfg(test)]
mod tests {
    #[test]
    fn installing_twice_gives_the_same_recorder() {
        let first = super::install().expect("first install");
        metrics::counter!("switchboard_test_install_twice_total").increment(3);
        let second = super::install().expect("second install");
        metrics::counter!("switchboard_test_install_twice_total").increment(4);
        // Both handles render the one recorder the `metrics` macros use,
        // and the second install reset nothing.
        for handle in [&first, &second] {
            let text = handle.render();
            assert!(
                text.contains("switchboard_test_install_twice_total 7"),
                "{text}"
            );
            assert!(
                text.contains(super::names::CONNECTIONS_OPENED_TOTAL),
                "{text}"
            );
        }
    }
}
