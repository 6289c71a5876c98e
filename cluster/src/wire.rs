//! The envelope of every node-to-node message, and the cluster's own ones.
//!
//! A message is one serde enum value encoded with `rmp-serde` as
//! `{variant: {field: value, ...}}`: fields by name, so that a release can
//! add a field (with a default) that the previous release ignores, and a
//! release that receives the previous one's positional form (the first
//! release wrote fields as arrays) still reads it. The variant name routes
//! the message: the cluster reads it without decoding the rest and hands
//! the bytes to the service that owns it, which decodes them with its own
//! enum. So the services' enums are independent and the cluster knows none
//! of them. A message whose variant nobody owns, or that does not decode,
//! is refused with a logged reason.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// This release's version of the node-to-node messages, sent in `Hello`.
/// 1 is the first release (no version field, positional fields); 2 adds
/// named fields and the version itself.
pub const VERSION: u32 = 2;

/// Encodes a message with named fields.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Plain data with owned strings and byte buffers cannot fail to encode.
    rmp_serde::to_vec_named(msg).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// The variant name of an encoded enum message, without decoding its body.
pub fn variant(bytes: &[u8]) -> Option<&str> {
    let mut rest = bytes;
    // A unit variant is the bare name; any other is a map of one entry.
    if let Ok(1) = rmp::decode::read_map_len(&mut rest) {
        return read_str(rest);
    }
    read_str(bytes)
}

fn read_str(bytes: &[u8]) -> Option<&str> {
    let mut rest = bytes;
    let len = rmp::decode::read_str_len(&mut rest).ok()? as usize;
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// The cluster's own messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Control {
    /// Who the sender is and which version it speaks (the watchdog's ping
    /// and its answer).
    Hello {
        node: String,
        /// Absent from the first release: 1.
        #[serde(default = "first_version")]
        version: u32,
    },
    /// A call failed on the receiving side.
    Error {
        reason: String,
    },
    /// (cast) The sender is draining: it homes no room from now on, and
    /// leaves once it has handed its rooms over.
    Leaving {
        node: String,
    },
    /// (call) Is `node` in your view? Answered by `Seen`.
    Sees {
        node: String,
    },
    Seen {
        node: String,
        seen: bool,
    },
}

fn first_version() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first release's `Hello`, frozen: positional fields, no version.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum FirstRelease {
        Hello { node: String },
        Error { reason: String },
    }

    #[test]
    fn reads_the_first_release_and_is_read_by_it() {
        let old = rmp_serde::to_vec(&FirstRelease::Hello { node: "a".into() }).unwrap();
        assert_eq!(variant(&old), Some("Hello"));
        assert_eq!(
            decode::<Control>(&old).unwrap(),
            Control::Hello {
                node: "a".into(),
                version: 1
            }
        );
        let new = encode(&Control::Hello {
            node: "b".into(),
            version: VERSION,
        });
        assert_eq!(variant(&new), Some("Hello"));
        assert_eq!(
            decode::<FirstRelease>(&new).unwrap(),
            FirstRelease::Hello { node: "b".into() }
        );
    }

    #[test]
    fn bad_bytes_have_no_variant() {
        assert_eq!(variant(&[]), None);
        assert_eq!(variant(&[0x81, 0x01, 0x02]), None);
        assert_eq!(variant(&[0x81, 0xa5, b'H']), None);
        assert!(decode::<Control>(&[0xc1]).is_err());
    }
}
