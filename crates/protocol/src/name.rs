/// Longest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 128;
/// Longest user id, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// Why a room name or user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("must not be empty")]
    Empty,
    #[error("longer than {0} bytes")]
    TooLong(usize),
    #[error("byte {0:#04x} is not allowed (use A-Z a-z 0-9 _ - . :)")]
    BadByte(u8),
    #[error("control characters are not allowed")]
    Control,
}

/// Room names: 1 to 128 bytes of `A-Z a-z 0-9 _ - . :`.
pub fn validate_room(name: &str) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(InvalidName::Empty);
    }
    if name.len() > MAX_ROOM_BYTES {
        return Err(InvalidName::TooLong(MAX_ROOM_BYTES));
    }
    match name
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')))
    {
        Some(b) => Err(InvalidName::BadByte(b)),
        None => Ok(()),
    }
}

/// User ids: 1 to 256 bytes of UTF-8 without control characters (they are
/// shown to other users and logged, so they must be printable).
pub fn validate_user(user: &str) -> Result<(), InvalidName> {
    if user.is_empty() {
        return Err(InvalidName::Empty);
    }
    if user.len() > MAX_USER_BYTES {
        return Err(InvalidName::TooLong(MAX_USER_BYTES));
    }
    if user.chars().any(char::is_control) {
        return Err(InvalidName::Control);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms() {
        assert!(validate_room("team-7:general.v2_x").is_ok());
        assert_eq!(validate_room(""), Err(InvalidName::Empty));
        assert_eq!(validate_room(&"a".repeat(128)), Ok(()));
        assert_eq!(
            validate_room(&"a".repeat(129)),
            Err(InvalidName::TooLong(128))
        );
        assert_eq!(validate_room("a b"), Err(InvalidName::BadByte(b' ')));
        assert_eq!(validate_room("caf\u{e9}"), Err(InvalidName::BadByte(0xc3)));
    }

    #[test]
    fn users() {
        assert!(validate_user("alice@example.com").is_ok());
        assert!(validate_user("Zoë").is_ok());
        assert_eq!(validate_user(""), Err(InvalidName::Empty));
        assert_eq!(validate_user("a\nb"), Err(InvalidName::Control));
    }
}
