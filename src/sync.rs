//! One rule for poisoned locks.
//!
//! A `std` lock is poisoned when a thread panics while holding it. Every
//! value this crate guards with a lock stays consistent across such a
//! panic: each critical section either makes one assignment, or makes
//! changes that leave the value valid after any of them (a push, an
//! insert, a removal), and none of them calls code that may panic in the
//! middle of a change (user callbacks run outside the locks). So a
//! poisoned lock is simply taken: the helpers here recover the guard with
//! [`PoisonError::into_inner`](std::sync::PoisonError::into_inner). Cache
//! internals never fail a request, and a lock that refused every later
//! caller would turn one panic into a cache that stops caching (or stops
//! invalidating) for the life of the process.
//!
//! Where each guarded value is, and why it holds:
//!
//! - `coalesce::Shard` (the in-flight map): inserts and removals of whole
//!   flights, paired with the shared count under the same lock;
//! - `store::memory::VaryIndex::variants`: a bounded list of variant hashes;
//!   a panic could at worst lose a hash from the list, so that invalidating
//!   the URL leaves that variant to expire (taking the lock is still better
//!   than refusing it, which skipped the removal of every variant);
//! - `observe::labels::LabelTable`: `names` is pushed before `index` points
//!   at the new slot, so every index in `index` is a valid name;
//! - `export::shared::Flusher::state`: a read, a single assignment of
//!   `last`, and `base` added to before the counters are zeroed (a panic in
//!   between would count the unzeroed counters twice in the shared stats,
//!   never lose them; zeroing is atomic stores that do not panic);
//! - `warm` (the target queue and the failures list) and `admin` (the
//!   warming jobs): an iterator's `next`, a push, field assignments, and an
//!   insert or removal of a whole job;
//! - `store::redis` (the connection slots) and `store::l2` (the writer's
//!   queue sender, the last `INFO`, the invalidation log's last id, run id
//!   and lost-since time): each an `Option` or a small `Copy` value only
//!   ever replaced whole;
//! - `store::inval::Outbox` (invalidations queued while Redis is
//!   unreachable): pushes and drains of whole entries, bounded.
//! - `hot::HotKeys` (a shard of the hot-key tracker): a slot's count
//!   changed, or the slot replaced whole; `hot::PrefetchQueue` (the keys
//!   waiting and pending): a push or a pop paired with an insert or a
//!   removal of the same key; `warm::background` (the inner service kept
//!   for background work): a clone taken out.
//!
//! A new lock in this crate uses these helpers, and adds its line above.
//!
//! Also here: [`start_once`], the one way a background task that must run
//! once per value (the shared-stats flusher, the L2 subscriber) is started.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, taking it even if a panic poisoned it (see the module docs).
#[inline]
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks `m` if no one holds it (`None` otherwise), taking it even if a
/// panic poisoned it: for paths that would rather skip than wait.
#[inline]
pub(crate) fn try_lock<T: ?Sized>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Read-locks `l`, taking it even if a panic poisoned it.
#[inline]
pub(crate) fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks `l`, taking it even if a panic poisoned it.
#[inline]
pub(crate) fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The current runtime, when `started` is not yet set and there is one
/// (`started` is then set, by exactly one caller): a task that must run
/// once is spawned on it. `None` once started, or without a runtime (the
/// next call tries again).
#[cfg(feature = "redis")]
pub(crate) fn start_once(
    started: &std::sync::atomic::AtomicBool,
) -> Option<tokio::runtime::Handle> {
    use std::sync::atomic::Ordering;
    if started.load(Ordering::Relaxed) {
        return None;
    }
    let handle = tokio::runtime::Handle::try_current().ok()?;
    if started.swap(true, Ordering::AcqRel) {
        return None;
    }
    Some(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// Runs `f` and swallows its panic (the message still prints).
    fn panics(f: impl FnOnce()) {
        assert!(
            catch_unwind(AssertUnwindSafe(f)).is_err(),
            "f did not panic"
        );
    }

    #[test]
    fn a_poisoned_mutex_is_taken_with_what_it_holds() {
        let m = Mutex::new(vec![1]);
        panics(|| {
            let mut g = lock(&m);
            g.push(2);
            panic!("poisons the lock while holding it");
        });
        assert!(m.is_poisoned());
        // Plain `lock()` refuses it; the helper hands it over, changes made
        // before the panic included, and keeps doing so.
        assert!(m.lock().is_err());
        assert_eq!(*lock(&m), [1, 2]);
        lock(&m).push(3);
        assert_eq!(*lock(&m), [1, 2, 3]);
    }

    #[test]
    fn a_poisoned_rwlock_is_taken_for_reads_and_writes() {
        let l = RwLock::new(1);
        panics(|| {
            let mut g = write(&l);
            *g = 2;
            panic!("poisons the lock while holding it");
        });
        assert!(l.is_poisoned());
        assert!(l.read().is_err());
        assert_eq!(*read(&l), 2);
        *write(&l) = 3;
        assert_eq!(*read(&l), 3);
    }

    #[test]
    fn an_unpoisoned_lock_is_taken_as_usual() {
        let m = Mutex::new(5);
        *lock(&m) += 1;
        assert!(!m.is_poisoned());
        assert_eq!(*lock(&m), 6);
    }
}
