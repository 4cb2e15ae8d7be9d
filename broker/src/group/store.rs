//! What the group coordinator keeps in `__consumer_offsets`, and the log it keeps it in.
//!
//! Records are keyed by group as Kafka's are, so compaction keeps the latest of each:
//! an offset commit is keyed by (group, topic, partition), a group's metadata by the group.
//! Keys and values use Kafka's own layouts (offset key v1, group key v2, offset value v3,
//! group metadata value v3; values v0–v3 are read back), so tools that decode Kafka's
//! `__consumer_offsets` read ours too. A tombstone (null value) deletes a key.
//!
//! [`GroupLog`] is all the coordinator needs from a partition of that topic: append a batch
//! (acknowledged once replicated, acks=all) and read batches from an offset. The broker
//! implements it over `Partition`; tests implement it in memory.

use std::future::Future;
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};

use crate::storage::batch;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest batch the coordinator writes in one append (a group with huge assignments is
/// refused rather than becoming a Raft entry too large to replicate).
pub const MAX_WRITE_BYTES: usize = 8 << 20;

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("this broker no longer leads the partition")]
    NotLeader,
    #[error("the partition cannot take writes now: {0}")]
    Unavailable(String),
    #[error("the write was not acknowledged in time")]
    Timeout,
    #[error("the write of {0} bytes is larger than {MAX_WRITE_BYTES}")]
    TooLarge(usize),
    #[error("reading the log failed: {0}")]
    Read(String),
}

/// Resolves with the log offset of the appended batch once it is durable (acks=all).
pub type Ack = BoxFuture<'static, Result<i64, LogError>>;

/// One partition of the offsets topic, as the coordinator uses it.
pub trait GroupLog: Send + Sync + 'static {
    /// Queues `batch` (an unstamped magic-v2 batch of `records` records) for appending.
    /// Batches are appended in the order of the calls that returned `Ok`.
    fn append(&self, batch: BytesMut, records: u64) -> BoxFuture<'_, Result<Ack, LogError>>;
    /// Whole committed batches from `offset` (or the next batch after it), about
    /// `max_bytes` of them; `None` when nothing is committed from there on.
    fn read(&self, offset: i64, max_bytes: u64) -> Result<Option<Bytes>, LogError>;
    /// Offset after the last committed batch.
    fn high_watermark(&self) -> i64;
    /// Offset after the last batch in the log, committed or not.
    fn end_offset(&self) -> i64;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's selected protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<MemberValue>,
}

/// One record of the offsets topic. `None` values are tombstones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
    Group {
        group: String,
        value: Option<GroupValue>,
    },
}

