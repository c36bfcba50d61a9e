//! A source read over HTTP: libav's own `http` protocol (credentials, TLS,
//! redirects), under a reader that rides out a store's blips instead of letting
//! a demuxer see them. It must not retry what will not change (a 4xx answer) nor
//! wait without end.
//!
//! libav on its own turns a cut connection into lost data. A seek whose range
//! request fails makes the MP4 demuxer drop the sample it was after (the one
//! keyframe of a short clip, so that nothing after it decodes); a body cut short
//! under `Connection: close` reads as the end of the file; other demuxers take a
//! read error for their end. Here a read that fails, or ends before the size the
//! store announced, is tried again from the same byte on a new connection, with
//! waits that grow, for up to [`GIVE_UP_AFTER`]. A store away for longer fails
//! the read, and the failure stays on the input ([`Reader::failure`], read
//! through `av::read_failure`), so that whatever the demuxer made of it, the
//! reader reports an internal error, which the farm retries, and not an end of
//! file or bad input.

use ff::ffi;
use ffmpeg_next as ff;
use std::ffi::CString;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a store may fail one read (or the opening connection) before the
/// read fails for good: a store restarting, a balancer moving its upstream.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// The first wait after a failure; each next one doubles, up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// The furthest a seek forward reads on through the open connection rather than
/// open another.
const READ_THROUGH: u64 = 256 * 1024;
/// How long one connection may go without a byte (libav's `rw_timeout`): the
/// farm's stall limit, handed down by the worker, or `proto::transfer`'s.
fn stall_timeout_us() -> String {
    let seconds = std::env::var(proto::HTTP_STALL_SECONDS_ENV).ok().and_then(|s| s.parse::<u64>().ok());
    let seconds = seconds.filter(|&s| s > 0).unwrap_or(proto::transfer::STALL_WITHIN.as_secs()).min(3600);
    (seconds * 1_000_000).to_string()
}

/// Why a source's reads failed for good, shared by its reader and whoever reads
/// the input (see the module's comment).
pub type Failure = Arc<OnceLock<String>>;

/// Reads one URL by byte ranges, one libav connection at a time (see the module's comment).
pub struct Reader {
    url: CString,
    /// The URL as given, for messages.
    shown: String,
    /// Options of every connection: the protocol whitelist, the stall timeout,
    /// the storage credential and user agent from the environment.
    options: Vec<(&'static str, String)>,
    /// The open connection, null after a failure or a seek until the next read.
    conn: *mut ffi::AVIOContext,
    /// Where the open connection's next byte is.
    conn_at: u64,
    /// Where the next read starts.
    pos: u64,
    /// The source's size as the store first announced it; `None` when it did not
    /// (a chunked answer), where an early end cannot be told from the real one.
    size: Option<u64>,
    /// Whether the store answers range requests: without them, nothing can resume.
    ranges: bool,
    failure: Failure,
}

// SAFETY: the connection is owned by this reader alone and used only through
// `&mut self`; libav's I/O contexts are not tied to the thread that opened them.
unsafe impl Send for Reader {}

impl Reader {
    /// Connects to `url`, waiting out a failing store as a read does. An answer
    /// that will not change (4xx, a protocol libav refuses) fails at once.
    pub fn open(url: &str) -> Result<Reader, ff::Error> {
        let url_c = CString::new(url).map_err(|_| ff::Error::InvalidData)?;
        let mut options = vec![("protocol_whitelist", "http,https,tcp,tls".to_string()), ("rw_timeout", stall_timeout_us())];
        // A worker (or the coordinator) reading from storage passes its credential here.
        if let Ok(authorization) = std::env::var(proto::HTTP_AUTHORIZATION_ENV)
            && !authorization.contains(['\r', '\n'])
        {
            options.push(("headers", format!("Authorization: {authorization}\r\n")));
        }
        if let Ok(agent) = std::env::var(proto::HTTP_USER_AGENT_ENV)
            && !agent.contains(['\r', '\n'])
        {
            options.push(("user_agent", agent));
        }
        let mut reader = Reader {
            url: url_c,
            shown: url.to_string(),
            options,
            conn: std::ptr::null_mut(),
            conn_at: 0,
            pos: 0,
            size: None,
            ranges: true,
            failure: Failure::default(),
        };
        let mut backoff = Backoff::new();
        loop {
            match reader.connect() {
                Ok(()) => break,
                Err(e) if is_final(e) => return Err(e),
                Err(e) => match backoff.next() {
                    Some(wait) => reader.wait(&e.to_string(), wait),
                    None => return Err(e),
                },
            }
        }
        // SAFETY: the connection was just opened; avio_size asks it for the size
        // its answer announced, and `seekable` is a plain field of it.
        unsafe {
            let size = ffi::avio_size(reader.conn);
            reader.size = u64::try_from(size).ok().filter(|&s| s > 0);
            reader.ranges = (*reader.conn).seekable & ffi::AVIO_SEEKABLE_NORMAL != 0;
        }
        Ok(reader)
    }

    /// The failure this reader gave up on, shared with its input (set at most once).
    pub fn failure(&self) -> Failure {
        self.failure.clone()
    }

