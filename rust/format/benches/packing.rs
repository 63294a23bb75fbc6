//! Packing throughput for every bit width: `cargo bench -p deltapack-format --bench packing`.
//! Throughput is reported in GB/s of unpacked codes (one byte per code).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deltapack_format::pack::{pack_rows, packed_len, unpack_rows};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    // One 4096 x 4096 matrix: a Llama-7B attention projection.
    let (rows, cols) = (4096usize, 4096usize);
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes((rows * cols) as u64));
    g.sample_size(20);
    for bits in [1u32, 2, 3, 4, 8] {
        let codes: Vec<u8> = (0..rows * cols).map(|i| ((i as u64).wrapping_mul(0x9E3779B97F4A7C15) >> 59) as u8 & ((1u16 << bits) - 1) as u8).collect();
        let mut packed = vec![0u8; packed_len(rows as u64, cols as u64, bits).unwrap() as usize];
        g.bench_with_input(BenchmarkId::new("pack", bits), &bits, |b, &bits| {
            b.iter(|| pack_rows(black_box(&codes), rows, cols, bits, &mut packed).unwrap())
        });
        let mut out = vec![0u8; rows * cols];
        g.bench_with_input(BenchmarkId::new("unpack", bits), &bits, |b, &bits| {
            b.iter(|| unpack_rows(black_box(&packed), rows, cols, bits, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
