//! MD5 for many entries at once: the streams of every thread feed one set of vector lanes.
//!
//! MD5-era keys are verified at about 630 MB/s a core, about a fifth of a cold mount's CPU in a
//! Dune 2.9 build: one MD5 stream is a chain of dependent steps that no wider register speeds up.
//! Several streams side by side in AVX-512 lanes go 1.5 (two) to 7 (sixteen) times as fast in all
//! ([`md5_lanes`]), and a mount fetching a build's entries ahead of it has dozens in flight, each
//! on its own thread. This module brings them together without a thread of its own:
//!
//! - A stream queues its bytes with the process's one stage, a few KiB of whole blocks at a time,
//!   as they arrive. Nothing is hashed yet.
//! - Whoever needs a digest ([`Md5Stream::finish`]) waits a moment (2 ms at most) until half the
//!   lanes' worth of streams have bytes queued (or every open stream has), then becomes the
//!   stage's one *combiner*: it hashes its own bytes with up to fifteen other streams' in the
//!   lanes beside them, so their hashing costs next to nothing. It does not wait for company once
//!   someone waits for its entry ([`Awaited`]). A thread needing a digest while another combines
//!   waits for it, and is woken alone when its stream is hashed or the combiner stops.
//! - A stage holding more than 8 MiB makes the next thread that queues drain it, so memory stays
//!   bounded whatever the senders do.
//!
//! Only entries nobody waits for yet (fetched ahead of their reader) are hashed here, and only on
//! a processor with the lanes ([`ContentHasher::shared`](super::key::ContentHasher::shared)): a
//! reader waiting for one entry rarely meets another at the stage, and gets it sooner from
//! one-stream MD5 on its own thread, without the copy and the wait. The digests are MD5's in
//! every case: the tests hold them to the `md-5` crate's over threads, piece sizes and streams
//! dropped half-way.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::key::Awaited;

/// The bytes a stream gathers before queueing them: enough that a queued piece is worth the
/// lock, few enough that a stream's bytes are queued early for others to hash alongside.
const PIECE: usize = 4 * 1024;

/// Bytes queued with a stage past which the thread queueing more drains it first.
const QUEUED_LIMIT: usize = 8 << 20;

/// The process's stage: every [`Md5Stream::new`] joins it.
static STAGE: Stage = Stage::new();

/// One message's MD5, computed on the shared stage. Feed it with [`Md5Stream::update`], then
/// take the digest with [`Md5Stream::finish`]; dropped unfinished, its queued bytes are let go.
pub struct Md5Stream {
    stage: &'static Stage,
    id: usize,
    /// Set once someone waits for this entry: its digest then waits for no company.
    awaited: Awaited,
    /// Bytes not yet queued: less than a [`PIECE`], and after `finish`'s queueing less than a
    /// block (the tail that padding completes).
    gathered: Vec<u8>,
    /// Every byte fed so far (MD5 ends with the message's length).
    len: u64,
}

impl Md5Stream {
    /// A new stream on the process's stage.
    pub fn new(awaited: Awaited) -> Md5Stream {
        Md5Stream::on(&STAGE, awaited)
    }

    fn on(stage: &'static Stage, awaited: Awaited) -> Md5Stream {
        Md5Stream {
            stage,
            id: stage.open(),
            awaited,
            gathered: Vec::new(),
            len: 0,
        }
    }

    /// Feeds the message's next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.gathered.extend_from_slice(bytes);
        if self.gathered.len() >= PIECE {
            self.queue_whole_blocks();
        }
    }

    /// Queues the gathered whole blocks, keeping the partial block that ends them.
    fn queue_whole_blocks(&mut self) {
        let whole = self.gathered.len() / 64 * 64;
        if whole == 0 {
            return;
        }
        let tail = self.gathered[whole..].to_vec();
        let mut piece = std::mem::replace(&mut self.gathered, tail);
        piece.truncate(whole);
        self.stage.queue(self.id, piece);
    }

    /// The message's MD5 digest. Unless enough streams are ready to fill half the lanes (or
    /// every other open stream is), or someone waits for this one, this waits up to 2 ms for
    /// them; and for the thread hashing, if one is.
    pub fn finish(mut self) -> [u8; 16] {
        self.queue_whole_blocks();
        let state = self.stage.state_when_hashed(self.id, &self.awaited);
        md5_lanes::digest(state, &self.gathered, self.len)
    }
}

