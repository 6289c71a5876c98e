//! The Room actor and its supervisor, driven in-process on a node of one:
//! ordering, recovery with `since`, `msg_id` de-duplication, crash restart
//! and retirement. Members are recording sinks; nothing touches a socket.

mod support;

use std::time::Duration;

use support::{eventually, start, Recorder, Seen, NEVER};
use switchboard_router::RoomMsg;

const ROOM: &str = "lobby";

/// The epoch and offset of a join's `ok`, once it has come.
async fn joined_at(sink: &Recorder, id: u64) -> (String, u64) {
    eventually("the join's ok", || sink.reply(id).is_some()).await;
    let ok = sink.reply(id).unwrap();
    assert_eq!((ok.op(), ok.str("room")), ("ok", ROOM), "{ok:?}");
    (ok.str("epoch").to_owned(), ok.u64("offset"))
}

#[tokio::test]
async fn members_get_every_message_in_offset_order() {
    let node = start(100, NEVER, NEVER).await;
    let (a, b, publisher) = (Recorder::new(), Recorder::new(), Recorder::new());
    node.join(ROOM, 1, &a, 1, None).await;
    // Without a command id: no `ok`, messages all the same.
    node.join(ROOM, 2, &b, 0, None).await;
    for n in 1..=50 {
        node.publish(ROOM, n, None, Some((100 + n as u64, &publisher)))
            .await;
    }
    eventually("50 messages each", || {
        a.msgs().len() >= 50 && b.msgs().len() >= 50 && publisher.len() >= 50
    })
    .await;

    let (epoch, offset) = joined_at(&a, 1).await;
    assert_eq!(offset, 0, "a new room starts at offset 0");
    let expected: Vec<(u64, i64)> = (1..=50).map(|n| (n as u64, n)).collect();
    assert_eq!(a.msgs(), expected);
    assert_eq!(b.msgs(), expected);
    // The join's `ok` comes before any message; `b` asked for none.
    assert_eq!(a.events()[0].op(), "ok");
    assert_eq!(a.events().len(), 51);
    assert!(b.replies().is_empty(), "{:?}", b.replies());
    // The publisher, not a member, gets each message's offset and no `msg`.
    let oks: Vec<(u64, String, u64)> = publisher
        .events()
        .iter()
        .map(|e| {
            assert_eq!(e.op(), "ok", "{e:?}");
            (e.u64("id"), e.str("epoch").to_owned(), e.u64("offset"))
        })
        .collect();
    let want: Vec<(u64, String, u64)> = (1..=50).map(|n| (100 + n, epoch.clone(), n)).collect();
    assert_eq!(oks, want);
    assert_eq!(
        node.observer.seen(),
        vec![Seen::Joined(ROOM.into(), 1), Seen::Joined(ROOM.into(), 2)]
    );
}

