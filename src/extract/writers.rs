//! Threads that create a layer's small files. On a layer of many small files the kernel's work
//! of creating them is what takes time, and one thread spends most of it waiting on the
//! kernel: handing the files out lets that work spread over the cores.
//!
//! The applier only hands out files that nothing else in the layer can be waiting for (new
//! names in directories the layer made), and waits for every handed-out file ([`Writers::wait`])
//! before anything that could touch one: removals, links, whiteouts, the end of the layer.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Scope;

use anyhow::{Result, anyhow};

use crate::protocol::Skipped;

/// Files at most this large are handed out; their contents travel with them.
pub const SMALL_FILE: u64 = 128 * 1024;
/// Files handed out but not yet taken, at most: with [`SMALL_FILE`], memory stays bounded.
const QUEUED: usize = 32;

/// Creates one file; returns what of it could not be reproduced. Its error names its entry.
pub type Job = Box<dyn FnOnce() -> Result<Vec<Skipped>> + Send>;

/// A handed-out file failed: the error surfaces while a later entry is applied, but is about
/// its own entry, which it names.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EarlierEntry(anyhow::Error);

pub struct Writers {
    /// `None` without threads: the applier then writes every file itself.
    jobs: Option<SyncSender<(u64, Job)>>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Handed out and not finished.
    pending: usize,
    /// The first job's error; later jobs are dropped unrun.
    failure: Option<anyhow::Error>,
    /// The applier gave up: queued jobs are dropped unrun.
    abandoned: bool,
    /// What jobs could not reproduce, by entry number.
    skipped: Vec<(u64, Skipped)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no thread panics holding the lock")
    }
}

impl Writers {
    /// Starts `threads` threads in `scope`; they end when the `Writers` is dropped.
    pub fn start<'scope>(scope: &'scope Scope<'scope, '_>, threads: usize) -> Writers {
        let shared = Arc::new(Shared::default());
        if threads == 0 {
            return Writers { jobs: None, shared };
        }
        let (jobs, queue) = sync_channel(QUEUED);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads {
            let (queue, shared) = (queue.clone(), shared.clone());
            scope.spawn(move || work(&queue, &shared));
        }
        Writers {
            jobs: Some(jobs),
            shared,
        }
    }

    /// Hands out `job` for entry number `entry`. Fails with an earlier job's error.
    pub fn submit(&self, entry: u64, job: Job) -> Result<()> {
        {
            let mut state = self.shared.lock();
            if let Some(err) = state.failure.take() {
                return Err(EarlierEntry(err).into());
            }
            state.pending += 1;
        }
        self.jobs
            .as_ref()
            .expect("files are handed out only to threads")
            .send((entry, job))
            .map_err(|_| anyhow!("the file-writing threads are gone"))
    }

    /// Whether there are threads to hand files to.
    pub fn threaded(&self) -> bool {
        self.jobs.is_some()
    }

    /// Waits until every job handed out is done; fails with the first one's error.
    pub fn wait(&self) -> Result<()> {
        let mut state = self.shared.lock();
        while state.pending > 0 {
            state = self
                .shared
                .changed
                .wait(state)
                .expect("no thread panics holding the lock");
        }
        match state.failure.take() {
            Some(err) => Err(EarlierEntry(err).into()),
            None => Ok(()),
        }
    }

    /// Waits for every job; returns what they could not reproduce, by entry number.
    pub fn finish(&self) -> Result<Vec<(u64, Skipped)>> {
        self.wait()?;
        Ok(std::mem::take(&mut self.shared.lock().skipped))
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.shared.lock().abandoned = true;
    }
}

fn work(queue: &Mutex<Receiver<(u64, Job)>>, shared: &Shared) {
    loop {
        let next = queue
            .lock()
            .expect("no thread panics holding the lock")
            .recv();
        let Ok((entry, job)) = next else {
            return;
        };
        let run = {
            let state = shared.lock();
            state.failure.is_none() && !state.abandoned
        };
        let result = if run { job() } else { Ok(Vec::new()) };
        let mut state = shared.lock();
        match result {
            Ok(skipped) => state
                .skipped
                .extend(skipped.into_iter().map(|skip| (entry, skip))),
            Err(err) => {
                state.failure.get_or_insert(err);
            }
        }
        state.pending -= 1;
        shared.changed.notify_all();
    }
}
