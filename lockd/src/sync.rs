//! Mutex locking that survives a poisoned lock: lease state stays usable
//! after a panicking thread (the state it guards is only ever replaced
//! whole, never left half-written).

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
