//! The per-chunk work of every tunneled byte: framing a data message for the wire and reading
//! one back (`sesame_tunnel::wire`, what every process does), the same with `prost` into a
//! buffer (what a stock gRPC codec does, for comparison), and the relay's splice moving chunks
//! from one peer's stream to the other's.
//!
//! `cargo bench -p sesame-tunnel`; throughput is reported in bytes per second.

use std::hint::black_box;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::task::noop_waker_ref;
use futures_util::{Stream, StreamExt, stream};
use http_body::Body as _;
use prost::Message;
use sesame_proto::v1::{AcceptConnectionRequest, DialRequest};
use sesame_tunnel::frame::{ClientMessage, Outbound};
use sesame_tunnel::settings::MAX_CHUNK_BYTES;
use sesame_tunnel::splice::splice;
use sesame_tunnel::wire::{DecodeStream, EncodeBody};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;

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

/// The HTTP/2 frames of `count` data messages carrying `piece`, as `EncodeBody` makes them.
fn wire_frames(piece: &Bytes, count: usize) -> Vec<Bytes> {
    let piece = piece.clone();
    let messages =
        stream::iter((0..count).map(move |_| Ok::<DialRequest, Status>(data(piece.clone()))));
    let mut body = EncodeBody::client(messages);
    let mut context = Context::from_waker(noop_waker_ref());
    let mut frames = Vec::new();
    while let Poll::Ready(Some(frame)) = std::pin::Pin::new(&mut body).poll_frame(&mut context) {
        let frame = frame.expect("a client body never fails on its own");
        frames.push(frame.into_data().expect("only data frames"));
    }
    frames
}

fn encode_and_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk");
    for len in CHUNKS {
        group.throughput(Throughput::Bytes(len as u64));
        let piece = chunk(len);
        group.bench_with_input(BenchmarkId::new("wire_encode", len), &piece, |b, piece| {
            b.iter(|| black_box(wire_frames(piece, 1)))
        });
        let frames = wire_frames(&piece, 1);
        assert_eq!(frames.len(), 2, "a head, then the chunk");
        group.bench_with_input(
            BenchmarkId::new("wire_decode", len),
            &frames,
            |b, frames| {
                b.iter(|| {
                    let frames = stream::iter(
                        frames
                            .clone()
                            .into_iter()
                            .map(|frame| Ok::<_, Status>(http_body::Frame::data(frame))),
                    );
                    let body = Body::new(http_body_util::StreamBody::new(frames));
                    let mut messages = DecodeStream::<AcceptConnectionRequest>::request(body);
                    let mut context = Context::from_waker(noop_waker_ref());
                    match messages.poll_next_unpin(&mut context) {
                        Poll::Ready(Some(Ok(message))) => black_box(message),
                        _ => panic!("a whole message was given"),
                    }
                })
            },
        );
        let message: DialRequest = data(chunk(len));
        let mut buffer = BytesMut::with_capacity(len + 64);
        group.bench_with_input(
            BenchmarkId::new("prost_encode", len),
            &message,
            |b, message| {
                b.iter(|| {
                    buffer.clear();
                    message.encode(&mut buffer).expect("the buffer has room");
                    black_box(buffer.len())
                })
            },
        );
        let encoded = message.encode_to_vec().into();
        group.bench_with_input(
            BenchmarkId::new("prost_decode", len),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    let decoded = AcceptConnectionRequest::decode(Bytes::clone(encoded));
                    black_box(decoded.expect("a valid message"))
                })
            },
        );
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