impl Record {
    pub fn group(&self) -> &str {
        match self {
            Record::Offset { group, .. } | Record::Group { group, .. } => group,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated in {0}")]
    Truncated(&'static str),
    #[error("negative length in {0}")]
    BadLength(&'static str),
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
    #[error("unknown key version {0}")]
    KeyVersion(i16),
    #[error("unknown value version {0}")]
    ValueVersion(i16),
    #[error("record has no key")]
    NoKey,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} of {len} bytes does not fit a Kafka string")]
pub struct EncodeError {
    field: &'static str,
    len: usize,
}

// ---- keys and values ----------------------------------------------------------------------

fn put_str(out: &mut BytesMut, field: &'static str, s: &str) -> Result<(), EncodeError> {
    let len = i16::try_from(s.len()).map_err(|_| EncodeError {
        field,
        len: s.len(),
    })?;
    out.put_i16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_opt_str(
    out: &mut BytesMut,
    field: &'static str,
    s: Option<&str>,
) -> Result<(), EncodeError> {
    match s {
        Some(s) => put_str(out, field, s),
        None => {
            out.put_i16(-1);
            Ok(())
        }
    }
}

fn put_bytes(out: &mut BytesMut, field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
    let len = i32::try_from(b.len()).map_err(|_| EncodeError {
        field,
        len: b.len(),
    })?;
    out.put_i32(len);
    out.put_slice(b);
    Ok(())
}

/// Encodes a record's key and value (None: tombstone).
pub fn encode(record: &Record) -> Result<(Bytes, Option<Bytes>), EncodeError> {
    let mut key = BytesMut::new();
    match record {
        Record::Offset {
            group,
            topic,
            partition,
            value,
        } => {
            key.put_i16(OFFSET_KEY_VERSION);
            put_str(&mut key, "group", group)?;
            put_str(&mut key, "topic", topic)?;
            key.put_i32(*partition);
            let value = match value {
                None => None,
                Some(v) => {
                    let mut out = BytesMut::new();
                    out.put_i16(OFFSET_VALUE_VERSION);
                    out.put_i64(v.offset);
                    out.put_i32(v.leader_epoch);
                    put_str(&mut out, "metadata", &v.metadata)?;
                    out.put_i64(v.commit_timestamp);
                    Some(out.freeze())
                }
            };
            Ok((key.freeze(), value))
        }
        Record::Group { group, value } => {
            key.put_i16(GROUP_KEY_VERSION);
            put_str(&mut key, "group", group)?;
            let value = match value {
                None => None,
                Some(v) => Some(encode_group_value(v)?),
            };
            Ok((key.freeze(), value))
        }
    }
}

fn encode_group_value(v: &GroupValue) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    out.put_i16(GROUP_VALUE_VERSION);
    put_str(&mut out, "protocol_type", &v.protocol_type)?;
    out.put_i32(v.generation);
    put_opt_str(&mut out, "protocol", v.protocol.as_deref())?;
    put_opt_str(&mut out, "leader", v.leader.as_deref())?;
    out.put_i64(v.state_timestamp);
    let count = i32::try_from(v.members.len()).map_err(|_| EncodeError {
        field: "members",
        len: v.members.len(),
    })?;
    out.put_i32(count);
    for m in &v.members {
        put_str(&mut out, "member_id", &m.member_id)?;
        put_opt_str(&mut out, "group_instance_id", m.instance_id.as_deref())?;
        put_str(&mut out, "client_id", &m.client_id)?;
        put_str(&mut out, "client_host", &m.client_host)?;
        out.put_i32(m.rebalance_timeout_ms);
        out.put_i32(m.session_timeout_ms);
        put_bytes(&mut out, "subscription", &m.subscription)?;
        put_bytes(&mut out, "assignment", &m.assignment)?;
    }
    Ok(out.freeze())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or(DecodeError::Truncated(field))?;
        self.0 = tail;
        Ok(head)
    }
    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn opt_str(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        let len = self.i16(field)?;
        if len < 0 {
            return Ok(None);
        }
        let raw = self.take(len as usize, field)?;
        String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| DecodeError::Utf8(field))
    }
    fn str(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.opt_str(field)?.ok_or(DecodeError::BadLength(field))
    }
    fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.i32(field)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::BadLength(field))?;
        Ok(Bytes::copy_from_slice(self.take(len, field)?))
    }
}

/// Decodes one record of the offsets topic.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Record, DecodeError> {
    let mut k = Reader(key.ok_or(DecodeError::NoKey)?);
    match k.i16("key version")? {
        0 | 1 => {
            let group = k.str("group")?;
            let topic = k.str("topic")?;
            let partition = k.i32("partition")?;
            let value = value.map(decode_offset_value).transpose()?;
            Ok(Record::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        2 => {
            let group = k.str("group")?;
            let value = value.map(decode_group_value).transpose()?;
            Ok(Record::Group { group, value })
        }
        v => Err(DecodeError::KeyVersion(v)),
    }
}

fn decode_offset_value(raw: &[u8]) -> Result<OffsetValue, DecodeError> {
    let mut r = Reader(raw);
    let version = r.i16("offset value version")?;
    if !(0..=3).contains(&version) {
        return Err(DecodeError::ValueVersion(version));
    }
    let offset = r.i64("offset")?;
    let leader_epoch = if version >= 3 {
        r.i32("leader_epoch")?
    } else {
        -1
    };
    let metadata = r.str("metadata")?;
    let commit_timestamp = r.i64("commit_timestamp")?;
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
    })
}

