//! The room fan-out path: one publication through a real Room actor to
//! `n` members' sinks (counting sinks, so no socket is involved).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard_cluster::Cluster;
use switchboard_protocol::{Bytes, CloseCode, ConnId, EventSink};
use switchboard_router::{
    JoinRequest, Member, MembershipObserver, PublishReply, PublishRequest, RoomMsg, RoomSettings,
    RoomSupervisor,
};

struct Counting(Arc<AtomicU64>);

impl EventSink for Counting {
    fn push(&self, _event: Bytes) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
    fn close(&self, _code: CloseCode, _reason: &'static str) {}
    fn is_closed(&self) -> bool {
        false
    }
    fn last_seen(&self) -> Instant {
        Instant::now()
    }
}

struct NoPresence;

impl MembershipObserver for NoPresence {
    fn joined(&self, _room: &Arc<str>, _member: &Member) {}
    fn left(&self, _room: &Arc<str>, _conn: ConnId) {}
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("room fan-out");
    for members in [100u64, 1000, 5000] {
        let counter = Arc::new(AtomicU64::new(0));
        let rooms = rt.block_on(async {
            let settings = RoomSettings {
                history_size: 100,
                history_ttl: std::time::Duration::from_secs(300),
                tick: std::time::Duration::from_secs(1),
                replicas: 2,
            };
            let (rooms, _) =
                RoomSupervisor::start(settings, Cluster::new("bench"), Arc::new(NoPresence), None)
                    .await
                    .unwrap();
            for i in 0..members {
                let member = Member {
                    conn: ConnId(i),
                    user: format!("u{i}").into(),
                    sink: Arc::new(Counting(counter.clone())),
                    presence_events: true,
                };
                let req = JoinRequest {
                    member,
                    id: 0,
                    since: None,
                    refused: None,
                };
                rooms
                    .cast("lobby", RoomMsg::Join(Box::new(req)))
                    .await
                    .unwrap();
            }
            rooms
        });
        g.throughput(Throughput::Elements(members));
        g.bench_with_input(
            BenchmarkId::from_parameter(members),
            &members,
            |b, &members| {
                b.to_async(&rt).iter(|| {
                    let rooms = rooms.clone();
                    let counter = counter.clone();
                    async move {
                        let target = counter.load(Ordering::Relaxed) + members;
                        let req = PublishRequest {
                            from: "bench".into(),
                            data: Bytes::from_static(&[0x92, 0x01, 0x02]),
                            msg_id: None,
                            reply: PublishReply::None,
                            hops: 0,
                        };
                        rooms
                            .cast("lobby", RoomMsg::Publish(Box::new(req)))
                            .await
                            .unwrap();
                        while counter.load(Ordering::Relaxed) < target {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
