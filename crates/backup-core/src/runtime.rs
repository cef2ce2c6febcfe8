//! The CPU pool: hashing, compression and encryption on one thread per core, shared by backup,
//! restore, check and GC.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Chunks in flight by default: enough to keep every core busy while stores answer.
pub fn default_concurrency() -> usize {
    cores() * 4 + 4
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs CPU work (hashing, compression, encryption) on a pool of one thread per core.
///
/// Not on tokio's blocking pool: that grows to a thread per waiting store call (a local put
/// waits on two fsyncs), and buffers allocated on a thread stay in its allocator heap, so
/// sealing chunks on twenty threads held ~25 MiB each (measured: peak RSS 217 MiB with 4
/// blocking threads, 572 MiB with the default pool, on a 1.6 GB tree). With a fixed pool the
/// allocations, and the per-thread zstd contexts, live on `cores()` threads, and chunks
/// waiting on the store never take a core from one that could compress.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    type Job = Box<dyn FnOnce() + Send>;
    static POOL: std::sync::LazyLock<std::sync::mpsc::Sender<Job>> =
        std::sync::LazyLock::new(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..cores() {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("lifeboat-cpu-{i}"))
                    .spawn(move || {
                        loop {
                            let job = rx.lock().unwrap().recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => break,
                            }
                        }
                    })
                    .expect("spawning a CPU worker thread");
            }
            tx
        });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    POOL.send(job)
        .expect("CPU workers run as long as the process");
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) | Err(_) => Err(Error::io(
            "worker thread",
            std::io::Error::other("a CPU worker panicked"),
        )),
    }
}
