//! The proxy's access log: one line per request on stderr, written by a
//! thread of its own so that a request never waits for the terminal or a
//! full pipe.
//!
//! Requests append their line to a shared buffer (one short lock, no
//! allocation once the buffer has grown, no system call); the writer thread
//! takes the whole buffer and writes it with one `write` at most every
//! [`BATCH`], or as soon as [`WAKE_AT`] bytes wait. When the writer falls
//! behind (stderr blocked) and [`CAP`] bytes wait, further lines are dropped
//! and counted, and the count is logged with the next batch. No colour
//! codes, whatever stderr is.
//!
//! Included as a module (`#[path = "support/access_log.rs"]`).

#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the writer gathers lines before writing them.
pub const BATCH: Duration = Duration::from_millis(100);

/// Bytes waiting that make the writer write at once.
pub const WAKE_AT: usize = 64 * 1024;

/// Bytes waiting beyond which lines are dropped.
pub const CAP: usize = 4 * 1024 * 1024;

/// A handle requests log through; cheap to clone. Logging through a
/// disabled one (`--access-log off`) does nothing.
#[derive(Clone, Default)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
}

/// Owns the writer thread; [`Writer::finish`] (or dropping it) writes what
/// is pending and stops the thread.
pub struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// Lines dropped since the last batch.
    dropped: u64,
    /// The writer waits for a first line (a line wakes it).
    idle: bool,
    /// A wake for a full batch was sent.
    urgent: bool,
    stop: bool,
    /// The second [`stamp`](Self::stamp) is for, and its text.
    stamp_secs: u64,
    stamp: [u8; 20],
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn disabled() -> Self {
        Self { shared: None }
    }

    /// A log writing to stderr, and its writer thread.
    pub fn to_stderr() -> std::io::Result<(Self, Writer)> {
        Self::to_writer(std::io::stderr())
    }

    /// A log writing to `out` (one `write_all` per batch), and its writer
    /// thread.
    pub fn to_writer(out: impl std::io::Write + Send + 'static) -> std::io::Result<(Self, Writer)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_loop(&shared, out)
            })?;
        let log = Self {
            shared: Some(Arc::clone(&shared)),
        };
        Ok((
            log,
            Writer {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Appends one line: the time (UTC, to the second), then what `line`
    /// writes, then a newline. Dropped (and counted) when the writer is
    /// [`CAP`] bytes behind.
    pub fn line(&self, line: impl FnOnce(&mut Vec<u8>)) {
        let Some(shared) = &self.shared else { return };
        let mut st = lock(&shared.state);
        if st.buf.len() >= CAP {
            st.dropped += 1;
            return;
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != st.stamp_secs || st.stamp[0] == 0 {
            st.stamp_secs = secs;
            st.stamp = rfc3339(secs);
        }
        let stamp = st.stamp;
        st.buf.extend_from_slice(&stamp);
        st.buf.push(b' ');
        line(&mut st.buf);
        st.buf.push(b'\n');
        let wake = if st.idle {
            st.idle = false;
            true
        } else if st.buf.len() >= WAKE_AT && !st.urgent {
            st.urgent = true;
            true
        } else {
            false
        };
        drop(st);
        if wake {
            shared.wake.notify_one();
        }
    }
}

impl Writer {
    /// Writes what is pending and stops the writer thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        let _ = thread.join();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The writer thread: waits for a first line, gathers for up to [`BATCH`]
/// (less when [`WAKE_AT`] bytes wait or on stop), writes, again.
fn write_loop(shared: &Shared, mut to: impl std::io::Write) {
    let mut out = Vec::new();
    let mut st = lock(&shared.state);
    loop {
        while st.buf.is_empty() && st.dropped == 0 && !st.stop {
            st.idle = true;
            st = shared
                .wake
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        st.idle = false;
        let deadline = Instant::now() + BATCH;
        while !st.stop && st.buf.len() < WAKE_AT {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = shared
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        std::mem::swap(&mut out, &mut st.buf);
        let dropped = std::mem::take(&mut st.dropped);
        st.urgent = false;
        let stop = st.stop;
        drop(st);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "access log: {dropped} line(s) dropped (stderr did not keep up)"
            );
        }
        // Nothing to do about a failed write to stderr.
        let _ = to.write_all(&out);
        out.clear();
        st = lock(&shared.state);
        if stop && st.buf.is_empty() {
            return;
        }
    }
}

/// Appends `d` in milliseconds with two decimals (truncated): `0.42`.
///
/// Digits by hand: `write!` with `core::fmt` cost about 1 000
/// instructions a line, more than the rest of the line together.
pub fn push_millis(buf: &mut Vec<u8>, d: Duration) {
    let hundredths = u64::try_from(d.as_micros() / 10).unwrap_or(u64::MAX);
    push_decimal(buf, hundredths / 100);
    let frac = hundredths % 100;
    buf.extend_from_slice(&[b'.', b'0' + (frac / 10) as u8, b'0' + (frac % 10) as u8]);
}

/// Appends `n` in decimal.
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> [u8; 20] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 20];
    let text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    out.copy_from_slice(&text.as_bytes()[..20]);
    out
}

#[cfg(test)]
mod tests {
    use super::{rfc3339, AccessLog, CAP};
    use std::io::Write;
    use std::sync::{Arc, Condvar, Mutex};

    /// A writer into a shared buffer whose writes wait until the gate opens.
    #[derive(Clone)]
    struct Gated {
        out: Arc<Mutex<Vec<u8>>>,
        open: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Gated {
        fn new(open: bool) -> Self {
            Self {
                out: Arc::default(),
                open: Arc::new((Mutex::new(open), Condvar::new())),
            }
        }

        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }

        fn text(&self) -> String {
            String::from_utf8(self.out.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.open;
            let _open = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_finish() {
        let out = Gated::new(true);
        let (log, writer) = AccessLog::to_writer(out.clone()).unwrap();
        for i in 0..1000 {
            log.line(|buf| write!(buf, "line {i}").unwrap());
        }
        writer.finish();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000, "{text}");
        for (i, line) in lines.iter().enumerate() {
            let (stamp, rest) = line.split_once(' ').unwrap();
            assert_eq!(stamp.len(), 20, "{line}");
            assert!(stamp.starts_with("20") && stamp.ends_with('Z'), "{line}");
            assert_eq!(rest, format!("line {i}"));
        }
    }

    #[test]
    fn a_blocked_writer_drops_and_counts_lines_and_never_blocks_the_logger() {
        let out = Gated::new(false);
        let (log, writer) = AccessLog::to_writer(out.clone()).unwrap();
        // 10 MB of lines: more than the first batch plus CAP while the
        // writer is stuck in its first write.
        let line = "x".repeat(100);
        let n = 10 * 1024 * 1024 / 121;
        assert!(n * 121 > 2 * CAP + 1000);
        for _ in 0..n {
            log.line(|buf| buf.extend_from_slice(line.as_bytes()));
        }
        out.open();
        writer.finish();
        let text = out.text();
        let written = text.lines().filter(|l| l.ends_with(&line)).count();
        let dropped: Vec<usize> = text
            .lines()
            .filter_map(|l| l.strip_prefix("access log: "))
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(!dropped.is_empty(), "no line dropped");
        assert_eq!(written + dropped.iter().sum::<usize>(), n);
    }

    #[test]
    fn millis() {
        let mut buf = Vec::new();
        for (micros, text) in [
            (0, "0.00"),
            (9, "0.00"),
            (10, "0.01"),
            (1_234, "1.23"),
            (120_000, "120.00"),
            (1_000_000, "1000.00"),
            (98_765_432_109, "98765432.10"),
            (u64::MAX, "18446744073709551.61"),
        ] {
            buf.clear();
            super::push_millis(&mut buf, std::time::Duration::from_micros(micros));
            assert_eq!(String::from_utf8_lossy(&buf), text);
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(&rfc3339(0), b"1970-01-01T00:00:00Z");
        assert_eq!(&rfc3339(951_782_400), b"2000-02-29T00:00:00Z");
        assert_eq!(&rfc3339(1_796_647_892), b"2026-12-07T12:51:32Z");
    }
}
