//! The Prometheus recorder and the metric names (part of the interface).

use std::sync::{Mutex, PoisonError};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::GatewayError;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const LAG_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
];

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
            Matcher::Full("switchboard_publish_to_delivery_seconds".into()),
            LATENCY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("switchboard_replication_lag_offsets".into()),
                LAG_BUCKETS,
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| GatewayError::Start(format!("metrics: {e}")))?;

    describe_gauge!("switchboard_connections", "Open WebSocket connections");
    describe_counter!(
        "switchboard_connections_opened_total",
        "WebSocket connections opened"
    );
    describe_counter!(
        "switchboard_connections_closed_total",
        "WebSocket connections closed, by reason"
    );
    describe_gauge!("switchboard_rooms", "Rooms with members on this node");
    describe_gauge!(
        "switchboard_session_actors",
        "Session actors running (parked sessions not counted), sampled at scrape"
    );
    describe_gauge!(
        "switchboard_outbound_queued_events",
        "Events queued for all connections and not yet written, sampled at scrape"
    );
    describe_gauge!(
        "switchboard_tokio_tasks",
        "Tasks alive in the node's runtime, sampled at scrape"
    );
    describe_counter!(
        "switchboard_connections_refused_total",
        "Connections refused before the upgrade, by reason (address_rate)"
    );
    describe_counter!(
        "switchboard_messages_published_total",
        "Room messages sequenced"
    );
    describe_counter!(
        "switchboard_messages_delivered_total",
        "Room messages queued to member connections"
    );
    describe_counter!(
        "switchboard_slow_consumers_total",
        "Connections closed because their outbound queue was full"
    );
    describe_counter!(
        "switchboard_room_handovers_total",
        "Rooms this node came to hold or gave up, by outcome: fetched, taken_over, kept, fresh, refused, handed_over"
    );
    describe_histogram!(
        "switchboard_replication_lag_offsets",
        "Offsets the home had sequenced beyond the follower's confirmation, at each confirmation"
    );
    describe_counter!(
        "switchboard_room_resets_total",
        "Times a room's members here were told its sequence restarted (reset), by reason"
    );
    describe_gauge!(
        "switchboard_presence_users",
        "Distinct users online on this node"
    );
    describe_gauge!(
        "switchboard_cluster_nodes",
        "Live cluster nodes, this one included"
    );
    describe_counter!(
        "switchboard_cluster_messages_total",
        "Messages between cluster nodes, by direction"
    );
    describe_histogram!(
        "switchboard_publish_to_delivery_seconds",
        Unit::Seconds,
        "Time from a message's sequencing to its write to a member's socket"
    );

    metrics::gauge!("switchboard_connections").set(0.0);
    metrics::counter!("switchboard_connections_opened_total").absolute(0);
    for reason in [
        "normal",
        "client_close",
        "client_gone",
        "heartbeat_timeout",
        "policy",
        "draining",
    ] {
        metrics::counter!("switchboard_connections_closed_total", "reason" => reason).absolute(0);
    }
    metrics::counter!("switchboard_connections_refused_total", "reason" => "address_rate")
        .absolute(0);
    metrics::gauge!("switchboard_rooms").set(0.0);
    metrics::counter!("switchboard_messages_published_total").absolute(0);
    metrics::counter!("switchboard_messages_delivered_total").absolute(0);
    metrics::counter!("switchboard_slow_consumers_total").absolute(0);
    metrics::gauge!("switchboard_presence_users").set(0.0);
    metrics::gauge!("switchboard_cluster_nodes").set(1.0);
    for direction in ["in", "out"] {
        metrics::counter!("switchboard_cluster_messages_total", "direction" => direction)
            .absolute(0);
    }
    // Registers the histogram (it renders with empty buckets until used).
    let _ = metrics::histogram!("switchboard_publish_to_delivery_seconds");
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
                text.contains("switchboard_connections_opened_total"),
                "{text}"
            );
        }
    }
}