#[tokio::test]
async fn a_join_with_since_replays_what_was_missed_then_goes_on_live() {
    let node = start(100, NEVER, NEVER).await;
    let a = Recorder::new();
    node.join(ROOM, 1, &a, 1, None).await;
    for n in 1..=5 {
        node.publish(ROOM, n, None, None).await;
    }
    eventually("5 messages", || a.msgs().len() == 5).await;
    let (epoch, _) = joined_at(&a, 1).await;

    let (from2, from5, from0) = (Recorder::new(), Recorder::new(), Recorder::new());
    node.join(ROOM, 2, &from2, 7, Some((&epoch, 2))).await;
    node.join(ROOM, 3, &from5, 8, Some((&epoch, 5))).await;
    node.join(ROOM, 4, &from0, 9, Some((&epoch, 0))).await;
    // Joining again replays nothing, whatever `since` says.
    node.join(ROOM, 2, &from2, 10, Some((&epoch, 0))).await;
    node.publish(ROOM, 6, None, None).await;
    eventually("the live message", || {
        [&a, &from2, &from5, &from0]
            .iter()
            .all(|s| s.msgs().last() == Some(&(6, 6)))
    })
    .await;

    for (sink, id, replayed) in [
        (&from2, 7, vec![3, 4, 5]),
        (&from5, 8, vec![]),
        (&from0, 9, vec![1, 2, 3, 4, 5]),
    ] {
        let events = sink.events();
        let ok = &events[0];
        assert_eq!(
            (ok.op(), ok.u64("id"), ok.str("epoch"), ok.u64("offset")),
            ("ok", id, epoch.as_str(), 5),
            "{events:?}"
        );
        assert_eq!(ok.recovered(), Some(true), "{ok:?}");
        let mut want: Vec<(u64, i64)> = replayed.into_iter().map(|n| (n, n as i64)).collect();
        want.push((6, 6));
        assert_eq!(sink.msgs(), want, "join {id}");
    }
    // The second join of conn 2: `ok` right away, nothing replayed.
    let again = from2.reply(10).expect("the second join's ok");
    assert_eq!(
        (again.str("epoch"), again.u64("offset")),
        (epoch.as_str(), 5)
    );
    // A plain join says nothing of recovery.
    assert_eq!(a.reply(1).unwrap().recovered(), None);
    assert_eq!(a.msgs(), (1..=6).map(|n| (n, n as i64)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_since_the_history_cannot_serve_is_not_recovered() {
    // Three messages retained: after six, offsets 4 to 6.
    let node = start(3, NEVER, NEVER).await;
    let a = Recorder::new();
    node.join(ROOM, 1, &a, 1, None).await;
    for n in 1..=6 {
        node.publish(ROOM, n, None, None).await;
    }
    eventually("6 messages", || a.msgs().len() == 6).await;
    let (epoch, _) = joined_at(&a, 1).await;

    let cases = [
        ("too old", Some(epoch.as_str()), 2, false),
        ("the oldest retained is next", Some(epoch.as_str()), 3, true),
        ("another epoch", None, 5, false),
        ("ahead of the room", Some(epoch.as_str()), 9, false),
    ];
    let sinks: Vec<_> = cases.iter().map(|_| Recorder::new()).collect();
    for (i, (_, e, offset, _)) in cases.iter().enumerate() {
        let since = (e.unwrap_or("0123456789abcdef"), *offset);
        node.join(ROOM, 10 + i as u64, &sinks[i], 1, Some(since))
            .await;
    }
    node.publish(ROOM, 7, None, None).await;
    eventually("the live message", || {
        sinks.iter().all(|s| s.msgs().last() == Some(&(7, 7)))
    })
    .await;

    for ((what, _, _, recovered), sink) in cases.iter().zip(&sinks) {
        let ok = &sink.events()[0];
        assert_eq!(
            (ok.op(), ok.str("epoch"), ok.u64("offset")),
            ("ok", epoch.as_str(), 6),
            "{what}"
        );
        assert_eq!(ok.recovered(), Some(*recovered), "{what}");
        let want: Vec<(u64, i64)> = if *recovered {
            vec![(4, 4), (5, 5), (6, 6), (7, 7)]
        } else {
            vec![(7, 7)]
        };
        assert_eq!(sink.msgs(), want, "{what}");
    }
}

#[tokio::test]
async fn a_repeated_msg_id_is_published_once_and_answered_with_its_offset() {
    let node = start(100, NEVER, NEVER).await;
    let (a, publisher) = (Recorder::new(), Recorder::new());
    node.join(ROOM, 1, &a, 0, None).await;
    node.publish(ROOM, 1, Some("m-1"), Some((1, &publisher)))
        .await;
    node.publish(ROOM, 2, Some("m-2"), Some((2, &publisher)))
        .await;
    // Retries, with other data even: not published again.
    node.publish(ROOM, 91, Some("m-1"), Some((3, &publisher)))
        .await;
    assert_eq!(node.publish_for_offset(ROOM, 92, Some("m-2")).await, 2);
    node.publish(ROOM, 3, None, Some((4, &publisher))).await;
    eventually("four replies", || publisher.replies().len() == 4).await;

    let offsets: Vec<(u64, u64)> = publisher
        .replies()
        .iter()
        .map(|e| (e.u64("id"), e.u64("offset")))
        .collect();
    assert_eq!(offsets, vec![(1, 1), (2, 2), (3, 1), (4, 3)]);
    // The reply to `id` 4 went out after its message reached the members.
    assert_eq!(a.msgs(), vec![(1, 1), (2, 2), (3, 3)]);
}

#[tokio::test]
async fn a_msg_id_is_forgotten_with_its_message() {
    let node = start(2, NEVER, NEVER).await;
    assert_eq!(node.publish_for_offset(ROOM, 1, Some("m-1")).await, 1);
    assert_eq!(node.publish_for_offset(ROOM, 1, Some("m-1")).await, 1);
    assert_eq!(node.publish_for_offset(ROOM, 2, None).await, 2);
    assert_eq!(node.publish_for_offset(ROOM, 3, None).await, 3);
    // Offset 1 has left the history of two: `m-1` is new again.
    assert_eq!(node.publish_for_offset(ROOM, 1, Some("m-1")).await, 4);
}

#[tokio::test]
async fn a_leave_is_acknowledged_before_the_messages_stop() {
    let node = start(100, NEVER, NEVER).await;
    let (a, publisher) = (Recorder::new(), Recorder::new());
    node.join(ROOM, 1, &a, 1, None).await;
    node.publish(ROOM, 1, None, None).await;
    node.leave(ROOM, 1, Some((2, &a)));
    // Not a member (any more): still `ok`.
    node.leave(ROOM, 1, Some((3, &a)));
    node.publish(ROOM, 2, None, Some((4, &publisher))).await;
    eventually("the second message's offset", || {
        publisher.reply(4).is_some()
    })
    .await;

    let ops: Vec<(String, u64)> = a
        .events()
        .iter()
        .map(|e| {
            let n = if e.op() == "ok" {
                e.u64("id")
            } else {
                e.u64("offset")
            };
            (e.op().to_owned(), n)
        })
        .collect();
    let want = [("ok", 1), ("msg", 1), ("ok", 2), ("ok", 3)];
    assert_eq!(
        ops,
        want.map(|(op, n)| (op.to_owned(), n)).to_vec(),
        "no msg follows the leave's ok"
    );
    assert_eq!(
        node.observer.seen(),
        vec![Seen::Joined(ROOM.into(), 1), Seen::Left(ROOM.into(), 1)]
    );
}

#[tokio::test]
async fn a_crashed_room_restarts_with_its_epoch_offsets_and_members() {
    let node = start(100, NEVER, NEVER).await;
    let (a, publisher) = (Recorder::new(), Recorder::new());
    node.join(ROOM, 1, &a, 1, None).await;
    for n in 1..=3 {
        node.publish(ROOM, n, None, None).await;
    }
    eventually("3 messages", || a.msgs().len() == 3).await;
    let (epoch, _) = joined_at(&a, 1).await;

    let failed = node.open(ROOM).await;
    assert!(node.rooms.crash(ROOM), "the room was running");
    eventually("the room to fail", || {
        !ractor::ACTIVE_STATES.contains(&failed.get_status())
    })
    .await;
    for n in 4..=5 {
        node.publish(ROOM, n, None, Some((n as u64, &publisher)))
            .await;
    }
    eventually("the messages after the crash", || a.msgs().len() >= 5).await;

    let restarted = node.open(ROOM).await;
    assert_ne!(restarted.get_id(), failed.get_id(), "a new actor");
    // Same epoch, offsets go on, the member stayed and was not reset.
    assert_eq!(a.msgs(), (1..=5).map(|n| (n, n as i64)).collect::<Vec<_>>());
    assert!(
        a.events().iter().all(|e| e.op() != "reset"),
        "{:?}",
        a.events()
    );
    eventually("the publisher's oks", || publisher.replies().len() == 2).await;
    for (e, n) in publisher.replies().iter().zip(4..) {
        assert_eq!((e.str("epoch"), e.u64("offset")), (epoch.as_str(), n));
    }
    // The history survived too.
    let b = Recorder::new();
    node.join(ROOM, 2, &b, 1, Some((&epoch, 3))).await;
    eventually("b's replay", || b.msgs().len() == 2).await;
    assert_eq!(b.reply(1).unwrap().recovered(), Some(true));
    assert_eq!(b.msgs(), vec![(4, 4), (5, 5)]);
    // No member was dropped and re-added on the way.
    assert_eq!(
        node.observer.seen(),
        vec![Seen::Joined(ROOM.into(), 1), Seen::Joined(ROOM.into(), 2)]
    );
}

#[tokio::test]
async fn an_idle_room_retires_and_its_successor_starts_a_new_epoch() {
    // History kept 30 ms; rooms tick every 5 ms.
    let node = start(100, Duration::from_millis(30), Duration::from_millis(5)).await;
    let a = Recorder::new();
    node.join(ROOM, 1, &a, 1, None).await;
    node.publish(ROOM, 1, None, None).await;
    eventually("the message", || a.msgs().len() == 1).await;
    let (epoch, _) = joined_at(&a, 1).await;
    assert_eq!(node.rooms.running(), 1);
    node.leave(ROOM, 1, None);
    // No member, and the history expires: the room retires.
    eventually("the room to retire", || node.rooms.running() == 0).await;

    let b = Recorder::new();
    node.join(ROOM, 2, &b, 1, Some((&epoch, 1))).await;
    let ok = {
        eventually("b's ok", || b.reply(1).is_some()).await;
        b.reply(1).unwrap()
    };
    assert_ne!(ok.str("epoch"), epoch, "a new incarnation, a new epoch");
    assert_eq!((ok.u64("offset"), ok.recovered()), (0, Some(false)));
}

/// Messages already queued to a room when it retires are handled by its
/// successor: nothing is lost, and their order is kept. The test runs on
/// a current-thread runtime and sends everything before it yields, so
/// the messages are in the room's mailbox behind the `Tick` that retires it.
#[tokio::test(flavor = "current_thread")]
async fn what_reaches_a_retiring_room_is_handled_by_its_successor() {
    let node = start(100, NEVER, NEVER).await;
    let (a, b, publisher) = (Recorder::new(), Recorder::new(), Recorder::new());
    node.join(ROOM, 1, &a, 1, None).await;
    node.leave(ROOM, 1, Some((2, &a)));
    eventually("the leave's ok", || a.reply(2).is_some()).await;
    let (epoch, _) = joined_at(&a, 1).await;
    let retiring = node.open(ROOM).await;

    // No member, no history: the Tick retires the room; the rest was
    // queued behind it.
    let queued = [
        RoomMsg::Tick,
        support::join_msg(2, &b, 1, None),
        support::publish_msg(1, Some("m-1"), Some((1, &publisher))),
        support::leave_msg(2, Some((2, &b))),
    ];
    for msg in queued {
        retiring.cast(msg).map_err(|_| "refused").unwrap();
    }
    eventually("the retiring room to stop", || {
        !ractor::ACTIVE_STATES.contains(&retiring.get_status())
    })
    .await;
    node.publish(ROOM, 2, None, Some((2, &publisher))).await;
    eventually("the second message's offset", || {
        publisher.reply(2).is_some()
    })
    .await;

    let successor = node.open(ROOM).await;
    assert_ne!(successor.get_id(), retiring.get_id());
    // The join, publication and leave reached the successor, in order.
    let ok = b.reply(1).expect("the forwarded join's ok");
    assert_ne!(ok.str("epoch"), epoch, "the successor's epoch");
    let new_epoch = ok.str("epoch").to_owned();
    assert_eq!(b.msgs(), vec![(1, 1)]);
    assert!(
        b.reply(2).is_some(),
        "the forwarded leave was acknowledged: {:?}",
        b.events()
    );
    let oks: Vec<(String, u64)> = publisher
        .replies()
        .iter()
        .map(|e| (e.str("epoch").to_owned(), e.u64("offset")))
        .collect();
    assert_eq!(oks, vec![(new_epoch.clone(), 1), (new_epoch, 2)]);
    assert_eq!(
        node.observer.seen(),
        vec![
            Seen::Joined(ROOM.into(), 1),
            Seen::Left(ROOM.into(), 1),
            Seen::Joined(ROOM.into(), 2),
            Seen::Left(ROOM.into(), 2),
        ]
    );
}
