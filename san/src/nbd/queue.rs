//! Requests of one connection between its reader and its workers: a FIFO
//! with a budget (bytes and requests in flight) that holds the reader back
//! before it reads another request's payload, so one client cannot make
//! the server buffer without bound.

use super::proto::Request;
use crate::AlignedBuf;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Bytes of data (write payloads and read buffers) in flight per connection.
const BUDGET_BYTES: usize = 64 << 20;
/// Requests in flight per connection.
const BUDGET_REQUESTS: usize = 128;

/// A checked request, ready to run.
pub(crate) struct Job {
    pub req: Request,
    /// A write's data, laid out as its sector span.
    pub payload: Option<AlignedBuf>,
    /// What it holds of the budget.
    pub cost: usize,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Admitted and not yet done: queued, being read, or running.
    bytes: usize,
    count: usize,
    workers: usize,
    idle: usize,
    closed: bool,
    /// When closed: run what is queued (true) or drop it.
    drain: bool,
}

#[derive(Default)]
pub(crate) struct Queue {
    st: Mutex<State>,
    /// Work for idle workers, or closing.
    work: Condvar,
    /// Budget freed, or closing.
    room: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a request of `cost` bytes fits the budget (one always
    /// fits when nothing is in flight) and reserves it; false once closed.
    pub fn admit(&self, cost: usize) -> bool {
        let mut st = self.lock();
        while !st.closed
            && st.count > 0
            && (st.bytes + cost > BUDGET_BYTES || st.count >= BUDGET_REQUESTS)
        {
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.closed {
            return false;
        }
        st.bytes += cost;
        st.count += 1;
        true
    }

    /// Gives back an admission (the request was answered without running,
    /// or has run).
    pub fn done(&self, cost: usize) {
        let mut st = self.lock();
        st.bytes = st.bytes.saturating_sub(cost);
        st.count = st.count.saturating_sub(1);
        drop(st);
        self.room.notify_all();
    }

    /// Queues an admitted job. True if the caller should start a worker
    /// (none is idle and fewer than `max_workers` run); the count is taken.
    pub fn push(&self, job: Job, max_workers: usize) -> bool {
        let mut st = self.lock();
        st.jobs.push_back(job);
        let start = st.idle < st.jobs.len() && st.workers < max_workers;
        if start {
            st.workers += 1;
        }
        drop(st);
        self.work.notify_one();
        start
    }

    /// A worker could not be started after `push` said to.
    pub fn worker_failed(&self) {
        self.lock().workers -= 1;
    }

    /// The next job for a worker; `None` when it should end.
    pub fn next(&self) -> Option<Job> {
        let mut st = self.lock();
        loop {
            if st.closed && !st.drain {
                return None;
            }
            if let Some(j) = st.jobs.pop_front() {
                return Some(j);
            }
            if st.closed {
                return None;
            }
            st.idle += 1;
            st = self.work.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.idle -= 1;
        }
    }

    /// No more jobs: workers finish the queued ones (`drain`) or drop them.
    pub fn close(&self, drain: bool) {
        let mut st = self.lock();
        if !st.closed {
            st.closed = true;
            st.drain = drain;
        } else if !drain {
            st.drain = false;
        }
        if !st.drain {
            let dropped: Vec<Job> = st.jobs.drain(..).collect();
            for j in &dropped {
                st.bytes = st.bytes.saturating_sub(j.cost);
                st.count = st.count.saturating_sub(1);
            }
        }
        drop(st);
        self.work.notify_all();
        self.room.notify_all();
    }

    /// Workers started (for tests).
    #[cfg(test)]
    fn workers(&self) -> usize {
        self.lock().workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(cost: usize) -> Job {
        Job {
            req: Request {
                flags: 0,
                kind: 0,
                cookie: 0,
                offset: 0,
                len: 0,
            },
            payload: None,
            cost,
        }
    }

    #[test]
    fn budget_admits_one_oversized_when_idle() {
        let q = Queue::default();
        assert!(q.admit(BUDGET_BYTES * 2));
        q.done(BUDGET_BYTES * 2);
        assert!(q.admit(1));
    }

    #[test]
    fn workers_start_on_demand_up_to_the_limit() {
        let q = Queue::default();
        assert!(q.admit(0));
        assert!(q.push(job(0), 2));
        assert!(q.admit(0));
        assert!(q.push(job(0), 2));
        assert!(q.admit(0));
        assert!(!q.push(job(0), 2));
        assert_eq!(q.workers(), 2);
        q.close(false);
        assert!(q.next().is_none());
        assert!(!q.admit(0));
    }

    #[test]
    fn drain_runs_queued_jobs() {
        let q = Queue::default();
        assert!(q.admit(5));
        q.push(job(5), 1);
        q.close(true);
        assert!(q.next().is_some());
        assert!(q.next().is_none());
    }
}
