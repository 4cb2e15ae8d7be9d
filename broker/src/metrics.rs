//! Prometheus metrics and the `/metrics` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct Metrics {
    pub registry: Registry,
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub request_errors: IntCounterVec,
    pub connections: IntGauge,
    pub rejected_frames: IntCounter,
    pub sequencer_requests: IntCounter,
    pub sequencer_tickets: IntCounter,
    pub sequencer_numbers: IntCounter,
    pub ring_holes: IntCounter,
    pub ring_retransmits: IntCounter,
    pub ring_reissues: IntCounter,
    pub ring_busy: IntCounter,
    pub ring_config_fetches: IntCounter,
    pub ring_epoch: IntGauge,
    /// Idempotent produce batches answered as retries of stored ones (not written again).
    pub produce_duplicates: IntCounter,
    /// Producer ids handed out by InitProducerId.
    pub producer_ids: IntCounter,
    pub log_segments_deleted: IntCounter,
    pub log_bytes_deleted: IntCounter,
    /// The stable frontier F this broker exposes (-1 until it has one).
    pub frontier: IntGauge,
    /// The highest GSN this broker knows was handed out.
    pub frontier_newest: IntGauge,
    /// newest + 1 - F: numbers handed out that are not final yet.
    pub frontier_lag: IntGauge,
    pub frontier_rounds: IntCounter,
    /// Certificates of led partitions that a round could not confirm.
    pub frontier_unconfirmed: IntCounter,
    /// I/O errors of partition storage, and the replicas they took offline.
    pub storage: crate::storage::health::HealthMetrics,
    /// The metadata Raft group's term and leader as this broker sees them (-1: none).
    pub metadata_term: IntGauge,
    pub metadata_leader: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let counter =
            |name: &str, help: &str| IntCounter::new(name, help).expect("static metric definition");
        let m = Self {
            registry: Registry::new(),
            bytes_in: counter_vec(
                "kafka_bytes_in_total",
                "Record batch bytes produced",
                &["topic"],
            ),
            bytes_out: counter_vec(
                "kafka_bytes_out_total",
                "Record batch bytes fetched",
                &["topic"],
            ),
            records_in: counter_vec("kafka_records_in_total", "Records produced", &["topic"]),
            records_out: counter_vec(
                "kafka_records_out_total",
                "Records fetched (whole batches)",
                &["topic"],
            ),
            request_seconds: HistogramVec::new(
                HistogramOpts::new("kafka_request_duration_seconds", "Request latency by API")
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                &["api"],
            )
            .expect("static metric definition"),
            request_errors: counter_vec(
                "kafka_request_errors_total",
                "Error codes returned, by API and Kafka error code",
                &["api", "error"],
            ),
            connections: IntGauge::new("kafka_connections", "Open client connections")
                .expect("static metric definition"),
            rejected_frames: counter(
                "kafka_rejected_frames_total",
                "Frames rejected as malformed or oversized",
            ),
            sequencer_requests: counter(
                "gsn_sequencer_requests_total",
                "Requests sent to the sequencer",
            ),
            sequencer_tickets: counter(
                "gsn_sequencer_tickets_total",
                "Partition tickets merged into those requests",
            ),
            sequencer_numbers: counter(
                "gsn_sequencer_numbers_total",
                "Global sequence numbers reserved",
            ),
            ring_holes: counter(
                "gsn_ring_holes_total",
                "Numbers issued by the ring that no record will hold (expired or superseded tickets)",
            ),
            ring_retransmits: counter(
                "gsn_ring_retransmits_total",
                "Ring requests retransmitted after a timeout",
            ),
            ring_reissues: counter(
                "gsn_ring_reissues_total",
                "Ring reservations re-requested under a new req_id (expired ticket or new epoch)",
            ),
            ring_busy: counter(
                "gsn_ring_busy_total",
                "Ring requests rejected Busy (the visit's batch was full)",
            ),
            ring_config_fetches: counter(
                "gsn_ring_config_fetches_total",
                "GET /ring fetches from the ring controllers",
            ),
            ring_epoch: IntGauge::new("gsn_ring_epoch", "Ring epoch the sequencer client uses")
                .expect("static metric definition"),
            produce_duplicates: counter(
                "kafka_produce_duplicate_batches_total",
                "Idempotent batches recognised as retries and answered with their stored offset",
            ),
            producer_ids: counter(
                "kafka_producer_ids_issued_total",
                "Producer ids handed out by InitProducerId",
            ),
            log_segments_deleted: counter(
                "gsn_log_segments_deleted_total",
                "Log segments deleted by retention, DeleteRecords or an installed snapshot",
            ),
            log_bytes_deleted: counter(
                "gsn_log_bytes_deleted_total",
                "Bytes of log segments deleted by retention, DeleteRecords or an installed snapshot",
            ),
            frontier: IntGauge::new(
                "gsn_frontier",
                "Stable frontier F: every GSN below it is committed in one partition or never used",
            )
            .expect("static metric definition"),
            frontier_newest: IntGauge::new(
                "gsn_frontier_newest",
                "Highest GSN this broker knows was handed out by the sequencer",
            )
            .expect("static metric definition"),
            frontier_lag: IntGauge::new(
                "gsn_frontier_lag",
                "GSNs handed out that are not below the frontier yet (newest + 1 - F)",
            )
            .expect("static metric definition"),
            frontier_rounds: counter(
                "gsn_frontier_rounds_total",
                "Frontier rounds (one probe to every peer) this broker started",
            ),
            frontier_unconfirmed: counter(
                "gsn_frontier_unconfirmed_total",
                "Partition certificates a round could not confirm with a majority",
            ),
            storage: crate::storage::health::HealthMetrics {
                errors: counter_vec(
                    "gsn_storage_errors_total",
                    "I/O errors of partition storage, by the operation that failed",
                    &["op"],
                ),
                offline: IntGauge::new(
                    "gsn_offline_replicas",
                    "Partition replicas of this broker offline after a storage error",
                )
                .expect("static metric definition"),
            },
            metadata_term: IntGauge::new(
                "gsn_metadata_raft_term",
                "Term of the cluster metadata Raft group as this broker sees it",
            )
            .expect("static metric definition"),
            metadata_leader: IntGauge::new(
                "gsn_metadata_leader",
                "Leader (controller) of the cluster metadata Raft group as this broker sees it; -1: none",
            )
            .expect("static metric definition"),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.bytes_in.clone()),
            Box::new(m.bytes_out.clone()),
            Box::new(m.records_in.clone()),
            Box::new(m.records_out.clone()),
            Box::new(m.request_seconds.clone()),
            Box::new(m.request_errors.clone()),
            Box::new(m.connections.clone()),
            Box::new(m.rejected_frames.clone()),
            Box::new(m.sequencer_requests.clone()),
            Box::new(m.sequencer_tickets.clone()),
            Box::new(m.sequencer_numbers.clone()),
            Box::new(m.ring_holes.clone()),
            Box::new(m.ring_retransmits.clone()),
            Box::new(m.ring_reissues.clone()),
            Box::new(m.ring_busy.clone()),
            Box::new(m.ring_config_fetches.clone()),
            Box::new(m.ring_epoch.clone()),
            Box::new(m.produce_duplicates.clone()),
            Box::new(m.producer_ids.clone()),
            Box::new(m.log_segments_deleted.clone()),
            Box::new(m.log_bytes_deleted.clone()),
            Box::new(m.frontier.clone()),
            Box::new(m.frontier_newest.clone()),
            Box::new(m.frontier_lag.clone()),
            Box::new(m.frontier_rounds.clone()),
            Box::new(m.frontier_unconfirmed.clone()),
            Box::new(m.storage.errors.clone()),
            Box::new(m.storage.offline.clone()),
            Box::new(m.metadata_term.clone()),
            Box::new(m.metadata_leader.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Largest HTTP request head read; anything longer is answered 431 and closed.
const MAX_HTTP_HEAD: usize = 8192;

/// Serves `GET /metrics` (Prometheus text format); every other path is 404.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut sock, peer)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut head = vec![0u8; MAX_HTTP_HEAD];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < MAX_HTTP_HEAD {
                    let n = sock.read(&mut head[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = String::from_utf8_lossy(&head[..len]);
            let (status, body) = if line.starts_with("GET /metrics") {
                ("200 OK", metrics.render())
            } else {
                tracing::debug!(%peer, "metrics endpoint: unknown path");
                ("404 Not Found", b"only GET /metrics is served\n".to_vec())
            };
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(header.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
