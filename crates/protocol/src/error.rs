/// Codes carried by an `err` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: malformed or invalid command; the reason names the field.
    BadRequest,
    /// 401: unauthenticated.
    Unauthenticated,
    /// 403: not allowed by the token's `rooms` claim.
    Forbidden,
    /// 404: the user of a `send` is online nowhere.
    NotFound,
    /// 429: a limit was hit (publish rate, rooms per connection).
    TooMany,
    /// 503: the cluster cannot serve the room right now.
    Unavailable,
}

impl ErrorCode {
    pub const fn code(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooMany => 429,
            ErrorCode::Unavailable => 503,
        }
    }
}