impl Drop for Md5Stream {
    fn drop(&mut self) {
        self.stage.close(self.id);
    }
}

/// The longest a digest waits for company.
const PATIENCE: Duration = Duration::from_millis(2);

/// How many streams ready to hash a digest waits for: half the lanes.
const COMPANY: usize = md5_lanes::LANES / 2;

/// Where streams queue their pieces and one thread at a time hashes them, many in lanes at once.
struct Stage {
    books: Mutex<Books>,
    /// Signalled when a combiner stops or hashes queued bytes while threads wait for room in the
    /// queue. (A thread waiting for a digest is woken alone: see [`StreamBooks::waiter`].)
    room: Condvar,
}

/// The stage's state, all under its one lock (held only to take and return work, never while
/// hashing).
struct Books {
    /// Streams by id; `None` marks a free id.
    streams: Vec<Option<StreamBooks>>,
    free: Vec<usize>,
    /// Streams opened and not yet dropped: no more can be ready than these.
    open: usize,
    /// Streams with queued pieces and no lane, in the order they queued: each at most once.
    ready: VecDeque<usize>,
    /// Bytes of every queued piece not yet hashed.
    queued: usize,
    /// Whether some thread is combining: the others queue, and wait if they need a result.
    combining: bool,
    /// Threads waiting for company before they hash.
    for_company: usize,
    /// Threads waiting for the queue to shrink below [`QUEUED_LIMIT`].
    waiting_for_room: usize,
    /// What has been hashed so far.
    hashed: Hashed,
}

/// The bytes a stage has hashed, by whether other streams ran beside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hashed {
    /// In rounds of one stream (one-stream speed).
    pub alone: u64,
    /// In rounds of several streams, each in its own lane.
    pub beside_others: u64,
}

/// What the process's stage has hashed since it started: how much of the MD5 of entries fetched
/// ahead was shared out (for the mount's status and metrics).
pub fn hashed() -> Hashed {
    STAGE.books().hashed
}

struct StreamBooks {
    /// MD5's state after the blocks hashed so far.
    state: [u32; 4],
    pieces: VecDeque<Piece>,
    /// Whether the combiner holds this stream's next piece in a lane right now.
    in_lane: bool,
    /// Dropped while in a lane: the combiner frees it when it hands the lane back.
    dropped: bool,
    /// The thread waiting for this stream's digest, woken alone when it is ready, or when the
    /// combiner stops and someone must take over.
    waiter: Option<Waiter>,
}

struct Waiter {
    thread: Thread,
    /// Waiting for company, not for another combiner.
    for_company: bool,
}

/// Queued whole blocks, and how many of their bytes are hashed.
struct Piece {
    bytes: Vec<u8>,
    hashed: usize,
}

impl Piece {
    fn rest(&self) -> &[u8] {
        &self.bytes[self.hashed..]
    }
}

/// A stream's piece in a lane: what the combiner hashes between two looks at the books.
struct Lane {
    id: usize,
    state: [u32; 4],
    piece: Piece,
}

/// What a combiner works toward before it stops.
#[derive(Clone, Copy)]
enum Until {
    /// This stream has nothing left queued.
    Hashed(usize),
    /// The stage holds at most this many queued bytes.
    QueuedAtMost(usize),
}

