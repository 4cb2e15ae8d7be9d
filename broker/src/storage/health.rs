//! The storage health of one partition replica.
//!
//! Kafka takes a whole log directory offline at its first I/O error: no more reads or writes
//! there, KAFKA_STORAGE_ERROR for its partitions, leadership moved to other replicas. Here the
//! unit is the replica (one partition's segment directory and its Raft state): a replica is
//! healthy until the first I/O error on any of its paths (append, fsync, roll, index, read for
//! fetch or replication, truncation, purge, cleaning), then offline until the broker restarts.
//! Errors come in two ways: openraft stops the replica's Raft core when its storage returns an
//! error (`Fatal::StorageError` in the metrics), and the broker's own reads (fetch,
//! ListOffsets, the cleaner) report theirs here directly.

use std::sync::OnceLock;

use openraft::error::Fatal;
use openraft::StorageError;
use prometheus::{IntCounterVec, IntGauge};
use tokio::sync::watch;

/// The metrics every replica's health reports to.
#[derive(Clone)]
pub struct HealthMetrics {
    /// `gsn_storage_errors_total{op}`: I/O errors by the operation that failed.
    pub errors: IntCounterVec,
    /// `gsn_offline_replicas`: replicas of this broker offline after a storage error.
    pub offline: IntGauge,
}

impl HealthMetrics {
    /// Metrics that are not registered anywhere (tests).
    pub fn unregistered() -> Self {
        Self {
            errors: IntCounterVec::new(
                prometheus::Opts::new("gsn_storage_errors_total", "storage errors"),
                &["op"],
            )
            .expect("static metric definition"),
            offline: IntGauge::new("gsn_offline_replicas", "offline replicas")
                .expect("static metric definition"),
        }
    }
}

/// Why a replica went offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailure {
    /// What was being done: "write log", "read log", "delete log", "vote", "open", ...
    pub op: &'static str,
    pub error: String,
}

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.error)
    }
}

pub struct ReplicaHealth {
    failure: OnceLock<StorageFailure>,
    failed: watch::Sender<bool>,
    metrics: HealthMetrics,
}

impl ReplicaHealth {
    pub fn new(metrics: HealthMetrics) -> Self {
        Self {
            failure: OnceLock::new(),
            failed: watch::Sender::new(false),
            metrics,
        }
    }

    /// Counts an I/O error and takes the replica offline if it was not already. Returns true
    /// for the call that took it offline.
    pub fn fail(&self, op: &'static str, error: impl std::fmt::Display) -> bool {
        self.metrics.errors.with_label_values(&[op]).inc();
        let failure = StorageFailure {
            op,
            error: error.to_string(),
        };
        let first = self.failure.set(failure).is_ok();
        if first {
            self.metrics.offline.inc();
            self.failed.send_replace(true);
        }
        first
    }

    /// Takes the replica offline after its Raft core stopped on `fatal`. A normal stop
    /// (shutdown) is not a failure.
    pub fn fail_from_raft(&self, fatal: &Fatal<u64>) -> bool {
        match fatal {
            Fatal::Stopped => false,
            Fatal::Panicked => self.fail("raft", "the Raft core panicked"),
            Fatal::StorageError(e) => self.fail(op_of(e), e),
        }
    }

    pub fn failure(&self) -> Option<&StorageFailure> {
        self.failure.get()
    }

    pub fn is_offline(&self) -> bool {
        self.failure.get().is_some()
    }

    /// Resolves once the replica is offline.
    pub async fn offline(&self) {
        let mut rx = self.failed.subscribe();
        let _ = rx.wait_for(|failed| *failed).await;
    }

    /// A replica leaving the broker (topic deleted, shutdown) no longer counts as offline.
    pub fn forget(&self) {
        if self.is_offline() {
            self.metrics.offline.dec();
        }
    }
}

