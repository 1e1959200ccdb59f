//! The shutdown signal shared by every thread.
//!
//! Ctrl+C and SIGTERM set the flag (see `main.rs`); loops check it at their next read
//! timeout. Blocking `accept()` is woken by the app connecting to its own listener.
//!
//! Threads: any. Lock-free.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cloneable handle on one process-wide stop flag.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every thread to stop after its current request.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
