//! The worker pools that talk to the boxes: bounded queues, and a deadline for waiting in them.
//!
//! Every queued job holds a kernel request's reply, and a box that is slow but alive passes
//! every health check: so an unbounded queue behind it would let memory and Dune's waits grow
//! without limit. Each pool's queues are bounded: a job Dune waits for that finds its queue full
//! is answered at once as "waited too long" (a miss for a lookup, EIO for a read), and so is one
//! that waited in the queue longer than the pool's deadline by the time a worker takes it. Jobs
//! ahead of Dune (prefetches) wait as long as they must, in a queue of their own that workers
//! take from only when no job Dune waits for is queued; one that finds that queue full is
//! dropped (see [`remote`](super::remote)).

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Whether a job is to do its work, or only to answer that it waited too long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// Taken in time: do the work.
    InTime,
    /// Its queue was full, or it waited past the deadline: answer without doing the work.
    TooLong,
}

/// A job of a pool: called once, on a worker (or at once, if its queue was full).
pub type Job = Box<dyn FnOnce(Waited) + Send>;

struct Queued {
    job: Job,
    since: Instant,
}

/// A pool's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Worker threads.
    pub workers: usize,
    /// Jobs each queue holds at most.
    pub capacity: usize,
    /// How long a job Dune waits for may wait in its queue.
    pub deadline: Duration,
}

/// A pool of workers with a queue for jobs Dune waits for and one for jobs ahead of Dune.
pub struct Pool {
    now: Sender<Queued>,
    ahead: Sender<Queued>,
}

impl Pool {
    /// Starts the workers, named `fetch-<name>-<i>`.
    pub fn start(name: &str, limits: Limits) -> Pool {
        let (now, now_jobs) = crossbeam_channel::bounded::<Queued>(limits.capacity);
        let (ahead, ahead_jobs) = crossbeam_channel::bounded::<Queued>(limits.capacity);
        for i in 0..limits.workers.max(1) {
            let (now_jobs, ahead_jobs) = (now_jobs.clone(), ahead_jobs.clone());
            std::thread::Builder::new()
                .name(format!("fetch-{name}-{i}"))
                .spawn(move || work(&now_jobs, &ahead_jobs, limits.deadline))
                .expect("cannot start a fetch worker thread");
        }
        Pool { now, ahead }
    }

    /// Queues a job Dune waits for; if the queue is full, the job answers at once.
    pub fn now(&self, job: Job) {
        submit(&self.now, job);
    }

    /// Queues a job ahead of Dune; if the queue is full, the job answers at once.
    pub fn ahead(&self, job: Job) {
        submit(&self.ahead, job);
    }
}

fn submit(queue: &Sender<Queued>, job: Job) {
    let queued = Queued {
        job,
        since: Instant::now(),
    };
    match queue.try_send(queued) {
        Ok(()) => {}
        // The workers live as long as the process: only a full queue refuses.
        Err(TrySendError::Full(queued) | TrySendError::Disconnected(queued)) => {
            run(queued.job, Waited::TooLong)
        }
    }
}

/// A worker's loop: a job Dune waits for first, else whichever comes.
fn work(now: &Receiver<Queued>, ahead: &Receiver<Queued>, deadline: Duration) {
    loop {
        let (queued, waits) = match now.try_recv() {
            Ok(queued) => (queued, true),
            Err(_) => crossbeam_channel::select! {
                recv(now) -> queued => match queued { Ok(q) => (q, true), Err(_) => return },
                recv(ahead) -> queued => match queued { Ok(q) => (q, false), Err(_) => return },
            },
        };
        let waited = if waits && queued.since.elapsed() > deadline {
            Waited::TooLong
        } else {
            Waited::InTime
        };
        run(queued.job, waited);
    }
}

/// Runs one job. A job that panics is logged and its thread goes on: its replies, dropped as
/// it unwinds, answer EIO, and the pool keeps its size.
fn run(job: Job, waited: Waited) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(waited))).is_err() {
        log::error!("a fetch job panicked; its requests were answered EIO");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(workers: usize, capacity: usize, deadline: Duration) -> Limits {
        Limits {
            workers,
            capacity,
            deadline,
        }
    }

    #[test]
    fn a_full_queue_answers_at_once_and_a_late_job_answers_too_long() {
        let pool = Pool::start("test", limits(1, 1, Duration::from_millis(50)));
        let (results, seen) = crossbeam_channel::unbounded();
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        // The one worker is held busy...
        let started = results.clone();
        pool.now(Box::new(move |w| {
            started.send(("busy", w)).unwrap();
            gate.recv().unwrap();
        }));
        assert_eq!(seen.recv().unwrap(), ("busy", Waited::InTime));
        // ... one job fills the queue, the next finds it full and answers at once.
        let queued = results.clone();
        pool.now(Box::new(move |w| queued.send(("queued", w)).unwrap()));
        let refused = results.clone();
        pool.now(Box::new(move |w| refused.send(("refused", w)).unwrap()));
        assert_eq!(seen.recv().unwrap(), ("refused", Waited::TooLong));
        // The queued one waited past the deadline: a worker answers it as too long.
        std::thread::sleep(Duration::from_millis(100));
        release.send(()).unwrap();
        assert_eq!(seen.recv().unwrap(), ("queued", Waited::TooLong));
    }

    #[test]
    fn jobs_dune_waits_for_go_first_and_ahead_jobs_never_expire() {
        let pool = Pool::start("test", limits(1, 8, Duration::from_millis(1)));
        let (results, seen) = crossbeam_channel::unbounded();
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let started = results.clone();
        pool.now(Box::new(move |_| {
            started.send("busy").unwrap();
            gate.recv().unwrap();
        }));
        assert_eq!(seen.recv().unwrap(), "busy");
        let ahead = results.clone();
        pool.ahead(Box::new(move |w| {
            assert_eq!(w, Waited::InTime);
            ahead.send("ahead").unwrap();
        }));
        let now = results.clone();
        pool.now(Box::new(move |_| now.send("now").unwrap()));
        std::thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
        assert_eq!(seen.recv().unwrap(), "now");
        assert_eq!(seen.recv().unwrap(), "ahead");
    }

    #[test]
    fn a_pool_survives_a_panicking_job() {
        let pool = Pool::start("test", limits(1, 4, Duration::from_secs(10)));
        let (done, finished) = crossbeam_channel::bounded(1);
        pool.now(Box::new(|_| panic!("a job that panics")));
        pool.now(Box::new(move |_| done.send(()).unwrap()));
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the pool's one thread ran the next job");
    }
}
