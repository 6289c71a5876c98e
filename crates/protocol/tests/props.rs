//! Property tests of the codec: round trips, concatenation, byte-exact
//! passthrough of arbitrary values, and no panic on arbitrary bytes.

use proptest::prelude::*;
use rmpv::Value;
use switchboard_protocol::{
    decode_commands, event, split_value, Bytes, Command, CommandKind, Since, MAX_DEPTH,
};

const POLICY: switchboard_protocol::event::ReconnectPolicy =
    switchboard_protocol::event::ReconnectPolicy {
        base_ms: 500,
        max_ms: 30_000,
        after_drain_ms: 2_000,
    };

fn enc(v: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, v).unwrap();
    buf
}

/// Arbitrary MessagePack values, nested well below `MAX_DEPTH`.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        ".{0,40}".prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((".{0,8}".prop_map(Value::from), inner), 0..8)
                .prop_map(Value::Map),
        ]
    })
}

/// Encodings rmpv would not choose: a wider int or string header.
fn non_canonical() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u8>().prop_map(|n| vec![0xce, 0, 0, 0, n]),
        any::<i8>().prop_map(|n| {
            let mut v = vec![0xd3];
            v.extend_from_slice(&i64::from(n).to_be_bytes());
            v
        }),
        "[a-z]{0,10}".prop_map(|s| {
            let mut v = vec![0xdb];
            v.extend_from_slice(&(s.len() as u32).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
            v
        }),
        Just(vec![0xdc, 0, 1, 0xc0]),
    ]
}

fn data_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![value().prop_map(|v| enc(&v)), non_canonical()]
}

fn room() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,128}"
}

/// A valid command with the map that encodes it, keys in random order and
/// with unknown keys mixed in.
fn command() -> impl Strategy<Value = (Command, Vec<u8>)> {
    let kind = prop_oneof![
        (
            room(),
            proptest::option::of(("[a-f0-9]{1,16}", any::<u64>())),
            any::<bool>()
        )
            .prop_map(|(room, since, presence)| {
                CommandKind::Join {
                    room,
                    since: since.map(|(epoch, offset)| Since { epoch, offset }),
                    presence,
                }
            }),
        room().prop_map(|room| CommandKind::Leave { room }),
        (room(), data_bytes(), proptest::option::of("[a-z0-9]{1,64}")).prop_map(
            |(room, data, msg_id)| CommandKind::Pub {
                room,
                data: Bytes::from(data),
                msg_id,
            }
        ),
        ("[a-z]{1,20}", data_bytes()).prop_map(|(to, data)| CommandKind::Send {
            to,
            data: Bytes::from(data),
        }),
        room().prop_map(|room| CommandKind::Presence { room }),
        Just(CommandKind::Ping),
    ];
    (
        kind,
        any::<u64>(),
        proptest::collection::vec(("x[a-z]{0,6}", value()), 0..3),
        any::<u64>(),
    )
        .prop_map(|(kind, id, unknown, shuffle)| {
            let cmd = Command { id, kind };
            let bytes = encode(&cmd, &unknown, shuffle);
            (cmd, bytes)
        })
}

