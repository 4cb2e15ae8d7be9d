//! The log cleaner: one background task per broker that compacts the partitions of topics with
//! cleanup.policy=compact (`storage::compact` does the byte work). Every replica cleans its own
//! copy; the result is the same everywhere because it depends only on the committed log.
//!
//! Every `log.cleaner.backoff.ms` it visits the local replicas of compacted topics and cleans
//! one when the bytes rolled since its last cleaning are at least min.cleanable.dirty.ratio of
//! its rolled bytes, or when a tombstone it kept has outlived delete.retention.ms. Segment
//! files are read and written on a blocking thread without the log lock; the lock is taken
//! (for writing) only to swap a cleaned segment in.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus::{IntCounter, Registry};

use crate::broker::Broker;
use crate::config::ConfigError;
use crate::partition::Partition;
use crate::storage::compact::{self, CleanPlan, CleanReport, CompactError};

/// Command-line / environment / file options of the log cleaner.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct CleanerArgs {
    /// Pause between cleaner passes (log.cleaner.backoff.ms). Default 15000.
    #[arg(long, env = "BROKER_LOG_CLEANER_BACKOFF_MS")]
    pub log_cleaner_backoff_ms: Option<u64>,
    /// Share of a partition's rolled bytes written since its last cleaning that makes it due
    /// (min.cleanable.dirty.ratio). Default 0.5.
    #[arg(long, env = "BROKER_LOG_CLEANER_MIN_CLEANABLE_RATIO")]
    pub log_cleaner_min_cleanable_ratio: Option<f64>,
    /// Most distinct keys in the cleaner's key map, which bounds its memory at about 40 bytes
    /// per key (Kafka bounds it in bytes: log.cleaner.dedupe.buffer.size). Default 1000000.
    #[arg(long, env = "BROKER_LOG_CLEANER_MAX_KEYS")]
    pub log_cleaner_max_keys: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CleanerConfig {
    pub backoff: Duration,
    pub min_cleanable_ratio: f64,
    pub max_keys: usize,
}

/// Most keys the map may be given (about 400 MB).
const MAX_KEYS_LIMIT: usize = 10_000_000;

impl CleanerArgs {
    /// These values, with `fallback`'s where these have none (flags/env over the file).
    pub fn or(self, fallback: CleanerArgs) -> CleanerArgs {
        CleanerArgs {
            log_cleaner_backoff_ms: self
                .log_cleaner_backoff_ms
                .or(fallback.log_cleaner_backoff_ms),
            log_cleaner_min_cleanable_ratio: self
                .log_cleaner_min_cleanable_ratio
                .or(fallback.log_cleaner_min_cleanable_ratio),
            log_cleaner_max_keys: self.log_cleaner_max_keys.or(fallback.log_cleaner_max_keys),
        }
    }

    pub fn resolve(self) -> Result<CleanerConfig, ConfigError> {
        let invalid = |name, reason: String| Err(ConfigError::Invalid { name, reason });
        let backoff_ms = self.log_cleaner_backoff_ms.unwrap_or(15_000);
        if backoff_ms == 0 {
            return invalid("log-cleaner-backoff-ms", "must be at least 1".into());
        }
        let ratio = self.log_cleaner_min_cleanable_ratio.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&ratio) {
            return invalid(
                "log-cleaner-min-cleanable-ratio",
                format!("{ratio} is outside 0..=1"),
            );
        }
        let max_keys = self.log_cleaner_max_keys.unwrap_or(1_000_000);
        if !(1..=MAX_KEYS_LIMIT).contains(&max_keys) {
            return invalid(
                "log-cleaner-max-keys",
                format!("{max_keys} is outside 1..={MAX_KEYS_LIMIT}"),
            );
        }
        Ok(CleanerConfig {
            backoff: Duration::from_millis(backoff_ms),
            min_cleanable_ratio: ratio,
            max_keys,
        })
    }
}

/// What the cleaner remembers of a partition between passes (in memory: after a restart
/// every rolled segment counts as dirty once).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanState {
    /// Base offset of the last segment cleaned.
    pub cleaned_through: Option<i64>,
    /// When a kept tombstone expires.
    pub tombstone_deadline: Option<i64>,
}

/// Whether a partition with rolled segments `(base offset, bytes)` is due for cleaning.
pub fn is_due(rolled: &[(i64, u64)], state: CleanState, ratio: f64, now_ms: i64) -> bool {
    let total: u64 = rolled.iter().map(|(_, size)| size).sum();
    let dirty: u64 = rolled
        .iter()
        .filter(|(base, _)| state.cleaned_through.is_none_or(|c| *base > c))
        .map(|(_, size)| size)
        .sum();
    let dirty_enough = dirty > 0 && dirty as f64 >= ratio * total as f64;
    dirty_enough || state.tombstone_deadline.is_some_and(|d| now_ms >= d)
}

struct CleanerMetrics {
    runs: IntCounter,
    bytes: IntCounter,
    records_removed: IntCounter,
    errors: IntCounter,
    /// Time spent in cleaning passes (microseconds), for the cleaner's MB/s.
    busy_us: IntCounter,
}

impl CleanerMetrics {
    fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            if let Err(e) = registry.register(Box::new(c.clone())) {
                tracing::warn!(metric = name, error = %e, "cannot register cleaner metric");
            }
            c
        };
        Self {
            runs: counter(
                "kafka_log_cleaner_runs_total",
                "Partition cleanings done by the log cleaner",
            ),
            bytes: counter(
                "kafka_log_cleaner_bytes_total",
                "Segment bytes read and cleaned by the log cleaner",
            ),
            records_removed: counter(
                "kafka_log_cleaner_records_removed_total",
                "Records removed by log compaction",
            ),
            errors: counter(
                "kafka_log_cleaner_errors_total",
                "Partition cleanings that failed",
            ),
            busy_us: counter(
                "kafka_log_cleaner_busy_microseconds_total",
                "Time the log cleaner spent in cleaning passes",
            ),
        }
    }
}

