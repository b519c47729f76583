//! Locking that survives a panicked holder.
//!
//! The crate's mutexes guard plain data (maps, counters, queues, logs) that every write leaves
//! whole: a thread that panics while holding one leaves nothing half-done behind it. Treating the
//! poison as fatal would turn one failed request into a mount, box or upload that fails every
//! later one, so every lock goes through [`lock`], which takes the data as it is.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poison (see the module docs for why that is sound here).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_gives_its_data() {
        let mutex = Mutex::new(vec![1]);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = mutex.lock().unwrap();
                panic!("poisoning on purpose");
            })
            .join()
        });
        assert!(mutex.is_poisoned());
        lock(&mutex).push(2);
        assert_eq!(*lock(&mutex), [1, 2]);
    }
}
