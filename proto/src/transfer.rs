//! Telling a transfer that has stopped from one that is only slow. A store can take
//! a connection and then send or take nothing: a hung disk or network mount behind
//! nginx, a half-open connection after a network partition, a proxy that lost its
//! upstream. Its transfers would then hold their task until the whole-transfer
//! limit (an hour, for a source of several GB), with the task's heartbeats going
//! on all the while. Instead a transfer fails once no byte has moved for
//! [`STALL_WITHIN`], and is retried like any dropped connection; however slow, a
//! transfer that moves keeps going.

use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How long a transfer may go without moving a byte, its answer's wait included.
/// A store writing a large upload to a slow disk still answers well within it.
pub const STALL_WITHIN: Duration = Duration::from_secs(60);

/// How long a MOVE may take to be answered, since no byte of it moves on the
/// connection: a store without renames (an object store behind WebDAV) copies.
pub const MOVE_WITHIN: Duration = Duration::from_secs(900);

/// No byte moved for the given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stalled: no byte moved for {0:?}")]
pub struct Stalled(pub Duration);

impl From<Stalled> for std::io::Error {
    fn from(s: Stalled) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, s)
    }
}

/// When a transfer last moved, shared between what moves it (a request body's
/// stream, pulled as its bytes are sent) and what watches it.
#[derive(Clone, Debug)]
pub struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last move.
    last_ms: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    /// A transfer starting now.
    pub fn new() -> Progress {
        Progress { start: Instant::now(), last_ms: Arc::default() }
    }

    /// Records that the transfer moved now.
    pub fn moved(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once the transfer has not moved for `within`.
    async fn stalled(&self, within: Duration) {
        loop {
            let due = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + within;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }

    /// `stream`, recording a move each time it yields: a request body's bytes
    /// are pulled as fast as the store takes them.
    pub fn counting<S: Stream>(&self, stream: S) -> impl Stream<Item = S::Item> + use<S> {
        use futures_util::StreamExt;
        let progress = self.clone();
        stream.inspect(move |_| progress.moved())
    }
}

/// Runs `work` (a transfer that records its moves in `progress`), failing it once
/// it has gone `within` without moving.
pub async fn unless_stalled<F: Future>(progress: &Progress, within: Duration, work: F) -> Result<F::Output, Stalled> {
    tokio::select! {
        biased;
        out = work => Ok(out),
        () = progress.stalled(within) => Err(Stalled(within)),
    }
}

/// A stream that yields [`Stalled`] (and then ends) once its source has kept it
/// waiting for `within`. Only time spent waiting on the source counts, so a slow
/// reader of the stream is never taken for a stalled source.
pub fn watched<S, T, E>(stream: S, within: Duration) -> Watched<S>
where
    S: Stream<Item = Result<T, E>>,
    E: From<Stalled>,
{
    Watched { inner: Box::pin(stream), within, waiting: None, done: false }
}

/// See [`watched`].
pub struct Watched<S> {
    inner: Pin<Box<S>>,
    within: Duration,
    /// Set while the source keeps the reader waiting: when that turns into a stall.
    waiting: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl<S, T, E> Stream for Watched<S>
where
    S: Stream<Item = Result<T, E>>,
    E: From<Stalled>,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = self.inner.as_mut().poll_next(cx) {
            self.waiting = None;
            self.done = item.is_none();
            return Poll::Ready(item);
        }
        let within = self.within;
        let waiting = self.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(within)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.done = true;
                Poll::Ready(Some(Err(Stalled(within).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    // Several times the gaps below, so a busy machine's late timers are not stalls.
    const WITHIN: Duration = Duration::from_millis(600);

    /// A source that yields `n` items `gap` apart, then waits for good.
    fn source(n: usize, gap: Duration) -> impl Stream<Item = Result<usize, std::io::Error>> {
        futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(gap).await;
            Some((Ok(i), i + 1))
        })
    }

    #[tokio::test]
    async fn a_stream_that_stops_yielding_stalls_and_one_that_is_slow_does_not() {
        // Twelve items 100 ms apart (1.2 s in all, twice the limit), then nothing.
        let started = Instant::now();
        let items: Vec<Result<usize, std::io::Error>> = watched(source(12, Duration::from_millis(100)), WITHIN).collect().await;
        let (last, got) = items.split_last().expect("items");
        assert_eq!(got.iter().map(|r| *r.as_ref().unwrap()).collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
        let err = last.as_ref().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("stalled"), "{err}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1800) && took < Duration::from_millis(6000), "took {took:?}");
    }

    #[tokio::test]
    async fn a_slow_reader_is_not_a_stalled_source() {
        let mut s = watched(source(3, Duration::ZERO), WITHIN);
        for i in 0..3 {
            tokio::time::sleep(WITHIN * 2).await;
            assert_eq!(s.next().await.unwrap().unwrap(), i);
        }
    }

    #[tokio::test]
    async fn work_that_keeps_moving_finishes_and_work_that_stops_is_cut() {
        let progress = Progress::new();
        let moving = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                progress.moved();
            }
            "done"
        };
        assert_eq!(unless_stalled(&progress, WITHIN, moving).await, Ok("done"));

        let progress = Progress::new();
        let started = Instant::now();
        let stops = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            progress.moved();
            std::future::pending::<()>().await;
        };
        assert_eq!(unless_stalled(&progress, WITHIN, stops).await, Err(Stalled(WITHIN)));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800) && took < Duration::from_millis(4000), "took {took:?}");
    }
}
