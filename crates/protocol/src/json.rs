//! Server events as JSON, for the transports that are text (Server-Sent
//! Events, long polling): the same events as on WebSocket, each MessagePack
//! map turned into a JSON object.
//!
//! `data` is converted only where JSON can say exactly the same thing;
//! anything else (binary, extension types, non-finite floats, non-string or
//! repeated map keys, strings that are not UTF-8) is passed as
//! `data_msgpack`, the original bytes in base64, so nothing is approximated
//! or lost.

use base64::Engine;
use serde_json::{Map, Number, Value};

use crate::value::split_value;

/// Why an event could not be turned into JSON (the server's own events
/// always can; this guards against a bug, not a client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event is not a MessagePack map of string keys: {0}")]
pub struct JsonError(&'static str);

impl JsonError {
    pub(crate) fn missing(field: &'static str) -> Self {
        Self(field)
    }
}

/// One event as a JSON object, `op` included.
pub fn event_to_json(event: &[u8]) -> Result<Map<String, Value>, JsonError> {
    let mut rest = event;
    let entries =
        rmp::decode::read_map_len(&mut rest).map_err(|_| JsonError("not a map"))? as usize;
    let mut out = Map::new();
    for _ in 0..entries {
        let (key, after) = split_value(rest).map_err(|_| JsonError("truncated key"))?;
        let Some(Value::String(key)) = exact(key) else {
            return Err(JsonError("a key is not a string"));
        };
        let (value, after) = split_value(after).map_err(|_| JsonError("truncated value"))?;
        rest = after;
        match exact(value) {
            Some(v) => {
                out.insert(key, v);
            }
            None if key == "data" => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(value);
                out.insert("data_msgpack".into(), Value::String(b64));
            }
            None => return Err(JsonError("a field has no JSON form")),
        }
    }
    Ok(out)
}

/// The JSON form of one complete MessagePack value, if it has an exact one.
pub fn exact(mut bytes: &[u8]) -> Option<Value> {
    let value = rmpv::decode::read_value(&mut bytes).ok()?;
    if !bytes.is_empty() {
        return None;
    }
    convert(value)
}

fn convert(value: rmpv::Value) -> Option<Value> {
    use rmpv::Value as M;
    Some(match value {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::Number(u.into()),
            (None, Some(s)) => Value::Number(s.into()),
            (None, None) => return None,
        },
        M::F32(f) => Value::Number(Number::from_f64(f64::from(f))?),
        M::F64(f) => Value::Number(Number::from_f64(f)?),
        M::String(s) => Value::String(s.into_str()?),
        M::Array(items) => Value::Array(items.into_iter().map(convert).collect::<Option<_>>()?),
        M::Map(entries) => {
            let n = entries.len();
            let mut map = Map::new();
            for (k, v) in entries {
                let M::String(k) = k else { return None };
                map.insert(k.into_str()?, convert(v)?);
            }
            // A repeated key would silently keep only its last value.
            if map.len() != n {
                return None;
            }
            Value::Object(map)
        }
        M::Binary(_) | M::Ext(..) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event;

    fn mp<T: serde::Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec(v).unwrap()
    }

    #[test]
    fn a_message_with_json_data() {
        let data = mp(&serde_json::json!({"text": "hi", "n": [1, -2, 2.5, null, true]}));
        let e = event_to_json(&event::msg("lobby", 42, "bob", &data)).unwrap();
        assert_eq!(
            Value::Object(e),
            serde_json::json!({"op": "msg", "room": "lobby", "offset": 42, "from": "bob",
                               "data": {"text": "hi", "n": [1, -2, 2.5, null, true]}})
        );
    }

    #[test]
    fn data_without_an_exact_json_form_is_passed_as_msgpack() {
        let bin = vec![0xc4, 2, 0xff, 0x00];
        let int_key = mp(&std::collections::BTreeMap::from([(1u8, "one")]));
        let nan = mp(&f64::NAN);
        let ext = vec![0xd4, 1, 2];
        let dup_key = vec![0x82, 0xa1, b'a', 1, 0xa1, b'a', 2];
        let bad_utf8 = vec![0xa2, 0xff, 0xfe];
        for data in [bin, int_key, nan, ext, dup_key, bad_utf8] {
            let e = event_to_json(&event::msg("r", 1, "u", &data)).unwrap();
            assert!(!e.contains_key("data"), "{e:?}");
            let back = base64::engine::general_purpose::STANDARD
                .decode(e["data_msgpack"].as_str().unwrap())
                .unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn integers_keep_their_exact_value() {
        for (data, json) in [
            (mp(&u64::MAX), serde_json::json!(u64::MAX)),
            (mp(&i64::MIN), serde_json::json!(i64::MIN)),
            (vec![0xce, 0, 0, 0, 5], serde_json::json!(5)),
        ] {
            let e = event_to_json(&event::dm("a", &data)).unwrap();
            assert_eq!(e["data"], json);
        }
    }

    const POLICY: crate::event::ReconnectPolicy = crate::event::ReconnectPolicy {
        base_ms: 500,
        max_ms: 30_000,
        after_drain_ms: 2_000,
    };

    #[test]
    fn every_server_event_converts() {
        for ev in [
            event::hello("c", "n", "u", 30000, 65536, &POLICY),
            event::ok_join(1, "r", "ab12", 7, Some(false)),
            event::err(1, crate::ErrorCode::Unavailable, "room: x"),
            event::reset("r", "ab12", 9),
            event::joined("r", "u"),
            event::left("r", "u"),
        ] {
            let e = event_to_json(&ev).unwrap();
            assert!(e["op"].is_string());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[0x81],
            &[0x81, 0x01, 0x01],
            &[0xc1],
            &[0x91, 0x01],
        ] {
            assert!(event_to_json(bad).is_err());
        }
    }
}