impl Stage {
    const fn new() -> Stage {
        Stage {
            books: Mutex::new(Books {
                streams: Vec::new(),
                free: Vec::new(),
                open: 0,
                ready: VecDeque::new(),
                queued: 0,
                combining: false,
                for_company: 0,
                waiting_for_room: 0,
                hashed: Hashed {
                    alone: 0,
                    beside_others: 0,
                },
            }),
            room: Condvar::new(),
        }
    }

    /// The books, even if a thread panicked holding them: every change to them is made whole
    /// under the lock, so they are consistent whenever it is free.
    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_for_room<'a>(&self, mut books: MutexGuard<'a, Books>) -> MutexGuard<'a, Books> {
        books.waiting_for_room += 1;
        let mut books = self
            .room
            .wait(books)
            .unwrap_or_else(PoisonError::into_inner);
        books.waiting_for_room -= 1;
        books
    }

    fn open(&self) -> usize {
        let mut books = self.books();
        books.open += 1;
        let stream = StreamBooks {
            state: md5_lanes::INITIAL_STATE,
            pieces: VecDeque::new(),
            in_lane: false,
            dropped: false,
            waiter: None,
        };
        match books.free.pop() {
            Some(id) => {
                books.streams[id] = Some(stream);
                id
            }
            None => {
                books.streams.push(Some(stream));
                books.streams.len() - 1
            }
        }
    }

    fn close(&self, id: usize) {
        let mut books = self.books();
        let books = &mut *books;
        books.open -= 1;
        let Some(stream) = books.streams[id].as_mut() else {
            return;
        };
        books.queued -= stream.pieces.iter().map(|p| p.rest().len()).sum::<usize>();
        stream.pieces.clear();
        books.ready.retain(|&ready| ready != id);
        if stream.in_lane {
            stream.dropped = true;
        } else {
            books.streams[id] = None;
            books.free.push(id);
        }
        // One stream fewer to wait for.
        books.wake_for_company();
    }

    /// Queues a piece of `id`'s whole blocks; drains the stage first if it holds too much.
    fn queue(&self, id: usize, bytes: Vec<u8>) {
        let mut books = self.books();
        while books.queued > QUEUED_LIMIT {
            if !books.combining {
                books = self.combine(books, Until::QueuedAtMost(QUEUED_LIMIT / 2));
            } else {
                books = self.wait_for_room(books);
            }
        }
        books.queued += bytes.len();
        let stream = books.stream(id);
        stream.pieces.push_back(Piece { bytes, hashed: 0 });
        if stream.pieces.len() == 1 && !stream.in_lane {
            books.ready.push_back(id);
            books.wake_for_company();
        }
    }

    /// `id`'s state once every piece it queued is hashed, hashing them (and others beside them)
    /// unless another thread is.
    fn state_when_hashed(&self, id: usize, awaited: &Awaited) -> [u32; 4] {
        let deadline = Instant::now() + PATIENCE;
        let mut books = self.books();
        loop {
            let stream = books.stream(id);
            if stream.pieces.is_empty() && !stream.in_lane {
                return stream.state;
            }
            let now = Instant::now();
            let for_company =
                !books.combining && !books.enough_company() && !awaited.get() && now < deadline;
            if !books.combining && !for_company {
                books = self.combine(books, Until::Hashed(id));
                continue;
            }
            books.stream(id).waiter = Some(Waiter {
                thread: thread::current(),
                for_company,
            });
            books.for_company += usize::from(for_company);
            drop(books);
            match for_company {
                true => thread::park_timeout(deadline - now),
                // The combiner wakes this thread when the stream is hashed, or when it stops.
                false => thread::park(),
            }
            books = self.books();
            books.for_company -= usize::from(for_company);
            books.stream(id).waiter = None;
        }
    }

    /// Hashes queued pieces, as many streams at once as lanes allow, until `until` holds or
    /// nothing is left; `id`'s pieces (if `until` names one) go first. Takes the books unlocked
    /// only while hashing, and returns them locked with the combiner's role given up.
    fn combine<'a>(
        &'a self,
        mut books: MutexGuard<'a, Books>,
        until: Until,
    ) -> MutexGuard<'a, Books> {
        books.combining = true;
        let mut lanes: Vec<Lane> = Vec::with_capacity(md5_lanes::LANES);
        loop {
            if let Until::Hashed(id) = until {
                if let Some(at) = books.ready.iter().position(|&ready| ready == id) {
                    books.ready.remove(at);
                    lanes.push(books.take_lane(id));
                }
            }
            if books.reached(until, &lanes) {
                break;
            }
            while lanes.len() < md5_lanes::LANES {
                let Some(id) = books.ready.pop_front() else {
                    break;
                };
                lanes.push(books.take_lane(id));
            }
            if lanes.is_empty() {
                break;
            }
            drop(books);
            let hashed = panic::catch_unwind(AssertUnwindSafe(|| hash_some(&mut lanes)));
            books = self.books();
            let hashed = match hashed {
                Ok(hashed) => hashed,
                Err(panicked) => {
                    // The lanes are as taken (the states change only after the hashing): hand
                    // them back and give up the role, so that no one waits on it forever.
                    self.stop_combining(&mut books, &mut lanes);
                    drop(books);
                    panic::resume_unwind(panicked);
                }
            };
            books.queued -= hashed;
            match lanes.len() {
                1 => books.hashed.alone += hashed as u64,
                _ => books.hashed.beside_others += hashed as u64,
            }
            books.settle(&mut lanes);
            if books.waiting_for_room > 0 {
                self.room.notify_all();
            }
        }
        self.stop_combining(&mut books, &mut lanes);
        books
    }

    /// Hands back the combiner's lanes and its role, and wakes whoever must take over.
    fn stop_combining(&self, books: &mut Books, lanes: &mut Vec<Lane>) {
        for lane in lanes.drain(..) {
            books.give_back(lane);
        }
        books.combining = false;
        // Someone still waiting on this combiner's work takes over, one thread at a time.
        if !books.wake_one(|waiter| !waiter.for_company) {
            books.wake_one(|_| true);
        }
        if books.waiting_for_room > 0 {
            self.room.notify_all();
        }
    }
}

