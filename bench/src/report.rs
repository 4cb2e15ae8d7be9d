//! Throughput / latency arithmetic and formatting, shared by both modes so
//! the units are computed and labelled in exactly one place.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

const MB: f64 = 1e6;
const MIB: f64 = 1024.0 * 1024.0;

/// Records and payload bytes moved in some wall-clock interval.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Rate {
    fn secs(&self) -> f64 {
        // Guard against a zero interval (e.g. 0 records) producing inf/NaN.
        self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.secs()
    }
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / MB / self.secs()
    }
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / MIB / self.secs()
    }

    pub fn human(&self) -> String {
        format!(
            "{} records, {:.1} MB in {:.3} s: {:.0} records/s, {:.1} MB/s (MB = 10^6 B), {:.1} MiB/s",
            self.records,
            self.bytes as f64 / MB,
            self.elapsed.as_secs_f64(),
            self.records_per_s(),
            self.mb_per_s(),
            self.mib_per_s()
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "records": self.records,
            "bytes": self.bytes,
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "records_per_s": round3(self.records_per_s()),
            "mb_per_s": round3(self.mb_per_s()),
            "mib_per_s": round3(self.mib_per_s()),
        })
    }
}

/// Latency summary in milliseconds, from a histogram recorded in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn from_micros(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        })
    }

    pub fn human(&self) -> String {
        format!(
            "latency ms: p50 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}, mean {:.3}",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.mean_ms
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "p999_ms": round3(self.p999_ms),
            "max_ms": round3(self.max_ms),
            "mean_ms": round3(self.mean_ms),
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints an interval-rate line to stderr every few seconds so a long run
/// shows it is alive (and whether the rate is steady) without flooding output.
pub struct Progress {
    label: &'static str,
    every: Duration,
    last: Instant,
    last_records: u64,
    last_bytes: u64,
}

impl Progress {
    pub fn new(label: &'static str) -> Progress {
        Progress {
            label,
            every: Duration::from_secs(5),
            last: Instant::now(),
            last_records: 0,
            last_bytes: 0,
        }
    }

    pub fn tick(&mut self, records: u64, bytes: u64) {
        let now = Instant::now();
        let elapsed = now - self.last;
        if elapsed < self.every {
            return;
        }
        let interval = Rate {
            records: records - self.last_records,
            bytes: bytes - self.last_bytes,
            elapsed,
        };
        eprintln!(
            "[{}] {} records so far; last {:.1} s: {:.0} records/s, {:.1} MB/s",
            self.label,
            records,
            elapsed.as_secs_f64(),
            interval.records_per_s(),
            interval.mb_per_s()
        );
        self.last = now;
        self.last_records = records;
        self.last_bytes = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_decimal_and_binary() {
        let r = Rate {
            records: 1000,
            bytes: 1_048_576_000,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(r.records_per_s(), 500.0);
        assert_eq!(r.mib_per_s(), 500.0);
        assert!((r.mb_per_s() - 524.288).abs() < 1e-9);
    }

    #[test]
    fn latency_percentiles_in_ms() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1..=1000 ms
        }
        let l = Latency::from_micros(&h).unwrap();
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
        assert!(Latency::from_micros(&Histogram::<u64>::new(3).unwrap()).is_none());
    }
}
