//! The rdkafka crate (bundled librdkafka) against the real broker binary:
//! create 2 topics x 3 partitions with the admin client, produce 10,000
//! records with a FutureProducer (acks=all), read them back with a
//! BaseConsumer using manual assignment (no consumer group), and check
//! payloads and offsets.
//!
//! Offsets are global sequence numbers: strictly increasing within a
//! partition, with gaps, and unique across every partition of every topic.
//! Nothing here assumes contiguous offsets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use system_tests::Broker;

const TOPICS: [&str; 2] = ["rd-alpha", "rd-beta"];
const PARTITIONS: i32 = 3;
const RECORDS: usize = 10_000;

type Key = (String, i32, i64);

fn start_broker() -> Broker {
    match Broker::start() {
        Ok(b) => b,
        Err(e) => panic!("could not start the broker: {e:#}"),
    }
}

#[test]
fn rdkafka_roundtrip_two_topics_three_partitions() {
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // ---- create topics -------------------------------------------------
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let new_topics: Vec<NewTopic> = TOPICS
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(20)));
    let results = rt
        .block_on(admin.create_topics(&new_topics, &opts))
        .expect("CreateTopics request");
    for r in results {
        if let Err((topic, code)) = r {
            panic!("creating topic {topic} failed: {code:?}");
        }
    }
    // Both topics visible with 3 partitions.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(5))
            .expect("metadata");
        let counts: HashMap<&str, usize> = md
            .topics()
            .iter()
            .map(|t| (t.name(), t.partitions().len()))
            .collect();
        if TOPICS
            .iter()
            .all(|t| counts.get(t) == Some(&(PARTITIONS as usize)))
        {
            assert_eq!(md.brokers().len(), 1, "one broker in metadata");
            assert_eq!(md.brokers()[0].id(), 1);
            assert_eq!(md.brokers()[0].port() as u16, broker.port);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "topics not in metadata in time: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // ---- produce -------------------------------------------------------
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("linger.ms", "10")
        .set("compression.type", "zstd")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x65c0de);
    let mut sent: Vec<(String, i32, String, Vec<u8>)> = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let topic = TOPICS[i % 2].to_string();
        let partition = ((i / 2) % PARTITIONS as usize) as i32;
        let len = rng.gen_range(0..400);
        let mut value = format!("rec-{i}-").into_bytes();
        value.extend((0..len).map(|_| rng.gen_range(b'a'..=b'z')));
        sent.push((topic, partition, format!("key-{i}"), value));
    }
    let delivered: HashMap<Key, (String, Vec<u8>)> = rt.block_on(async {
        let mut futures = Vec::with_capacity(RECORDS);
        for (topic, partition, key, value) in &sent {
            let mut record = FutureRecord::to(topic)
                .partition(*partition)
                .key(key)
                .payload(value);
            let fut = loop {
                match producer.send_result(record) {
                    Ok(f) => break f,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => panic!("enqueueing a record failed: {e}"),
                }
            };
            futures.push((topic.clone(), key.clone(), value.clone(), fut));
        }
        let mut out = HashMap::with_capacity(RECORDS);
        for (topic, key, value, fut) in futures {
            let delivery = fut
                .await
                .expect("delivery future cancelled")
                .unwrap_or_else(|(e, _)| panic!("delivery of {key} failed: {e}"));
            let prev = out.insert((topic, delivery.partition, delivery.offset), (key, value));
            assert!(
                prev.is_none(),
                "two acked records share offset {}",
                delivery.offset
            );
        }
        out
    });
    assert_eq!(delivered.len(), RECORDS);
    let acked_offsets: HashSet<i64> = delivered.keys().map(|k| k.2).collect();
    assert_eq!(
        acked_offsets.len(),
        RECORDS,
        "acked offsets must be unique across topics and partitions"
    );

    // ---- consume -------------------------------------------------------
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "system-tests-unused-group")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        // The watermarks checked below are the partition's (high = last offset + 1): the
        // read_uncommitted view. librdkafka's default, read_committed, ends at the stable
        // frontier F, past a quiet partition's last record.
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for t in TOPICS {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning)
                .expect("tpl");
        }
    }
    consumer.assign(&tpl).expect("assign");

    // Every acked record is read once; read until that many arrived (extra
    // or duplicated records are caught by the checks below).
    let mut consumed: Vec<(Key, String, Vec<u8>)> = Vec::with_capacity(RECORDS);
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumed.len() < RECORDS {
        assert!(
            Instant::now() < deadline,
            "consumed only {} of {RECORDS} records in 120s",
            consumed.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
            Some(Ok(m)) => {
                let key = String::from_utf8(m.key().expect("key").to_vec()).expect("utf8 key");
                consumed.push((
                    (m.topic().to_string(), m.partition(), m.offset()),
                    key,
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
    }

    // ---- check ---------------------------------------------------------
    assert_eq!(consumed.len(), RECORDS, "consumed exactly what was acked");
    let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut seen: HashSet<i64> = HashSet::new();
    for ((topic, partition, offset), _, _) in &consumed {
        if let Some(prev) = last.insert((topic.clone(), *partition), *offset) {
            assert!(
                *offset > prev,
                "{topic}[{partition}]: offset {offset} after {prev}: not strictly increasing"
            );
        }
        assert!(
            seen.insert(*offset),
            "offset {offset} appears twice (offsets are global sequence numbers)"
        );
    }
    assert_eq!(
        last.len(),
        TOPICS.len() * PARTITIONS as usize,
        "every partition has records"
    );
    for (k, key, value) in &consumed {
        let (want_key, want_value) = delivered
            .get(k)
            .unwrap_or_else(|| panic!("consumed record at {k:?} was never acked"));
        assert_eq!(key, want_key, "key at {k:?}");
        assert_eq!(value, want_value, "payload at {k:?}");
    }

    // High watermark = last offset + 1 in every partition.
    for ((topic, partition), last_offset) in &last {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, Duration::from_secs(10))
            .expect("watermarks");
        assert!(
            low >= 0 && low <= *last_offset,
            "{topic}[{partition}] low {low}"
        );
        assert_eq!(high, last_offset + 1, "{topic}[{partition}] high watermark");
    }
    drop(broker);
}