/// Encodes a command by hand so that `data` goes in as its raw bytes.
fn encode(cmd: &Command, unknown: &[(String, Value)], shuffle: u64) -> Vec<u8> {
    let mut fields: Vec<(String, Vec<u8>)> = vec![
        ("op".into(), enc(&Value::from(cmd.kind.op()))),
        ("id".into(), enc(&Value::from(cmd.id))),
    ];
    let s = |v: &str| enc(&Value::from(v));
    match &cmd.kind {
        CommandKind::Join {
            room,
            since,
            presence,
        } => {
            fields.push(("room".into(), s(room)));
            // Leaving it out means true.
            if !presence || stable_coin(room) {
                fields.push(("presence".into(), enc(&Value::from(*presence))));
            }
            if let Some(since) = since {
                let m = Value::Map(vec![
                    ("epoch".into(), since.epoch.as_str().into()),
                    ("offset".into(), since.offset.into()),
                ]);
                fields.push(("since".into(), enc(&m)));
            }
        }
        CommandKind::Leave { room } | CommandKind::Presence { room } => {
            fields.push(("room".into(), s(room)))
        }
        CommandKind::Pub { room, data, msg_id } => {
            fields.push(("room".into(), s(room)));
            fields.push(("data".into(), data.to_vec()));
            if let Some(m) = msg_id {
                fields.push(("msg_id".into(), s(m)));
            }
        }
        CommandKind::Send { to, data } => {
            fields.push(("to".into(), s(to)));
            fields.push(("data".into(), data.to_vec()));
        }
        CommandKind::Ping => {}
    }
    for (k, v) in unknown {
        fields.push((k.clone(), enc(v)));
    }
    // A deterministic shuffle of the key order.
    let n = fields.len();
    for i in (1..n).rev() {
        let j = ((shuffle >> (i % 60)) as usize ^ i) % (i + 1);
        fields.swap(i, j);
    }
    let mut buf = Vec::new();
    rmp::encode::write_map_len(&mut buf, n as u32).unwrap();
    for (k, v) in fields {
        rmp::encode::write_str(&mut buf, &k).unwrap();
        buf.extend(v);
    }
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn commands_round_trip((cmd, bytes) in command()) {
        let decoded: Vec<_> = decode_commands(&Bytes::from(bytes)).collect();
        prop_assert_eq!(decoded, vec![Ok(cmd)]);
    }

    #[test]
    fn concatenated_commands_decode_in_order(
        cmds in proptest::collection::vec(command(), 1..8),
        bad_ids in proptest::collection::vec(proptest::option::of(any::<u64>()), 1..8),
    ) {
        let mut message = Vec::new();
        let mut want = Vec::new();
        for ((cmd, bytes), bad) in cmds.into_iter().zip(bad_ids.into_iter().chain(std::iter::repeat(None))) {
            message.extend(bytes);
            want.push(Ok(cmd.id));
            if let Some(id) = bad {
                // Well-formed, but not a valid command: an error with its id.
                message.extend(enc(&Value::Map(vec![("op".into(), "nope".into()), ("id".into(), id.into())])));
                want.push(Err(id));
            }
        }
        let got: Vec<_> = decode_commands(&Bytes::from(message))
            .map(|r| r.map(|c| c.id).map_err(|e| e.id))
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn data_is_carried_byte_for_byte(data in data_bytes(), offset in any::<u64>()) {
        let cmd = Command {
            id: 1,
            kind: CommandKind::Pub { room: "r".into(), data: Bytes::from(data.clone()), msg_id: None },
        };
        let decoded = decode_commands(&Bytes::from(encode(&cmd, &[], 0))).next().unwrap().unwrap();
        let CommandKind::Pub { data: got, .. } = decoded.kind else { panic!() };
        prop_assert_eq!(&got[..], &data[..]);
        // And out again, unchanged, inside `msg` and `dm`.
        for ev in [event::msg("r", offset, "u", &got), event::dm("u", &got)] {
            let (one, rest) = split_value(&ev).unwrap();
            prop_assert!(rest.is_empty());
            let mut r = one;
            let n = rmp::decode::read_map_len(&mut r).unwrap();
            let mut found = None;
            for _ in 0..n {
                let (k, tail) = split_value(r).unwrap();
                let (v, tail) = split_value(tail).unwrap();
                if k == enc(&Value::from("data")) {
                    found = Some(v.to_vec());
                }
                r = tail;
            }
            prop_assert_eq!(found, Some(data.clone()));
        }
    }

    #[test]
    fn events_are_single_maps_that_concatenate(
        room in room(), user in ".{1,20}", offset in any::<u64>(), id in any::<u64>(),
        users in proptest::collection::vec("[a-z]{1,8}", 0..20),
    ) {
        let events = vec![
            event::hello("c", "n", &user, 30000, 65536, &POLICY),
            event::ok(id),
            event::ok_join(id, &room, "e", offset, Some(true)),
            event::ok_pub(id, "e1", offset),
            event::ok_send(id, offset),
            event::ok_presence(id, &room, &users),
            event::pong(id),
            event::err(id, switchboard_protocol::ErrorCode::TooMany, "limit"),
            event::msg(&room, offset, &user, &[0xc0]),
            event::joined(&room, &user),
            event::left(&room, &user),
        ];
        let all: Vec<u8> = events.iter().flat_map(|e| e.to_vec()).collect();
        let mut rest = &all[..];
        for ev in &events {
            let (one, tail) = split_value(rest).unwrap();
            prop_assert_eq!(one, &ev[..]);
            let v = rmpv::decode::read_value(&mut &one[..]).unwrap();
            prop_assert!(v.is_map());
            rest = tail;
        }
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let message = Bytes::from(bytes.clone());
        prop_assert!(decode_commands(&message).count() <= bytes.len());
        if let Ok((one, rest)) = split_value(&bytes) {
            prop_assert_eq!(one.len() + rest.len(), bytes.len());
            prop_assert!(!one.is_empty());
        }
    }
}

#[test]
fn nesting_is_bounded() {
    let ok = [vec![0x91; MAX_DEPTH - 2], vec![0x01]].concat();
    let cmd = Command {
        id: 3,
        kind: CommandKind::Pub {
            room: "r".into(),
            data: Bytes::from(ok.clone()),
            msg_id: None,
        },
    };
    assert!(decode_commands(&Bytes::from(encode(&cmd, &[], 0)))
        .next()
        .unwrap()
        .is_ok());
    let deep = [vec![0x91; 1000], vec![0x01]].concat();
    let cmd = Command {
        id: 3,
        kind: CommandKind::Pub {
            room: "r".into(),
            data: Bytes::from(deep),
            msg_id: None,
        },
    };
    let e = decode_commands(&Bytes::from(encode(&cmd, &[], 0)))
        .next()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.id, 0);
    assert!(e.reason.contains("nested deeper"), "{}", e.reason);
}

/// A stable coin flip, so that `presence: true` is sometimes written out.
fn stable_coin(seed: &str) -> bool {
    seed.len().is_multiple_of(2)
}