    /// A new connection from `pos`.
    fn connect(&mut self) -> Result<(), ff::Error> {
        self.disconnect();
        let mut options = ff::Dictionary::new();
        for (k, v) in &self.options {
            options.set(k, v);
        }
        if self.pos > 0 {
            // libav's http asks for the range from here on.
            options.set("offset", &self.pos.to_string());
        }
        let mut conn = std::ptr::null_mut();
        // SAFETY: `conn` starts null and is set only on success; libav takes the
        // options it used out of `raw`, which is given back to be freed.
        let opened = unsafe {
            let mut raw = options.disown();
            let r = ffi::avio_open2(&mut conn, self.url.as_ptr(), ffi::AVIO_FLAG_READ, std::ptr::null(), &mut raw);
            ff::Dictionary::own(raw);
            r
        };
        if opened < 0 {
            return Err(ff::Error::from(opened));
        }
        (self.conn, self.conn_at) = (conn, self.pos);
        Ok(())
    }

    fn disconnect(&mut self) {
        if !self.conn.is_null() {
            // SAFETY: the connection is ours and open; avio_closep nulls the pointer.
            unsafe { ffi::avio_closep(&mut self.conn) };
        }
    }

    /// One attempt: bytes read (0 at an end, early or not), or libav's error.
    fn read_once(&mut self, buf: &mut [u8]) -> Result<usize, ff::Error> {
        // A short seek forward reads on, as libav's own http does: cheaper than
        // a new connection.
        while !self.conn.is_null() && self.conn_at < self.pos && self.pos - self.conn_at <= READ_THROUGH {
            let mut skipped = [0u8; 16 * 1024];
            let want = (self.pos - self.conn_at).min(skipped.len() as u64) as i32;
            // SAFETY: the connection is open and `skipped` has room for `want` bytes.
            match unsafe { ffi::avio_read_partial(self.conn, skipped.as_mut_ptr(), want) } {
                n if n > 0 => self.conn_at += n as u64,
                ffi::AVERROR_EOF | 0 => return Ok(0),
                n => return Err(ff::Error::from(n)),
            }
        }
        if self.conn.is_null() || self.conn_at != self.pos {
            if self.pos > 0 && !self.ranges {
                return Err(ff::Error::Other { errno: libc::ESPIPE });
            }
            self.connect()?;
        }
        let want = buf.len().min(i32::MAX as usize) as i32;
        // SAFETY: the connection is open and `buf` has room for `want` bytes.
        let n = unsafe { ffi::avio_read_partial(self.conn, buf.as_mut_ptr(), want) };
        match n {
            ffi::AVERROR_EOF | 0 => Ok(0),
            n if n < 0 => Err(ff::Error::from(n)),
            n => {
                self.conn_at += n as u64;
                self.pos += n as u64;
                Ok(n as usize)
            }
        }
    }

    /// Says why a try failed (to the task's log), then waits to try again.
    fn wait(&self, error: &str, wait: Duration) {
        eprintln!("drake: storage: reading {} at byte {}: {error}; again in {:.1} s", self.shown, self.pos, wait.as_secs_f64());
        std::thread::sleep(wait);
    }

    fn give_up(&self, error: String) -> io::Error {
        let why = self.failure.get_or_init(|| error);
        io::Error::other(why.clone())
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = self.failure.get() {
            return Err(io::Error::other(why.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let mut backoff = Backoff::new();
        loop {
            if self.size.is_some_and(|size| self.pos >= size) {
                return Ok(0);
            }
            let error = match self.read_once(buf) {
                Ok(n) if n > 0 => return Ok(n),
                Ok(_) => match self.size {
                    None => return Ok(0),
                    Some(size) => format!("the store's answer ended at byte {} of {size}", self.pos),
                },
                Err(e) if is_final(e) || (self.pos > 0 && !self.ranges) => {
                    return Err(self.give_up(format!("the store failed the read at byte {}: {e}", self.pos)));
                }
                Err(e) => e.to_string(),
            };
            self.disconnect();
            match backoff.next() {
                Some(wait) => self.wait(&error, wait),
                None => {
                    let waited = GIVE_UP_AFTER.as_secs();
                    return Err(self.give_up(format!("the store failed the read at byte {} for {waited} s: {error}", self.pos)));
                }
            }
        }
    }
}

impl Seek for Reader {
    /// Moves where the next read starts; the connection follows at that read.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::Current(by) => self.pos.checked_add_signed(by),
            SeekFrom::End(by) => match self.size {
                Some(size) => size.checked_add_signed(by),
                None => return Err(io::Error::new(io::ErrorKind::Unsupported, "the store did not say the source's size")),
            },
        };
        let target = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a seek before the start"))?;
        if target != self.pos && !self.ranges {
            // The store's (or a proxy's) configuration, not the source: retried elsewhere.
            return Err(self.give_up(format!("the store does not answer range requests, and the demuxer seeks to byte {target}")));
        }
        self.pos = target;
        Ok(target)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// Whether an error will be the same on every try: the store refused the request
/// (4xx), or libav refuses the URL.
fn is_final(e: ff::Error) -> bool {
    use ff::Error as E;
    matches!(
        e,
        E::HttpBadRequest | E::HttpUnauthorized | E::HttpForbidden | E::HttpNotFound | E::HttpOther4xx | E::ProtocolNotFound | E::Exit
    )
}

/// Waits between tries of one failing read: from [`FIRST_WAIT`], doubling up to
/// [`LONGEST_WAIT`], none once [`GIVE_UP_AFTER`] has passed since the first failure.
struct Backoff {
    since: Instant,
    wait: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { since: Instant::now(), wait: FIRST_WAIT }
    }

    /// The next wait, or `None` when it is time to give up.
    fn next(&mut self) -> Option<Duration> {
        let left = GIVE_UP_AFTER.checked_sub(self.since.elapsed()).filter(|left| !left.is_zero())?;
        let wait = self.wait.min(left);
        self.wait = (self.wait * 2).min(LONGEST_WAIT);
        Some(wait)
    }
}
