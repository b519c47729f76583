//! Prometheus metrics: the text exposition format (version 0.0.4) that boxes answer on
//! `GET /metrics` and a mount on its `--metrics` listener, the latency histogram both keep, and
//! that listener.
//!
//! Written by hand rather than with a client crate: the format is a few lines of text per
//! metric, the counters already live where the code counts them (the box's and the mount's
//! stats), and a registry would be a second home for each. What Prometheus asks of names is
//! followed here: a `dune_cachefs_` prefix, base units in the name (`_seconds`, `_bytes`),
//! `_total` on counters, and a `HELP` and `TYPE` line for every family (`promtool check
//! metrics` checks both outputs in the tests).

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family of samples is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the process restarts); its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into buckets.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The upper bounds, in seconds, of the latency buckets: from a request the page cache answers
/// on loopback (well under a millisecond) to a large transfer over a slow link.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// A latency histogram over [`LATENCY_BUCKETS`]: lock-free, one atomic add per bucket hit.
#[derive(Default, Debug)]
pub struct Histogram {
    /// Observations per bucket, not cumulative (the last one: above every bound).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// A metrics page being written: families in order, each `HELP` and `TYPE` line once.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its `HELP` and `TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    /// One sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of one histogram of the family `name` just started: cumulative buckets,
    /// `+Inf`, sum (in seconds) and count.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let mut cumulative = 0;
        let bounds = LATENCY_BUCKETS.iter().map(|b| b.to_string());
        for (bound, bucket) in bounds
            .chain(std::iter::once("+Inf".to_string()))
            .zip(&histogram.buckets)
        {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = write!(self.text, "{name}_bucket");
            write_labels(&mut self.text, labels, Some(&bound));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = write!(self.text, "{name}_sum");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {sum}");
        let _ = write!(self.text, "{name}_count");
        write_labels(&mut self.text, labels, None);
        // The count the buckets add up to, so a scrape never sees them disagree.
        let _ = writeln!(self.text, " {cumulative}");
    }

    /// The page.
    pub fn finish(self) -> String {
        self.text
    }
}

/// `{a="x",b="y"}` (and `le` last, for a bucket), values escaped; nothing without labels.
fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let le = le.map(|bound| ("le", bound));
    for (i, (name, value)) in labels.iter().copied().chain(le).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{name}=\"{value}\"");
    }
    out.push('}');
}

/// How long the listener waits for a scraper's request line and headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` (so a bad address fails at once) and answers `GET /metrics` there with
/// `render()`, on a thread of its own, one connection at a time: a scraper asks every few
/// seconds, and a page costs microseconds. Anything else is answered 404 (other paths) or 405
/// (other methods).
pub fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + 'static,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let answered = stream.and_then(|stream| answer(stream, &render));
                if let Err(e) = answered {
                    log::debug!("metrics listener: {e}");
                }
            }
        })?;
    Ok(bound)
}

/// Answers the requests of one connection, closing it after the first answer.
fn answer(stream: TcpStream, render: &impl Fn() -> String) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(16 * 1024));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers say nothing this listener needs: read past them.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let (status, content_type, body) = respond(&request_line, render);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The status line, content type and body answering `request_line`.
fn respond(
    request_line: &str,
    render: &impl Fn() -> String,
) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", CONTENT_TYPE, render()),
        (Some("GET"), Some(_)) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut page = Exposition::default();
        page.family("x_requests_total", Kind::Counter, "Requests.\nAll of them.");
        page.sample("x_requests_total", &[("path", "a\"b\\c")], 3);
        page.single("x_up", Kind::Gauge, "Up.", 1);
        assert_eq!(
            page.finish(),
            "# HELP x_requests_total Requests.\\nAll of them.\n\
             # TYPE x_requests_total counter\n\
             x_requests_total{path=\"a\\\"b\\\\c\"} 3\n\
             # HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_add_up_to_the_count() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let mut page = Exposition::default();
        page.family("x_seconds", Kind::Histogram, "Latency.");
        page.histogram("x_seconds", &[("method", "GET")], &histogram);
        let page = page.finish();
        let line = |prefix: &str| {
            page.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {page}"))
                .to_string()
        };
        assert_eq!(
            line("x_seconds_bucket{method=\"GET\",le=\"0.0001\"}"),
            "x_seconds_bucket{method=\"GET\",le=\"0.0001\"} 1"
        );
        assert_eq!(
            line("x_seconds_bucket{method=\"GET\",le=\"0.0025\"}"),
            "x_seconds_bucket{method=\"GET\",le=\"0.0025\"} 1"
        );
        assert_eq!(
            line("x_seconds_bucket{method=\"GET\",le=\"0.005\"}"),
            "x_seconds_bucket{method=\"GET\",le=\"0.005\"} 2"
        );
        assert_eq!(
            line("x_seconds_bucket{method=\"GET\",le=\"30\"}"),
            "x_seconds_bucket{method=\"GET\",le=\"30\"} 2"
        );
        assert_eq!(
            line("x_seconds_bucket{method=\"GET\",le=\"+Inf\"}"),
            "x_seconds_bucket{method=\"GET\",le=\"+Inf\"} 3"
        );
        assert_eq!(line("x_seconds_count"), "x_seconds_count{method=\"GET\"} 3");
        let sum: f64 = line("x_seconds_sum")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 60.00305).abs() < 1e-9, "{sum}");
        assert_eq!(histogram.count(), 3);
    }

    #[test]
    fn the_listener_answers_metrics_and_refuses_the_rest() {
        let render = || "x_up 1\n".to_string();
        assert_eq!(
            respond("GET /metrics HTTP/1.1\r\n", &render),
            ("200 OK", CONTENT_TYPE, "x_up 1\n".to_string())
        );
        assert_eq!(respond("GET / HTTP/1.1\r\n", &render).0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n", &render).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("", &render).0, "405 Method Not Allowed");
    }
}
