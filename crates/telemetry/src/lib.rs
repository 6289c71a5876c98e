//! The metric names, one home for every crate that records them (they are
//! part of the interface: dashboards and alert rules use them), and their
//! descriptions. The gateway installs the recorder (`gateway/src/metrics.rs`).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// What each name means is its description in [`describe`], written once.
pub mod names {
    pub const BUILD_INFO: &str = "switchboard_build_info";
    pub const CONNECTIONS: &str = "switchboard_connections";
    pub const CONNECTIONS_OPENED_TOTAL: &str = "switchboard_connections_opened_total";
    pub const CONNECTIONS_CLOSED_TOTAL: &str = "switchboard_connections_closed_total";
    pub const ROOMS: &str = "switchboard_rooms";
    pub const SESSION_ACTORS: &str = "switchboard_session_actors";
    pub const OUTBOUND_QUEUED_EVENTS: &str = "switchboard_outbound_queued_events";
    pub const OUTBOUND_QUEUED_BYTES: &str = "switchboard_outbound_queued_bytes";
    pub const OUTBOUND_OLDEST_EVENT_AGE_SECONDS: &str =
        "switchboard_outbound_oldest_event_age_seconds";
    pub const CONNECTION_QUEUED_EVENTS: &str = "switchboard_connection_queued_events";
    pub const CONNECTION_QUEUED_BYTES: &str = "switchboard_connection_queued_bytes";
    pub const CONNECTION_OLDEST_EVENT_AGE_SECONDS: &str =
        "switchboard_connection_oldest_event_age_seconds";
    pub const TOKIO_TASKS: &str = "switchboard_tokio_tasks";
    pub const CONNECTIONS_REFUSED_TOTAL: &str = "switchboard_connections_refused_total";
    pub const MESSAGES_PUBLISHED_TOTAL: &str = "switchboard_messages_published_total";
    pub const MESSAGES_DELIVERED_TOTAL: &str = "switchboard_messages_delivered_total";
    pub const SLOW_CONSUMERS_TOTAL: &str = "switchboard_slow_consumers_total";
    pub const ROOM_HANDOVERS_TOTAL: &str = "switchboard_room_handovers_total";
    pub const REPLICATION_LAG_OFFSETS: &str = "switchboard_replication_lag_offsets";
    pub const ROOM_RESETS_TOTAL: &str = "switchboard_room_resets_total";
    pub const PRESENCE_USERS: &str = "switchboard_presence_users";
    pub const CLUSTER_NODES: &str = "switchboard_cluster_nodes";
    pub const CLUSTER_MESSAGES_TOTAL: &str = "switchboard_cluster_messages_total";
    pub const PUBLISH_TO_DELIVERY_SECONDS: &str = "switchboard_publish_to_delivery_seconds";
}

/// Registers every name's description (and unit) with the installed recorder.
pub fn describe() {
    describe_gauge!(
        names::BUILD_INFO,
        "1, labelled with the build's version and git revision"
    );
    describe_gauge!(
        names::CONNECTIONS,
        "Open connections, by transport (ws, sse, poll: a poll session counts as one)"
    );
    describe_counter!(
        names::CONNECTIONS_OPENED_TOTAL,
        "Connections opened, by transport"
    );
    describe_counter!(
        names::CONNECTIONS_CLOSED_TOTAL,
        "Connections closed, by reason and transport"
    );
    describe_gauge!(names::ROOMS, "Rooms with members on this node");
    describe_gauge!(
        names::SESSION_ACTORS,
        "Session actors running (parked sessions not counted), sampled at scrape"
    );
    describe_gauge!(
        names::OUTBOUND_QUEUED_EVENTS,
        "Events queued for all connections and not yet written, sampled at scrape"
    );
    describe_gauge!(
        names::OUTBOUND_QUEUED_BYTES,
        Unit::Bytes,
        "Bytes queued for all connections and not yet written, sampled at scrape"
    );
    describe_gauge!(
        names::OUTBOUND_OLDEST_EVENT_AGE_SECONDS,
        Unit::Seconds,
        "Longest any queued event has waited for its connection's writer, sampled at scrape"
    );
    describe_histogram!(
        names::CONNECTION_QUEUED_EVENTS,
        "Events each connection had queued, one sample per connection per scrape"
    );
    describe_histogram!(
        names::CONNECTION_QUEUED_BYTES,
        Unit::Bytes,
        "Bytes each connection had queued, one sample per connection per scrape"
    );
    describe_histogram!(
        names::CONNECTION_OLDEST_EVENT_AGE_SECONDS,
        Unit::Seconds,
        "How long each connection's oldest queued event had waited, one sample per connection per scrape"
    );
    describe_gauge!(
        names::TOKIO_TASKS,
        "Tasks alive in the node's runtime, sampled at scrape"
    );
    describe_counter!(
        names::CONNECTIONS_REFUSED_TOTAL,
        "Connections refused before the upgrade, by reason (address_rate, proxy_header)"
    );
    describe_counter!(names::MESSAGES_PUBLISHED_TOTAL, "Room messages sequenced");
    describe_counter!(
        names::MESSAGES_DELIVERED_TOTAL,
        "Room messages queued to member connections"
    );
    describe_counter!(
        names::SLOW_CONSUMERS_TOTAL,
        "Connections closed because their outbound queue was full"
    );
    describe_counter!(names::ROOM_HANDOVERS_TOTAL, "Rooms this node came to hold or gave up, by outcome: fetched, taken_over, kept, fresh, refused, handed_over");
    describe_histogram!(
        names::REPLICATION_LAG_OFFSETS,
        "Offsets the home had sequenced beyond the follower's confirmation, at each confirmation"
    );
    describe_counter!(
        names::ROOM_RESETS_TOTAL,
        "Times a room's members here were told its sequence restarted (reset), by reason"
    );
    describe_gauge!(names::PRESENCE_USERS, "Distinct users online on this node");
    describe_gauge!(
        names::CLUSTER_NODES,
        "Live cluster nodes, this one included"
    );
    describe_counter!(
        names::CLUSTER_MESSAGES_TOTAL,
        "Messages between cluster nodes, by direction"
    );
    describe_histogram!(
        names::PUBLISH_TO_DELIVERY_SECONDS,
        Unit::Seconds,
        "Time from a message's sequencing to its write to a member's socket"
    );
}
