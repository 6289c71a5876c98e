//! The codec's hot paths: decoding a batch of `pub` commands, encoding a `msg`.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard_protocol::{decode_commands, event, Bytes};

fn pub_command(i: u64) -> Vec<u8> {
    // {"op":"pub","id":i,"room":"lobby","data":[i, 1700000000000000000]}
    let mut b = vec![
        0x84, 0xa2, b'o', b'p', 0xa3, b'p', b'u', b'b', 0xa2, b'i', b'd', 0xce,
    ];
    b.extend((i as u32).to_be_bytes());
    b.extend([
        0xa4, b'r', b'o', b'o', b'm', 0xa5, b'l', b'o', b'b', b'b', b'y',
    ]);
    b.extend([0xa4, b'd', b'a', b't', b'a', 0x92, 0xce]);
    b.extend((i as u32).to_be_bytes());
    b.push(0xcf);
    b.extend(1_700_000_000_000_000_000u64.to_be_bytes());
    b
}

fn codec(c: &mut Criterion) {
    let batch: Vec<u8> = (0..20).flat_map(pub_command).collect();
    let batch = Bytes::from(batch);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(20));
    g.bench_function("decode 20 pub commands", |b| {
        b.iter(|| decode_commands(&batch).filter(Result::is_ok).count())
    });
    g.throughput(Throughput::Elements(1));
    let data = [0x92, 0x01, 0xcf, 0, 0, 0, 0, 0, 0, 0, 1];
    g.bench_function("encode msg", |b| {
        b.iter(|| event::msg("lobby", 123_456, "alice", &data))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