/// Runs until the broker is dropped.
pub async fn run(broker: Weak<Broker>) {
    let Some((config, metrics)) = broker.upgrade().map(|b| {
        (
            b.config.cleaner,
            CleanerMetrics::register(&b.metrics.registry),
        )
    }) else {
        return;
    };
    let mut states: HashMap<(String, i32), CleanState> = HashMap::new();
    loop {
        tokio::time::sleep(config.backoff).await;
        let Some(b) = broker.upgrade() else {
            return;
        };
        let partitions: Vec<Arc<Partition>> = b
            .topics()
            .iter()
            .flat_map(|t| t.partitions.iter().flatten().cloned().collect::<Vec<_>>())
            .filter(|p| p.settings().cleanup_compact && !p.is_offline())
            .collect();
        drop(b);
        states.retain(|(topic, index), _| {
            partitions
                .iter()
                .any(|p| &p.topic == topic && p.index == *index)
        });
        for p in partitions {
            let key = (p.topic.clone(), p.index);
            let state = states.get(&key).copied().unwrap_or_default();
            let task = {
                let p = Arc::clone(&p);
                tokio::task::spawn_blocking(move || clean_partition(&p, config, state))
            };
            let started = std::time::Instant::now();
            let outcome = task.await;
            match outcome {
                Ok(Ok(Some((next, report)))) => {
                    metrics.busy_us.inc_by(started.elapsed().as_micros() as u64);
                    metrics.runs.inc();
                    metrics.bytes.inc_by(report.bytes_read);
                    metrics.records_removed.inc_by(report.records_removed);
                    tracing::debug!(topic = %p.topic, partition = p.index, ?report, "cleaned");
                    states.insert(key, next);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    metrics.errors.inc();
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "log cleaning failed");
                    // An I/O error on the replica's files takes it offline, as any other.
                    if let CompactError::Io(io) = &e {
                        p.note_storage_error("clean", io);
                    }
                }
                Err(e) => {
                    metrics.errors.inc();
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "log cleaner task died");
                }
            }
        }
    }
}

/// One cleaning pass over a partition if it is due; None when it was not.
fn clean_partition(
    p: &Partition,
    config: CleanerConfig,
    state: CleanState,
) -> Result<Option<(CleanState, CleanReport)>, CompactError> {
    let settings = p.settings();
    if !settings.cleanup_compact {
        return Ok(None);
    }
    let shared = p.shared_log();
    let lock_err = || CompactError::Io(std::io::Error::other("partition log lock poisoned"));
    // Only committed data: a segment above the high watermark may still be truncated.
    let hw = p.high_watermark();
    let rolled: Vec<_> = shared
        .read()
        .map_err(|_| lock_err())?
        .log
        .rolled_segments()
        .into_iter()
        .filter(|s| s.last_offset < hw)
        .collect();
    let now_ms = crate::raft::log_store::now_ms();
    let sizes: Vec<(i64, u64)> = rolled.iter().map(|s| (s.base_offset, s.size)).collect();
    if !is_due(&sizes, state, config.min_cleanable_ratio, now_ms) {
        return Ok(None);
    }
    let plan = CleanPlan {
        now_ms,
        delete_retention_ms: settings.delete_retention_ms,
        max_keys: config.max_keys,
    };
    let report = compact::clean_log(
        &rolled,
        plan,
        |s| compact::modified_ms(&s.path),
        |seg, cleaned| {
            let mut guard = shared
                .write()
                .map_err(|_| std::io::Error::other("partition log lock poisoned"))?;
            guard.log.replace_rolled_segment(seg, cleaned)
        },
    )?;
    if report.segments_cleaned == 0 && !rolled.is_empty() {
        tracing::warn!(
            topic = %p.topic,
            partition = p.index,
            max_keys = config.max_keys,
            "the first segment has more keys than the cleaner's key map holds; raise --log-cleaner-max-keys"
        );
    }
    let next = CleanState {
        cleaned_through: report.cleaned_through.or(state.cleaned_through),
        tombstone_deadline: report.tombstone_deadline,
    };
    Ok(Some((next, report)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_ratio_and_tombstone_deadline_make_a_partition_due() {
        let rolled = [(0i64, 100u64), (10, 100), (20, 100)];
        assert!(is_due(&rolled, CleanState::default(), 0.5, 0));
        let cleaned = CleanState {
            cleaned_through: Some(10),
            tombstone_deadline: None,
        };
        // 100 dirty of 300: below 0.5, above 0.3.
        assert!(!is_due(&rolled, cleaned, 0.5, 0));
        assert!(is_due(&rolled, cleaned, 0.3, 0));
        let all_clean = CleanState {
            cleaned_through: Some(20),
            tombstone_deadline: Some(1_000),
        };
        assert!(!is_due(&rolled, all_clean, 0.0, 999));
        assert!(is_due(&rolled, all_clean, 0.0, 1_000));
        assert!(!is_due(&[], CleanState::default(), 0.0, 0));
    }

    #[test]
    fn resolve_checks_bounds() {
        let c = CleanerArgs::default().resolve().expect("defaults");
        assert_eq!(c.backoff, Duration::from_secs(15));
        let bad = CleanerArgs {
            log_cleaner_min_cleanable_ratio: Some(1.5),
            ..CleanerArgs::default()
        };
        assert!(bad.resolve().is_err());
        let bad = CleanerArgs {
            log_cleaner_max_keys: Some(0),
            ..CleanerArgs::default()
        };
        assert!(bad.resolve().is_err());
    }
}