/// The operation an openraft storage error names. openraft 0.9 keeps the error's subject and
/// verb private and shows them as "when <Verb> <Subject>: <cause>"; the test below pins that.
pub fn op_of(e: &StorageError<u64>) -> &'static str {
    let text = e.to_string();
    let Some(rest) = text.strip_prefix("when ") else {
        return "raft";
    };
    let mut words = rest.splitn(2, ' ');
    let verb = words.next().unwrap_or("");
    let subject = words.next().unwrap_or("");
    let is = |name: &str| subject.starts_with(name);
    match verb {
        _ if is("Vote") => "vote",
        _ if is("Snapshot") => "snapshot",
        _ if is("StateMachine") || is("Apply") => "state machine",
        "Write" if is("Log") => "write log",
        "Read" | "Seek" if is("Log") => "read log",
        "Delete" if is("Log") => "delete log",
        _ => "raft",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{ErrorSubject, ErrorVerb, StorageIOError};

    fn io(subject: ErrorSubject<u64>, verb: ErrorVerb) -> StorageError<u64> {
        let cause = std::io::Error::from_raw_os_error(5);
        StorageIOError::new(subject, verb, openraft::AnyError::new(&cause)).into()
    }

    #[test]
    fn openraft_errors_name_their_operation() {
        let id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 7);
        assert_eq!(
            op_of(&io(ErrorSubject::Log(id), ErrorVerb::Write)),
            "write log"
        );
        assert_eq!(
            op_of(&io(ErrorSubject::Logs, ErrorVerb::Write)),
            "write log"
        );
        assert_eq!(op_of(&io(ErrorSubject::Logs, ErrorVerb::Read)), "read log");
        assert_eq!(
            op_of(&io(ErrorSubject::LogIndex(3), ErrorVerb::Read)),
            "read log"
        );
        assert_eq!(
            op_of(&io(ErrorSubject::Logs, ErrorVerb::Delete)),
            "delete log"
        );
        assert_eq!(op_of(&io(ErrorSubject::Vote, ErrorVerb::Write)), "vote");
        assert_eq!(
            op_of(&io(ErrorSubject::StateMachine, ErrorVerb::Write)),
            "state machine"
        );
        assert_eq!(
            op_of(&io(ErrorSubject::Snapshot(None), ErrorVerb::Read)),
            "snapshot"
        );
        assert_eq!(op_of(&io(ErrorSubject::Store, ErrorVerb::Write)), "raft");
        assert!(io(ErrorSubject::Logs, ErrorVerb::Write)
            .to_string()
            .contains("Input/output error"));
    }

    #[tokio::test]
    async fn the_first_failure_takes_the_replica_offline_and_every_error_counts() {
        let metrics = HealthMetrics::unregistered();
        let health = ReplicaHealth::new(metrics.clone());
        assert!(!health.is_offline());
        assert!(
            !health.fail_from_raft(&Fatal::Stopped),
            "a shutdown is no failure"
        );
        assert!(!health.is_offline());
        assert!(health.fail("read log", "EIO"));
        assert!(
            !health.fail("write log", "ENOSPC"),
            "only the first takes it offline"
        );
        health.offline().await;
        assert_eq!(
            health.failure(),
            Some(&StorageFailure {
                op: "read log",
                error: "EIO".into()
            })
        );
        assert_eq!(metrics.errors.with_label_values(&["read log"]).get(), 1);
        assert_eq!(metrics.errors.with_label_values(&["write log"]).get(), 1);
        assert_eq!(metrics.offline.get(), 1);
        health.forget();
        assert_eq!(metrics.offline.get(), 0);
    }

    #[tokio::test]
    async fn a_raft_core_stopped_by_a_storage_error_takes_it_offline() {
        let health = ReplicaHealth::new(HealthMetrics::unregistered());
        let fatal = Fatal::StorageError(io(ErrorSubject::Logs, ErrorVerb::Write));
        assert!(health.fail_from_raft(&fatal));
        let failure = health.failure().expect("offline");
        assert_eq!(failure.op, "write log");
        assert!(failure.error.contains("Input/output error"), "{failure}");
    }
}
