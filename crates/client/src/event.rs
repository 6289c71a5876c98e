use bytes::Bytes;
use rmpv::Value;
use switchboard_protocol::split_value;

use crate::ClientError;

/// One server event: its exact bytes and its decoded map.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// The event's MessagePack bytes, as received.
    pub raw: Bytes,
    pub fields: Vec<(String, Value)>,
}

impl Event {
    /// Decodes every map in one WebSocket message.
    pub fn decode_all(message: &Bytes) -> Result<Vec<Event>, ClientError> {
        let mut out = Vec::new();
        let mut rest: &[u8] = message;
        while !rest.is_empty() {
            let (one, tail) =
                split_value(rest).map_err(|e| ClientError::Protocol(e.to_string()))?;
            let value = rmpv::decode::read_value(&mut &one[..])
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Value::Map(entries) = value else {
                return Err(ClientError::Protocol("event is not a map".into()));
            };
            let fields = entries
                .into_iter()
                .map(|(k, v)| {
                    Ok((
                        k.as_str()
                            .ok_or(ClientError::Protocol("non-string key".into()))?
                            .to_owned(),
                        v,
                    ))
                })
                .collect::<Result<_, ClientError>>()?;
            let start = message.len() - rest.len();
            out.push(Event {
                raw: message.slice(start..start + one.len()),
                fields,
            });
            rest = tail;
        }
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn op(&self) -> &str {
        self.str("op").unwrap_or_default()
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// The exact MessagePack bytes of the `data` value.
    pub fn data_raw(&self) -> Option<&[u8]> {
        let mut rest: &[u8] = &self.raw;
        let entries = rmp::decode::read_map_len(&mut rest).ok()?;
        for _ in 0..entries {
            let (key, tail) = split_value(rest).ok()?;
            let (value, tail) = split_value(tail).ok()?;
            let mut k = key;
            let mut buf = [0u8; 8];
            if rmp::decode::read_str(&mut k, &mut buf).ok() == Some("data") {
                return Some(value);
            }
            rest = tail;
        }
        None
    }
}
