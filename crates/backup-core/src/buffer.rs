//! Reusable chunk-sized byte buffers for restores: fetched objects and decrypted plaintexts.
//!
//! A restore allocated an object and a plaintext per chunk, each on one thread (a store read,
//! a CPU worker) and freed moments later on another. The allocator keeps such memory in the
//! allocating thread's heap, in a size class per length: restoring a 1.6 GB tree peaked at
//! 358 MiB RSS although at most a dozen chunks were alive. Buffers here come in power-of-two
//! capacities from 64 KiB and go back to a small shared free list when the chunk is written
//! (measured: that restore 110 MiB, a 762 MB dump's 226 → 97 MiB). Backups do not use them:
//! there the allocator reuses memory well since CPU work moved to a fixed pool, and a free
//! list only added ~50 MiB of idle buffers (see docs/BENCHMARKS.md).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

const MIN_SHIFT: u32 = 16;
const CLASSES: usize = 10; // 64 KiB … 32 MiB
/// Free buffers kept per class: a few more than chunks in flight on two cores.
const KEEP: usize = 16;
/// Bytes kept free over all classes. Per class alone, 16 buffers of each of the classes a
/// restore's chunk sizes spread over (1, 2, 4, 8 MiB…) let idle buffers reach ~250 MiB: a tree
/// restore peaked at 256–278 MiB.
const KEEP_BYTES: usize = 48 << 20;
/// Below this, plain allocations.
const SMALL: usize = 32 << 10;

static FREE: [Mutex<Vec<Vec<u8>>>; CLASSES] = [const { Mutex::new(Vec::new()) }; CLASSES];
static FREE_BYTES: AtomicUsize = AtomicUsize::new(0);

fn class(cap: usize) -> Option<usize> {
    let shift = cap.next_power_of_two().trailing_zeros().max(MIN_SHIFT);
    let c = (shift - MIN_SHIFT) as usize;
    (c < CLASSES).then_some(c)
}

/// An empty buffer with room for at least `len` bytes.
pub fn take(len: usize) -> Vec<u8> {
    // A small file's chunk in a 64 KiB buffer wasted 10× its size for every chunk in flight;
    // the allocator's small size classes recycle well across threads.
    if len < SMALL {
        return Vec::with_capacity(len);
    }
    match class(len) {
        Some(c) => {
            let size = 1 << (c as u32 + MIN_SHIFT);
            match FREE[c].lock().unwrap().pop() {
                Some(buf) => {
                    FREE_BYTES.fetch_sub(size, Ordering::Relaxed);
                    buf
                }
                None => Vec::with_capacity(size),
            }
        }
        None => Vec::with_capacity(len),
    }
}

/// Hands a buffer back for reuse (any buffer; those not from [`take`] are just dropped).
pub fn give(mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if !cap.is_power_of_two() {
        return;
    }
    if let Some(c) = class(cap).filter(|&c| 1 << (c as u32 + MIN_SHIFT) == cap) {
        let mut free = FREE[c].lock().unwrap();
        if free.len() < KEEP && FREE_BYTES.load(Ordering::Relaxed) + cap <= KEEP_BYTES {
            FREE_BYTES.fetch_add(cap, Ordering::Relaxed);
            buf.clear();
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_class() {
        assert_eq!(take(100_000).capacity(), 128 << 10);
        assert_eq!(take(40_000).capacity(), 64 << 10);
        assert_eq!(take(10).capacity(), 10, "small ones are exact");
        // The largest class: no other test in this process uses it, so nothing else can take
        // the buffer between `give` and `take` (the free list is process-wide).
        let mut a = take(17 << 20);
        assert_eq!(a.capacity(), 32 << 20);
        a.extend_from_slice(&[1; 1000]);
        let p = a.as_ptr();
        give(a);
        let b = take(20 << 20);
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), p, "the same allocation, cleared");
        assert_eq!(
            take(100 << 20).capacity(),
            100 << 20,
            "beyond the classes: plain"
        );
        give(vec![0u8; 3]); // foreign buffers are dropped, not kept
        give(b);
    }
}
