//! Lock access that survives a poisoned lock.
//!
//! A panic while a lock is held (which the agent treats as a bug, never as an
//! input error) poisons it. The data behind every lock here is a snapshot or a
//! counter that stays consistent between statements, so the next user takes it
//! as it is rather than spreading the panic to the scrape path or the daemon loop.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait LockExt<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub trait RwLockExt<T: ?Sized> {
    fn read_now(&self) -> RwLockReadGuard<'_, T>;
    fn write_now(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_now(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write_now(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|p| p.into_inner())
    }
}
