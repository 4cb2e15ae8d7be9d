//! The broker's ring client against three in-process switches (the softswitch host loop,
//! idle pacing on) and a fake controller: concurrent reservations never overlap and respect
//! real-time order; after the epoch is sealed and a new one installed above everything,
//! reservations recover; a full-size Kafka batch (1,000,000 records) gets consecutive
//! numbers from a ring with the default W, and a ring with a smaller W is refused. Every
//! wait in the harness and the client retransmits until a deadline, so nothing here
//! depends on timing beyond "the loopback ring eventually answers".

#[path = "support/ring_harness.rs"]
mod ring_harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::metrics::Metrics;
use broker::ring_sequencer::{ConfigSource, RingError, RingOptions, RingSequencer};
use broker::sequencer::{Sequencer, SequencerClient};
use ring_harness::{FakeController, HostOptions, SoftRing};
use sequencer_p4::control::DEFAULT_MAX_VISIT;

/// One completed reservation: logical start and end ticks, first number, count.
#[derive(Debug, Clone, Copy)]
struct Done {
    start: u64,
    end: u64,
    base: u64,
    count: u64,
}

fn check(done: &[Done]) {
    let mut by_base = done.to_vec();
    by_base.sort_by_key(|d| d.base);
    for w in by_base.windows(2) {
        assert!(w[0].base + w[0].count <= w[1].base, "overlap: {w:?}");
    }
    // Real-time order: completed-before-started ⇒ smaller numbers. Sorting by end lets
    // one pass compare each reservation with everything that ended before it started.
    let mut by_end = done.to_vec();
    by_end.sort_by_key(|d| d.end);
    for d in done {
        for e in by_end.iter().take_while(|e| e.end < d.start) {
            assert!(e.base < d.base, "{e:?} completed before {d:?} started");
        }
    }
}

