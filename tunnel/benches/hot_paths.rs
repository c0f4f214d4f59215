//! The per-chunk work of every tunneled byte: encoding a data message, decoding one, and the
//! relay's splice moving chunks from one peer's stream to the other's.
//!
//! `cargo bench -p sesame-tunnel`; throughput is reported in bytes per second.

use std::hint::black_box;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::task::noop_waker_ref;
use futures_util::{Stream, StreamExt, stream};
use prost::Message;
use sesame_proto::v1::{AcceptConnectionRequest, DialRequest};
use sesame_tunnel::frame::{ClientMessage, Outbound};
use sesame_tunnel::settings::MAX_CHUNK_BYTES;
use sesame_tunnel::splice::splice;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The chunk sizes worth watching: the default chunk, and the protocol's ceiling.
const CHUNKS: [usize; 2] = [64 << 10, MAX_CHUNK_BYTES];

/// How many bytes one splice run moves.
const SPLICED_BYTES: usize = 64 << 20;

fn chunk(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
}

fn data<M: ClientMessage>(chunk: Bytes) -> M {
    M::from_outbound(Outbound::Data(chunk))
}

fn encode_and_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk");
    for len in CHUNKS {
        group.throughput(Throughput::Bytes(len as u64));
        let message: DialRequest = data(chunk(len));
        let mut buffer = BytesMut::with_capacity(len + 64);
        group.bench_with_input(BenchmarkId::new("encode", len), &message, |b, message| {
            b.iter(|| {
                buffer.clear();
                message.encode(&mut buffer).expect("the buffer has room");
                black_box(buffer.len())
            })
        });
        let encoded = message.encode_to_vec().into();
        group.bench_with_input(BenchmarkId::new("decode", len), &encoded, |b, encoded| {
            b.iter(|| {
                let decoded = AcceptConnectionRequest::decode(Bytes::clone(encoded));
                black_box(decoded.expect("a valid message"))
            })
        });
    }
    group.finish();
}

/// Takes `count` items from `stream` with a no-op waker: the splice never waits while its
/// source is ready, so every poll yields an item.
fn take(mut stream: impl Stream + Unpin, count: usize) {
    let mut context = Context::from_waker(noop_waker_ref());
    for _ in 0..count {
        match stream.poll_next_unpin(&mut context) {
            Poll::Ready(Some(item)) => {
                black_box(item);
            }
            _ => panic!("a ready source never makes the splice wait"),
        }
    }
}

fn splice_loop(c: &mut Criterion) {
    let mut group = c.benchmark_group("splice");
    group.throughput(Throughput::Bytes(SPLICED_BYTES as u64));
    group.sample_size(20);
    for len in CHUNKS {
        let piece = chunk(len);
        let count = SPLICED_BYTES / len;
        group.bench_with_input(
            BenchmarkId::new("dialer_to_agent", len),
            &piece,
            |b, piece| {
                b.iter(|| {
                    let piece = piece.clone();
                    let from_dialer = stream::iter(
                        (0..count).map(move |_| Ok::<DialRequest, Status>(data(piece.clone()))),
                    );
                    let from_agent = stream::empty::<Result<AcceptConnectionRequest, Status>>();
                    let cut = CancellationToken::new();
                    let (_to_dialer, to_agent) =
                        splice(from_dialer, from_agent, MAX_CHUNK_BYTES, &cut);
                    // Every chunk, then close_write.
                    take(to_agent, count + 1);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, encode_and_decode, splice_loop);
criterion_main!(benches);