fn decode_group_value(raw: &[u8]) -> Result<GroupValue, DecodeError> {
    let mut r = Reader(raw);
    let version = r.i16("group value version")?;
    if !(0..=3).contains(&version) {
        return Err(DecodeError::ValueVersion(version));
    }
    let protocol_type = r.str("protocol_type")?;
    let generation = r.i32("generation")?;
    let protocol = r.opt_str("protocol")?;
    let leader = r.opt_str("leader")?;
    let state_timestamp = if version >= 2 {
        r.i64("current_state_timestamp")?
    } else {
        -1
    };
    let count = r.i32("members")?;
    let count = usize::try_from(count).map_err(|_| DecodeError::BadLength("members"))?;
    // Each member takes at least 24 bytes: never trust a count beyond what is there.
    if count > r.0.len() / 24 + 1 {
        return Err(DecodeError::Truncated("members"));
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let member_id = r.str("member_id")?;
        let instance_id = if version >= 3 {
            r.opt_str("group_instance_id")?
        } else {
            None
        };
        let client_id = r.str("client_id")?;
        let client_host = r.str("client_host")?;
        let rebalance_timeout_ms = if version >= 1 {
            r.i32("rebalance_timeout")?
        } else {
            -1
        };
        let session_timeout_ms = r.i32("session_timeout")?;
        let rebalance_timeout_ms = if rebalance_timeout_ms < 0 {
            session_timeout_ms
        } else {
            rebalance_timeout_ms
        };
        members.push(MemberValue {
            member_id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription: r.bytes("subscription")?,
            assignment: r.bytes("assignment")?,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

// ---- record batches -----------------------------------------------------------------------

fn put_varint(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn get_varint(buf: &mut &[u8]) -> Option<i64> {
    let mut z = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        z |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

/// Builds one uncompressed magic-v2 batch holding `records` (base offset 0: the partition
/// stamps the real one). Returns the batch and its record count.
pub fn encode_batch(records: &[Record], timestamp: i64) -> Result<(BytesMut, u64), LogError> {
    let mut body = BytesMut::new();
    let too_large = |_: EncodeError| LogError::TooLarge(usize::MAX);
    for (i, record) in records.iter().enumerate() {
        let (key, value) = encode(record).map_err(too_large)?;
        let mut rec =
            BytesMut::with_capacity(key.len() + value.as_ref().map_or(0, Bytes::len) + 16);
        rec.put_i8(0); // attributes
        put_varint(&mut rec, 0); // timestamp delta
        put_varint(&mut rec, i as i64); // offset delta
        put_varint(&mut rec, key.len() as i64);
        rec.put_slice(&key);
        match &value {
            Some(v) => {
                put_varint(&mut rec, v.len() as i64);
                rec.put_slice(v);
            }
            None => put_varint(&mut rec, -1),
        }
        put_varint(&mut rec, 0); // headers
        put_varint(&mut body, rec.len() as i64);
        body.put_slice(&rec);
        if body.len() > MAX_WRITE_BYTES {
            return Err(LogError::TooLarge(body.len()));
        }
    }
    let count = i32::try_from(records.len()).map_err(|_| LogError::TooLarge(records.len()))?;
    if count == 0 {
        return Err(LogError::Unavailable("empty write".into()));
    }
    let mut b = BytesMut::with_capacity(batch::HEADER_LEN + body.len());
    b.put_i64(0); // base offset, stamped by the partition
    b.put_i32(0); // batch length, patched below
    b.put_i32(-1); // partition leader epoch, stamped
    b.put_i8(2); // magic
    b.put_u32(0); // crc, patched below
    b.put_i16(0); // attributes: no compression, not transactional
    b.put_i32(count - 1);
    b.put_i64(timestamp);
    b.put_i64(timestamp);
    b.put_i64(-1); // producer id
    b.put_i16(-1); // producer epoch
    b.put_i32(-1); // base sequence
    b.put_i32(count);
    b.put_slice(&body);
    let len =
        i32::try_from(b.len() - batch::LOG_OVERHEAD).map_err(|_| LogError::TooLarge(b.len()))?;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok((b, count as u64))
}

/// One record read back from the log: its offset and decoded content (or why it could not
/// be decoded).
pub type ReadRecord = (i64, Result<Record, DecodeError>);

/// Walks whole batches in `bytes` and calls `f` for every record. Returns the offset after
/// the last batch walked (where the next read starts), or `None` if no whole batch was found.
pub fn for_each_record(bytes: &[u8], mut f: impl FnMut(ReadRecord)) -> Option<i64> {
    let mut rest = bytes;
    let mut next = None;
    while let Ok(header) = batch::parse_header(rest) {
        let total = header.span.total_len;
        let this = &rest[..total];
        rest = &rest[total..];
        next = Some(header.span.last_offset + 1);
        let control = header.attributes & (1 << 5) != 0;
        let codec = header.attributes & 0x07;
        if control {
            continue;
        }
        if codec != 0 {
            tracing::warn!(
                offset = header.span.base_offset,
                "skipping a compressed batch in the offsets topic (the coordinator writes none)"
            );
            continue;
        }
        let mut records = &this[batch::HEADER_LEN..];
        for _ in 0..header.record_count.max(0) {
            match parse_record(&mut records) {
                Some((delta, key, value)) => {
                    let offset = header.span.base_offset.saturating_add(delta);
                    f((offset, decode(key, value)));
                }
                None => {
                    f((
                        header.span.base_offset,
                        Err(DecodeError::Truncated("record")),
                    ));
                    break;
                }
            }
        }
    }
    next
}

type RawRecord<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>);

fn parse_record<'a>(buf: &mut &'a [u8]) -> Option<RawRecord<'a>> {
    let len = usize::try_from(get_varint(buf)?).ok()?;
    let (mut rec, rest) = buf.split_at_checked(len)?;
    *buf = rest;
    let (_attributes, r) = rec.split_first()?;
    rec = r;
    get_varint(&mut rec)?; // timestamp delta
    let delta = get_varint(&mut rec)?;
    let field = |rec: &mut &'a [u8]| -> Option<Option<&'a [u8]>> {
        let len = get_varint(rec)?;
        if len < 0 {
            return Some(None);
        }
        let (v, r) = rec.split_at_checked(usize::try_from(len).ok()?)?;
        *rec = r;
        Some(Some(v))
    };
    let key = field(&mut rec)?;
    let value = field(&mut rec)?;
    Some((delta, key, value))
}

/// Kafka's partition for a group: Java's `String.hashCode` of the id, made non-negative,
/// modulo the partition count (so a group lands where Kafka would put it).
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    (h & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(group: &str, p: i32, value: Option<i64>) -> Record {
        Record::Offset {
            group: group.into(),
            topic: "orders".into(),
            partition: p,
            value: value.map(|o| OffsetValue {
                offset: o,
                leader_epoch: 3,
                metadata: "meta-ü".into(),
                commit_timestamp: 1_700_000_000_000,
            }),
        }
    }

    fn group_record() -> Record {
        Record::Group {
            group: "g".into(),
            value: Some(GroupValue {
                protocol_type: "consumer".into(),
                generation: 7,
                protocol: Some("range".into()),
                leader: Some("c-1".into()),
                state_timestamp: 5,
                members: vec![MemberValue {
                    member_id: "c-1".into(),
                    instance_id: Some("i-1".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 10_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                }],
            }),
        }
    }

    #[test]
    fn records_round_trip_through_a_batch() {
        let records = vec![
            offset("g", 0, Some(42)),
            offset("g", 1, None),
            group_record(),
            Record::Group {
                group: "gone".into(),
                value: None,
            },
        ];
        let (mut b, n) = encode_batch(&records, 99).expect("encode");
        assert_eq!(n, 4);
        batch::stamp(&mut b, 1000, 2);
        let h = batch::parse_and_verify(&b).expect("valid batch");
        assert_eq!(h.record_count, 4);
        crate::storage::records::verify(&b, &h, true).expect("records walk");
        let mut seen = Vec::new();
        let next = for_each_record(&b, |(o, r)| seen.push((o, r.expect("decodes"))));
        assert_eq!(next, Some(1004));
        let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![1000, 1001, 1002, 1003]);
        let back: Vec<Record> = seen.into_iter().map(|(_, r)| r).collect();
        assert_eq!(back, records);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for raw in [&[][..], &[0, 1], &[0, 9, 0, 0], &[0, 2, 0x7f, 0xff, b'a']] {
            assert!(decode(Some(raw), None).is_err());
        }
        // A group value claiming a billion members in a few bytes.
        let mut v = vec![0, 3, 0, 1, b'c', 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&0x3fff_ffffi32.to_be_bytes());
        assert!(decode(Some(&[0, 2, 0, 1, b'g']), Some(&v)).is_err());
        let mut seed = 0x1234_5678_9abc_def0u64;
        let (good, _) = encode_batch(&[group_record(), offset("g", 3, Some(1))], 1).expect("ok");
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = good.to_vec();
            let at = (seed as usize) % b.len();
            b[at] = (seed >> 32) as u8;
            for_each_record(&b, |_| {});
        }
    }

    #[test]
    fn partitions_match_kafka() {
        // Java's String.hashCode over UTF-16 units, masked to non-negative as Kafka does.
        let mut h: i32 = 0;
        for c in "my-group".chars() {
            h = h.wrapping_mul(31).wrapping_add(c as i32);
        }
        assert_eq!(partition_for("my-group", 50), (h & 0x7fff_ffff) % 50);
        // Pinned independently (Python, same formula): "my-group".hashCode() = -1906497762.
        assert_eq!(partition_for("my-group", 50), 36);
        assert_eq!(partition_for("", 16), 0);
        assert!((0..16).contains(&partition_for("ümlaut-group", 16)));
    }
}