async fn load(
    seqs: &[Arc<RingSequencer>],
    clock: &Arc<AtomicU64>,
    tasks: u64,
    per_task: u64,
) -> Vec<Done> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let seq = Arc::clone(&seqs[(t as usize) % seqs.len()]);
        let clock = Arc::clone(clock);
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..per_task {
                let count = 1 + (t * 7 + i * 3) % 50;
                let start = clock.fetch_add(1, Ordering::SeqCst);
                let base = seq.reserve(count).await.expect("reserve");
                let end = clock.fetch_add(1, Ordering::SeqCst);
                out.push(Done {
                    start,
                    end,
                    base,
                    count,
                });
            }
            out
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("join"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_reservations_are_disjoint_ordered_and_survive_reconfiguration() {
    let ring = SoftRing::start(3, HostOptions::default()).await;
    let ctrl = FakeController::start().await;
    let cfg1 = ring.install(1, 1_000, 1 << 40, 1_000).await;
    ring.inject(1).await;
    ctrl.set(cfg1);

    let metrics = Arc::new(Metrics::new());
    let opts = RingOptions {
        rto: Duration::from_millis(30),
        deadline: Duration::from_secs(30),
        // A small W, to exercise the per-request limit.
        min_max_visit: 1,
        ..RingOptions::default()
    };
    let mut seqs = Vec::new();
    // Two brokers with different home switches (ids 1 and 2), same controller.
    for broker_id in 1..=2 {
        let seq = RingSequencer::start(
            ConfigSource::Controllers(vec![ctrl.addr.to_string()]),
            "127.0.0.1:0".parse().expect("addr"),
            broker_id,
            0,
            opts.clone(),
            Arc::clone(&metrics),
        )
        .await
        .expect("start ring client");
        assert_eq!(seq.max_batch(), 1_000);
        seqs.push(Arc::new(seq));
    }
    let clock = Arc::new(AtomicU64::new(0));

    let mut done = load(&seqs, &clock, 32, 8).await;
    check(&done);
    assert!(done.iter().all(|d| d.base >= 1_000));
    assert_eq!(metrics.ring_epoch.get(), 1);

    // More than W in one reservation is refused, not split.
    assert!(matches!(
        seqs[0].reserve(1_001).await,
        Err(broker::sequencer::SequencerError::TooMany(1_001))
    ));

    // Through the broker's batching client: batches stay at or below W.
    let client = SequencerClient::start(
        Arc::clone(&seqs[0]) as Arc<dyn Sequencer>,
        Duration::ZERO,
        Arc::clone(&metrics),
    );
    let mut handles = Vec::new();
    for i in 0..64u64 {
        let c = client.clone();
        let clock = Arc::clone(&clock);
        handles.push(tokio::spawn(async move {
            let count = 100 + i;
            let start = clock.fetch_add(1, Ordering::SeqCst);
            let base = c.reserve(count).await.expect("batched reserve");
            let end = clock.fetch_add(1, Ordering::SeqCst);
            Done {
                start,
                end,
                base,
                count,
            }
        }));
    }
    for h in handles {
        done.push(h.await.expect("join"));
    }
    check(&done);

    // Reconfiguration: seal epoch 1, then start reservations (they are rejected Sealed and
    // wait), then install epoch 2 above everything epoch 1 can have issued and publish it.
    let reports = ring.seal(1).await;
    let high = reports.iter().map(|s| s.fwd_base).max().unwrap_or(0);
    let issued = done.iter().map(|d| d.base + d.count).max().unwrap_or(0);
    assert!(
        issued <= high,
        "issued {issued} above the sealed ring's {high}"
    );
    let restart = high + 1_000_000;
    let during = {
        let seqs = seqs.clone();
        let clock = Arc::clone(&clock);
        tokio::spawn(async move { load(&seqs, &clock, 8, 2).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cfg2 = ring.install(2, restart, restart + (1 << 40), 1_000).await;
    ring.inject(2).await;
    ctrl.set(cfg2);
    let after_seal = during.await.expect("join");
    assert!(
        after_seal.iter().all(|d| d.base >= restart),
        "epoch 2 numbers start at the restart point: {after_seal:?}"
    );
    done.extend(after_seal);
    done.extend(load(&seqs, &clock, 8, 4).await);
    check(&done);
    assert_eq!(metrics.ring_epoch.get(), 2);
    assert!(metrics.ring_config_fetches.get() >= 1);
    // The reservations started after the seal were re-requested in epoch 2.
    assert!(metrics.ring_reissues.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_size_batches_fit_the_default_ring_and_a_small_w_is_refused() {
    let ring = SoftRing::start(2, HostOptions::default()).await;
    let ctrl = FakeController::start().await;
    // The broker refuses a ring whose W cannot number its largest batch, with the reason.
    ctrl.set(ring.install(1, 1_000, 1 << 40, 65_536).await);
    let start = || {
        RingSequencer::start(
            ConfigSource::Controllers(vec![ctrl.addr.to_string()]),
            "127.0.0.1:0".parse().expect("addr"),
            0,
            0,
            RingOptions::default(),
            Arc::new(Metrics::new()),
        )
    };
    match start().await {
        Err(RingError::Refused(why)) => {
            assert!(
                why.contains("65536") && why.contains("--max-visit"),
                "{why}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a ring with W = 65536 was accepted"),
    }

    // The ring controller's default W: a batch of 1,000,000 records is one request, and
    // the batching client merges whole tickets up to W.
    ring.seal(1).await;
    ctrl.set(
        ring.install(2, 1 << 30, (1 << 30) + (1 << 40), DEFAULT_MAX_VISIT)
            .await,
    );
    ring.inject(2).await;
    let metrics = Arc::new(Metrics::new());
    let seq = Arc::new(start().await.expect("default W is accepted"));
    assert_eq!(seq.max_batch(), u64::from(DEFAULT_MAX_VISIT));
    let client = SequencerClient::start(
        Arc::clone(&seq) as Arc<dyn Sequencer>,
        Duration::ZERO,
        Arc::clone(&metrics),
    );
    let clock = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for i in 0..6u64 {
        let c = client.clone();
        let clock = Arc::clone(&clock);
        handles.push(tokio::spawn(async move {
            let count = if i % 2 == 0 { 1_000_000 } else { 1 + i };
            let start = clock.fetch_add(1, Ordering::SeqCst);
            let base = c.reserve(count).await.expect("full-size batch");
            let end = clock.fetch_add(1, Ordering::SeqCst);
            Done {
                start,
                end,
                base,
                count,
            }
        }));
    }
    let mut done = Vec::new();
    for h in handles {
        done.push(h.await.expect("join"));
    }
    check(&done);
    assert!(done.iter().all(|d| d.base >= 1 << 30));
    // One request never carries more than W.
    assert!(matches!(
        seq.reserve(u64::from(DEFAULT_MAX_VISIT) + 1).await,
        Err(broker::sequencer::SequencerError::TooMany(_))
    ));
}
