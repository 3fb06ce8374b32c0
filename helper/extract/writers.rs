//! Threads that create a layer's small files. On a layer of many small files the kernel's work
//! of creating them is what takes time, and one thread spends most of it waiting on the
//! kernel: handing the files out lets that work spread over the cores.
//!
//! The applier only hands out files that nothing else in the layer can be waiting for: new
//! names in directories the layer made and, on a plain tree, names that hold nothing or a lower
//! layer's regular file (which the writer removes first). It waits for every handed-out file
//! ([`Writers::wait`]) before anything that could touch one: removals, links, the end of the
//! layer (and, through an overlay, whiteouts and opaque markers).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Scope;

use anyhow::Result;

use super::skipped::SkippedList;
use strata_protocol::Skipped;
use strata_ring::PageBuf;

/// Files at most this large are handed out; their contents travel with them.
pub const SMALL_FILE: u64 = 128 * 1024;
/// Files handed out but not yet taken, at most: with [`SMALL_FILE`], memory stays bounded.
const QUEUED: usize = 32;

/// Buffers kept for reuse, at most: as many as can be queued or being written.
const SPARE_BUFFERS: usize = QUEUED + 4;

/// Creates one file; returns what of it could not be reproduced. Its error names its entry.
pub type Job = Box<dyn FnOnce() -> Result<Vec<Skipped>> + Send>;

/// A handed-out file failed: the error surfaces while a later entry is applied, but is about
/// its own entry, which it names.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EarlierEntry(anyhow::Error);

/// Buffers for the contents of handed-out files, passed back when a file is written: a new
/// buffer would be allocated, zeroed before it is read into, and freed, for every file.
#[derive(Clone, Default)]
pub struct Buffers(Arc<Mutex<Vec<PageBuf>>>);

impl Buffers {
    /// A buffer of [`SMALL_FILE`] bytes; what is in it is left from earlier files.
    pub fn take(&self) -> PageBuf {
        self.lock()
            .pop()
            .unwrap_or_else(|| PageBuf::new(SMALL_FILE as usize))
    }

    pub fn give_back(&self, buffer: PageBuf) {
        let mut spare = self.lock();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buffer);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<PageBuf>> {
        self.0.lock().expect("no thread panics holding the lock")
    }
}

/// One lock guards everything, and a thread is woken only when it sleeps: a layer hands out
/// thousands of files, and a wake-up (a context switch) per file would cost more than the
/// writing it spreads.
pub struct Writers {
    /// `None` without threads: the applier then writes every file itself.
    shared: Option<Arc<Shared>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Writers sleep here until there is a job, or the pool closes.
    jobs_queued: Condvar,
    /// The applier sleeps here until the queue has room, or every job is done.
    jobs_done: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(u64, Job)>,
    /// Queued or running.
    pending: usize,
    sleeping_writers: usize,
    applier_sleeping: bool,
    /// The first job's error; later jobs are dropped unrun.
    failure: Option<anyhow::Error>,
    /// No more jobs will come: writers return once the queue is empty.
    closed: bool,
    /// What jobs could not reproduce.
    skipped: SkippedList,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no thread panics holding the lock")
    }

    /// The applier sleeps until a writer finds what it waits for may have come.
    fn applier_sleep<'a>(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.applier_sleeping = true;
        let mut state = self
            .jobs_done
            .wait(state)
            .expect("no thread panics holding the lock");
        state.applier_sleeping = false;
        state
    }
}

impl Writers {
    /// Starts `threads` threads in `scope`; they end when the `Writers` is dropped.
    pub fn start<'scope>(scope: &'scope Scope<'scope, '_>, threads: usize) -> Writers {
        if threads == 0 {
            return Writers { shared: None };
        }
        let shared = Arc::new(Shared::default());
        for _ in 0..threads {
            let shared = shared.clone();
            scope.spawn(move || work(&shared));
        }
        Writers {
            shared: Some(shared),
        }
    }

    /// Hands out `job` for entry number `entry`. Fails with an earlier job's error.
    pub fn submit(&self, entry: u64, job: Job) -> Result<()> {
        let shared = self
            .shared
            .as_ref()
            .expect("files are handed out only to threads");
        let mut state = shared.lock();
        while state.queue.len() >= QUEUED && state.failure.is_none() {
            state = shared.applier_sleep(state);
        }
        if let Some(err) = state.failure.take() {
            return Err(EarlierEntry(err).into());
        }
        state.queue.push_back((entry, job));
        state.pending += 1;
        if state.sleeping_writers > 0 {
            shared.jobs_queued.notify_one();
        }
        Ok(())
    }

    /// Whether there are threads to hand files to.
    pub fn threaded(&self) -> bool {
        self.shared.is_some()
    }

    /// Waits until every job handed out is done; fails with the first one's error.
    pub fn wait(&self) -> Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let mut state = shared.lock();
        while state.pending > 0 {
            state = shared.applier_sleep(state);
        }
        match state.failure.take() {
            Some(err) => Err(EarlierEntry(err).into()),
            None => Ok(()),
        }
    }

    /// Waits for every job; returns what they could not reproduce, by entry number.
    pub fn finish(&self) -> Result<SkippedList> {
        self.wait()?;
        Ok(match &self.shared {
            Some(shared) => std::mem::take(&mut shared.lock().skipped),
            None => SkippedList::default(),
        })
    }
}

impl Drop for Writers {
    /// Jobs still queued (the applier gave up) are dropped unrun.
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            let mut state = shared.lock();
            state.closed = true;
            state.pending -= state.queue.len();
            state.queue.clear();
            shared.jobs_queued.notify_all();
        }
    }
}

fn work(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        let Some((entry, job)) = state.queue.pop_front() else {
            if state.closed {
                return;
            }
            state.sleeping_writers += 1;
            state = shared
                .jobs_queued
                .wait(state)
                .expect("no thread panics holding the lock");
            state.sleeping_writers -= 1;
            continue;
        };
        let result = match state.failure {
            None => {
                drop(state);
                let result = job();
                state = shared.lock();
                result
            }
            Some(_) => Ok(Vec::new()),
        };
        match result {
            Ok(skipped) => {
                for skip in skipped {
                    state.skipped.push(entry, skip);
                }
            }
            Err(err) => {
                state.failure.get_or_insert(err);
            }
        }
        state.pending -= 1;
        // Woken at half a queue, the applier hands out files for a while before it sleeps
        // again.
        let wanted =
            state.pending == 0 || state.queue.len() <= QUEUED / 2 || state.failure.is_some();
        if state.applier_sleeping && wanted {
            shared.jobs_done.notify_one();
        }
    }
}