impl Books {
    fn stream(&mut self, id: usize) -> &mut StreamBooks {
        self.streams[id]
            .as_mut()
            .expect("a stream's id stays valid until it is dropped")
    }

    /// Takes `id`'s next piece into a lane (the caller took `id` out of `ready`).
    fn take_lane(&mut self, id: usize) -> Lane {
        let stream = self.stream(id);
        stream.in_lane = true;
        let piece = stream
            .pieces
            .pop_front()
            .expect("a ready stream has a queued piece");
        Lane {
            id,
            state: stream.state,
            piece,
        }
    }

    /// Whether the combiner may stop, given the lanes it holds.
    fn reached(&self, until: Until, lanes: &[Lane]) -> bool {
        match until {
            Until::Hashed(id) => !lanes.iter().any(|lane| lane.id == id),
            Until::QueuedAtMost(bytes) => self.queued <= bytes,
        }
    }

    /// Whether enough streams are ready for a digest not to wait for more: half the lanes, or
    /// every stream open.
    fn enough_company(&self) -> bool {
        self.ready.len() >= COMPANY.min(self.open)
    }

    /// Wakes a thread waiting for company if it has come (and no combiner is at work).
    fn wake_for_company(&self) {
        if self.for_company > 0 && !self.combining && self.enough_company() {
            self.wake_one(|waiter| waiter.for_company);
        }
    }

    /// Wakes one thread waiting for a digest not yet hashed, among those `which` picks; whether
    /// there was one.
    fn wake_one(&self, which: impl Fn(&Waiter) -> bool) -> bool {
        let waiting = self.streams.iter().flatten().find_map(|stream| {
            let pending = !stream.pieces.is_empty() && !stream.in_lane;
            stream
                .waiter
                .as_ref()
                .filter(|waiter| pending && which(waiter))
        });
        if let Some(waiter) = waiting {
            waiter.thread.unpark();
        }
        waiting.is_some()
    }

