/// WebSocket close codes the gateway uses, and what each one means to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the connection finished normally.
    Normal,
    /// 1001: the client was silent for longer than the heartbeat timeout.
    HeartbeatTimeout,
    /// 1002: the client broke the WebSocket protocol itself.
    ProtocolError,
    /// 1003: the client sent a text message; the protocol is binary only.
    UnsupportedData,
    /// 1007: a text message that is not UTF-8 (`/echo` only: `/ws` refuses
    /// text altogether).
    InvalidPayload,
    /// 1008: policy: the client is a slow consumer or sent too many bad frames.
    Policy,
    /// 1009: a message larger than `limits.max_frame_bytes`.
    TooBig,
    /// 1011: the server hit an internal error.
    Internal,
    /// 1012: the node is draining; reconnect elsewhere, with jitter.
    Restart,
}

impl CloseCode {
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::HeartbeatTimeout => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::Restart => 1012,
        }
    }

    /// A short label for metrics (`switchboard_connections_closed_total{reason}`).
    pub const fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedData => "text_frame",
            CloseCode::InvalidPayload => "invalid_utf8",
            CloseCode::Policy => "policy",
            CloseCode::TooBig => "too_big",
            CloseCode::Internal => "internal",
            CloseCode::Restart => "draining",
        }
    }
}
