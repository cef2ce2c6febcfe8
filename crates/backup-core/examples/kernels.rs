//! Single-core time of each unavoidable backup kernel on one input: the floor a backup of that
//! input can reach. Loads FILE into memory (a measurement tool, not a pipeline).
//!
//!   cargo run --release -p backup-core --example kernels -- FILE [ZSTD_LEVEL]
//!
//! Prints seconds and MB/s per kernel, their sum, and the sum divided by the core count: the
//! wall time of a perfectly parallel pipeline that does nothing else. bench/run.sh compares
//! Lifeboat's real backup wall time against it.
use std::time::Instant;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use backup_core::chunk::Cutter;
use backup_core::codec::Keys;
use backup_core::repository::ChunkerParams;
use sha2::{Digest, Sha256};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: kernels FILE [ZSTD_LEVEL]");
    let level: i32 = args.next().map_or(1, |l| l.parse().expect("zstd level"));
    let data = std::fs::read(&path).expect("read FILE");
    let mb = data.len() as f64 / 1e6;

    let t = Instant::now();
    let cutter = Cutter::new(ChunkerParams::default());
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = cutter.cut(&data[at..(at + cutter.max_size()).min(data.len())]);
        cuts.push(at..at + len);
        at += len;
    }
    let chunking = t.elapsed().as_secs_f64();

    let t = Instant::now();
    std::hint::black_box(Sha256::digest(&data));
    let stream_sha = t.elapsed().as_secs_f64();

    let keys = Keys::from_master(&[7u8; 64]);
    let t = Instant::now();
    for c in &cuts {
        std::hint::black_box(keys.chunk_id(&data[c.clone()]));
    }
    let chunk_ids = t.elapsed().as_secs_f64();

    let mut zc = zstd::bulk::Compressor::new(level).expect("zstd context");
    let t = Instant::now();
    let compressed: Vec<Vec<u8>> = cuts
        .iter()
        .map(|c| zc.compress(&data[c.clone()]).expect("compress"))
        .collect();
    let zstd_s = t.elapsed().as_secs_f64();
    let stored: usize = compressed.iter().map(Vec::len).sum();

    let cipher = Aes256Gcm::new_from_slice(&[9u8; 32]).expect("key");
    let t = Instant::now();
    for mut c in compressed {
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from([1u8; 12]), b"aad", (&mut c[..]).into())
            .expect("encrypt");
        std::hint::black_box(tag);
    }
    let aes = t.elapsed().as_secs_f64();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total = chunking + stream_sha + chunk_ids + zstd_s + aes;
    println!(
        "{path}: {mb:.0} MB in {} chunks, zstd level {level} → {:.0} MB",
        cuts.len(),
        stored as f64 / 1e6
    );
    for (name, s) in [
        ("FastCDC cut", chunking),
        ("SHA-256 of the stream", stream_sha),
        ("HMAC-SHA256 chunk ids", chunk_ids),
        ("zstd compress", zstd_s),
        ("AES-256-GCM", aes),
    ] {
        println!("{name:24} {s:7.2} s {:7.0} MB/s", mb / s);
    }
    println!(
        "{:24} {total:7.2} s {:7.0} MB/s",
        "sum (one core)",
        mb / total
    );
    println!(
        "{:24} {:7.2} s {:7.0} MB/s",
        format!("sum / {cores} cores"),
        total / cores as f64,
        mb * cores as f64 / total
    );
}