    /// After a round of hashing: frees the lanes whose piece is done (the stream's next piece,
    /// if it has one, goes back to `ready`).
    fn settle(&mut self, lanes: &mut Vec<Lane>) {
        let mut at = 0;
        while at < lanes.len() {
            if lanes[at].piece.rest().is_empty() {
                let lane = lanes.swap_remove(at);
                self.give_back(lane);
            } else {
                at += 1;
            }
        }
    }

    /// Returns a lane's stream to the books: its state, and the rest of its piece if any.
    fn give_back(&mut self, lane: Lane) {
        let rest = lane.piece.rest().len();
        let stream = self.streams[lane.id]
            .as_mut()
            .expect("a stream in a lane is freed only by its combiner");
        if stream.dropped {
            self.queued -= rest;
            self.streams[lane.id] = None;
            self.free.push(lane.id);
            return;
        }
        stream.state = lane.state;
        stream.in_lane = false;
        if rest > 0 {
            stream.pieces.push_front(lane.piece);
        }
        if !stream.pieces.is_empty() {
            self.ready.push_front(lane.id);
        } else if let Some(waiter) = &stream.waiter {
            waiter.thread.unpark();
        }
    }
}

/// Most bytes of one lane hashed between two looks at the books, so that streams queued
/// meanwhile get a lane soon.
const ROUND: usize = 64 * 1024;

