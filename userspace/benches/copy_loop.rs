//! The copy loop's core: reading through a pooled [`CopyBuffer`] and writing on, as each
//! direction of a spliced connection does. Run with `cargo bench -p postern --bench copy_loop`.
//!
//! `bulk` moves 4 MiB through an in-memory pipe (throughput, the buffer kept between
//! reads); `request` moves one small message per round trip (the buffer borrowed from the
//! pool and given back every time, as on a keep-alive connection between requests).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use postern::copy_buffer::CopyBuffer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BULK: usize = 4 * 1024 * 1024;
const REQUEST: usize = 200;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

fn bulk(c: &mut Criterion) {
    let runtime = runtime();
    let payload = vec![b'x'; BULK];
    let mut group = c.benchmark_group("copy_loop");
    group.throughput(Throughput::Bytes(BULK as u64));
    group.bench_function("bulk_4MiB", |b| {
        b.iter_batched(
            || (tokio::io::duplex(64 * 1024), tokio::io::duplex(64 * 1024)),
            |((mut client, mut from), (mut to, mut app))| {
                runtime.block_on(async {
                    let send = async {
                        client.write_all(&payload).await.unwrap();
                        client.shutdown().await.unwrap();
                    };
                    let copy = async {
                        let mut buffer = CopyBuffer::default();
                        loop {
                            let bytes = buffer.read(&mut from).await.unwrap();
                            if bytes.is_empty() {
                                break to.shutdown().await.unwrap();
                            }
                            to.write_all(bytes).await.unwrap();
                        }
                    };
                    let receive = async {
                        let mut sink = Vec::with_capacity(BULK);
                        app.read_to_end(&mut sink).await.unwrap();
                        assert_eq!(sink.len(), BULK);
                    };
                    tokio::join!(send, copy, receive);
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn request(c: &mut Criterion) {
    let runtime = runtime();
    let (mut client, mut from) = tokio::io::duplex(64 * 1024);
    let (mut to, mut app) = tokio::io::duplex(64 * 1024);
    let message = [b'x'; REQUEST];
    let mut received = [0u8; REQUEST];
    let mut buffer = CopyBuffer::default();
    c.bench_function("copy_loop/request_200B", |b| {
        b.iter(|| {
            runtime.block_on(async {
                client.write_all(&message).await.unwrap();
                let mut moved = 0;
                while moved < REQUEST {
                    let bytes = buffer.read(&mut from).await.unwrap();
                    moved += bytes.len();
                    to.write_all(bytes).await.unwrap();
                }
                app.read_exact(&mut received).await.unwrap();
            })
        })
    });
}

criterion_group!(benches, bulk, request);
criterion_main!(benches);