/// One round: the same number of blocks from every lane (as many as the shortest piece has, at
/// most a [`ROUND`]), all at once; a lone lane alone. Returns the bytes hashed.
fn hash_some(lanes: &mut [Lane]) -> usize {
    let len = lanes
        .iter()
        .map(|lane| lane.piece.rest().len())
        .min()
        .unwrap_or(0)
        .min(ROUND);
    let count = lanes.len();
    let mut states = [[0u32; 4]; md5_lanes::LANES];
    let mut blocks: [&[u8]; md5_lanes::LANES] = [&[]; md5_lanes::LANES];
    for (at, lane) in lanes.iter().enumerate() {
        states[at] = lane.state;
        blocks[at] = &lane.piece.rest()[..len];
    }
    md5_lanes::compress(&mut states[..count], &blocks[..count]);
    for (lane, state) in lanes.iter_mut().zip(states) {
        lane.state = state;
        lane.piece.hashed += len;
    }
    len * lanes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest as _;
    use std::sync::Arc;

    fn stage() -> &'static Stage {
        Box::leak(Box::new(Stage::new()))
    }

    /// Bytes that differ by seed and position.
    fn message(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7 ^ seed.wrapping_mul(131)) as u8)
            .collect()
    }

    /// Hashes `bytes` on `stage`, fed in pieces of the given sizes (cycled).
    fn md5_in_pieces(stage: &'static Stage, bytes: &[u8], pieces: &[usize]) -> [u8; 16] {
        let mut stream = Md5Stream::on(stage, Awaited::default());
        let mut at = 0;
        for &size in pieces.iter().cycle() {
            if at == bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            stream.update(&bytes[at..end]);
            at = end;
        }
        stream.finish()
    }

    fn reference(bytes: &[u8]) -> [u8; 16] {
        md5::Md5::digest(bytes).into()
    }

    fn idle(stage: &Stage) {
        let books = stage.books();
        assert_eq!(books.queued, 0, "nothing stays queued");
        assert!(books.ready.is_empty() && !books.combining);
        assert!(
            books.streams.iter().all(Option::is_none),
            "every stream is freed"
        );
    }

    #[test]
    fn one_stream_is_md5_whatever_the_pieces() {
        let stage = stage();
        for len in [
            0,
            1,
            55,
            56,
            63,
            64,
            65,
            4095,
            PIECE - 1,
            PIECE,
            PIECE + 70,
            3 * PIECE + 5,
        ] {
            let bytes = message(len, len);
            for pieces in [
                &[1][..],
                &[7, 64, 1000],
                &[PIECE],
                &[PIECE * 2 + 3],
                &[usize::MAX],
            ] {
                let pieces = if len > 10_000 && pieces == [1] {
                    &[977][..]
                } else {
                    pieces
                };
                assert_eq!(
                    md5_in_pieces(stage, &bytes, pieces),
                    reference(&bytes),
                    "{len} bytes in pieces of {pieces:?}"
                );
            }
        }
        idle(stage);
    }

    #[test]
    fn a_digest_hashes_other_streams_queued_pieces_beside_its_own() {
        let stage = stage();
        let messages: Vec<Vec<u8>> = (0..4).map(|seed| message(seed, 2 * PIECE)).collect();
        let mut streams: Vec<Md5Stream> = (0..4)
            .map(|_| Md5Stream::on(stage, Awaited::default()))
            .collect();
        for (stream, bytes) in streams.iter_mut().zip(&messages) {
            stream.update(bytes);
        }
        assert_eq!(
            stage.books().queued,
            4 * 2 * PIECE,
            "all four queued, none hashed"
        );
        let first = streams.remove(0);
        assert_eq!(first.finish(), reference(&messages[0]));
        assert_eq!(stage.books().hashed.alone, 0, "no round had one stream");
        // The first's digest took the others' pieces through the lanes beside its own: at least
        // as many of their bytes were hashed as of its own.
        assert!(
            stage.books().queued <= 3 * PIECE,
            "the others' queued bytes are at least half hashed: {} left",
            stage.books().queued
        );
        for (stream, bytes) in streams.into_iter().zip(&messages[1..]) {
            assert_eq!(stream.finish(), reference(bytes));
        }
        idle(stage);
    }

    #[test]
    fn many_threads_at_once_each_get_their_own_md5() {
        let stage = stage();
        let threads: Vec<_> = (0..24)
            .map(|thread| {
                std::thread::spawn(move || {
                    for round in 0..12 {
                        let seed = thread * 100 + round;
                        let len = [0, 100, 5000, PIECE + 1, 3 * PIECE + 77, 200_000][seed % 6];
                        let bytes = message(seed, len);
                        let pieces = [[4096][..].to_vec(), vec![PIECE / 3, 17], vec![len.max(1)]];
                        let digest = md5_in_pieces(stage, &bytes, &pieces[round % 3]);
                        assert_eq!(digest, reference(&bytes), "thread {thread}, round {round}");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a hashing thread panicked");
        }
        idle(stage);
    }

    #[test]
    fn streams_dropped_unfinished_leave_nothing_and_harm_no_other() {
        let stage = stage();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..12)
            .map(|thread| {
                let done = done.clone();
                std::thread::spawn(move || {
                    for round in 0..10 {
                        let bytes = message(thread + round, 4 * PIECE + 9);
                        let mut stream = Md5Stream::on(stage, Awaited::default());
                        stream.update(&bytes[..3 * PIECE]);
                        if (thread + round) % 2 == 0 {
                            drop(stream);
                            continue;
                        }
                        stream.update(&bytes[3 * PIECE..]);
                        assert_eq!(stream.finish(), reference(&bytes));
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a hashing thread panicked");
        }
        assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 60);
        idle(stage);
    }

    #[test]
    fn queued_bytes_stay_bounded_when_no_digest_is_asked() {
        let stage = stage();
        let bytes = message(1, 5 * QUEUED_LIMIT);
        let mut streams: Vec<Md5Stream> = (0..3)
            .map(|_| Md5Stream::on(stage, Awaited::default()))
            .collect();
        for chunk in bytes.chunks(PIECE) {
            for stream in &mut streams {
                stream.update(chunk);
                assert!(stage.books().queued <= QUEUED_LIMIT + PIECE);
            }
        }
        for stream in streams {
            assert_eq!(stream.finish(), reference(&bytes));
        }
        idle(stage);
    }
}
