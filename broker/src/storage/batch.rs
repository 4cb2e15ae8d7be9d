//! Kafka record batch (magic v2) headers: parse, validate and stamp without decoding records.
//!
//! Layout (big-endian): baseOffset i64 @0, batchLength i32 @8, partitionLeaderEpoch i32 @12,
//! magic i8 @16, crc u32 @17 (CRC-32C of bytes 21..end), attributes i16 @21,
//! lastOffsetDelta i32 @23, baseTimestamp i64 @27, maxTimestamp i64 @35, producerId i64 @43,
//! producerEpoch i16 @51, baseSequence i32 @53, recordCount i32 @57, records @61.
//! baseOffset and partitionLeaderEpoch sit outside the CRC, so the broker can stamp the GSN and
//! the Raft term into a batch in place.

/// Bytes before `batchLength` counts: baseOffset + batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed v2 batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes of the header needed to learn a batch's offsets and length.
pub const OFFSETS_PREFIX_LEN: usize = 27;

const MAGIC_V2: i8 = 2;
/// Most records one batch may claim. Kafka clients send far fewer (librdkafka caps
/// batch.num.messages at 1,000,000); the cap keeps decoders from sizing memory by a count.
pub const MAX_RECORDS_PER_BATCH: i32 = 1_000_000;
const CRC_START: usize = 21;
const ATTR_CONTROL: i16 = 1 << 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("record batch length {0} is invalid")]
    BadLength(i32),
    #[error("record batch magic {0} is not supported (only v2)")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: header says {stored:#010x}, data gives {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch has {count} records but lastOffsetDelta {delta}")]
    BadRecordCount { count: i32, delta: i32 },
    #[error("produce request must carry exactly one record batch per partition, found {0}")]
    NotOneBatch(usize),
    #[error("control batches cannot be produced by clients")]
    ControlBatch,
}

/// The offsets-and-length prefix of a stored batch: enough to walk a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Bytes of the whole batch including LOG_OVERHEAD.
    pub total_len: usize,
    pub leader_epoch: i32,
}

/// Reads the offsets prefix; `buf` must hold at least OFFSETS_PREFIX_LEN bytes.
pub fn read_span(buf: &[u8]) -> Result<BatchSpan, BatchError> {
    if buf.len() < OFFSETS_PREFIX_LEN {
        return Err(BatchError::Truncated {
            need: OFFSETS_PREFIX_LEN,
            have: buf.len(),
        });
    }
    let base_offset = i64::from_be_bytes(take8(buf, 0));
    let batch_length = i32::from_be_bytes(take4(buf, 8));
    if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(batch_length));
    }
    let leader_epoch = i32::from_be_bytes(take4(buf, 12));
    let magic = buf[16] as i8;
    if magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    let delta = i32::from_be_bytes(take4(buf, 23));
    Ok(BatchSpan {
        base_offset,
        last_offset: base_offset.saturating_add(i64::from(delta.max(0))),
        total_len: LOG_OVERHEAD + batch_length as usize,
        leader_epoch,
    })
}

/// Everything the broker needs from a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub span: BatchSpan,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub record_count: i32,
}

/// Parses and fully validates one batch at the start of `buf` (length, magic, CRC, counts).
pub fn parse_and_verify(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(buf)?;
    let stored = u32::from_be_bytes(take4(buf, 17));
    let computed = crc32c::crc32c(&buf[CRC_START..header.span.total_len]);
    if stored != computed {
        return Err(BatchError::CrcMismatch { stored, computed });
    }
    if header.record_count < 1
        || header.record_count > MAX_RECORDS_PER_BATCH
        || header.last_offset_delta != header.record_count - 1
    {
        return Err(BatchError::BadRecordCount {
            count: header.record_count,
            delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Parses and validates one batch as it may sit in a log: like `parse_and_verify`, but a
/// compacted batch is accepted too, whose records are fewer than its offset range (the cleaner
/// keeps baseOffset and lastOffsetDelta) or none at all (an empty batch, header only). Used
/// for batches replicated from a leader and for the tail of a segment on recovery.
pub fn verify_stored(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(buf)?;
    let stored = u32::from_be_bytes(take4(buf, 17));
    let computed = crc32c::crc32c(&buf[CRC_START..header.span.total_len]);
    if stored != computed {
        return Err(BatchError::CrcMismatch { stored, computed });
    }
    if header.record_count < 0
        || header.record_count > MAX_RECORDS_PER_BATCH
        || header.last_offset_delta < header.record_count - 1
        || header.last_offset_delta < 0
    {
        return Err(BatchError::BadRecordCount {
            count: header.record_count,
            delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Reads the header of one whole batch at the start of `buf` without checking its CRC or
/// counts: for a batch this broker already verified (the produce path checks every batch
/// before it reaches Raft, so the leader's log append need not hash it again).
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Truncated {
            need: HEADER_LEN,
            have: buf.len(),
        });
    }
    let span = read_span(buf)?;
    if buf.len() < span.total_len {
        return Err(BatchError::Truncated {
            need: span.total_len,
            have: buf.len(),
        });
    }
    Ok(BatchHeader {
        span,
        attributes: i16::from_be_bytes([buf[21], buf[22]]),
        last_offset_delta: i32::from_be_bytes(take4(buf, 23)),
        base_timestamp: i64::from_be_bytes(take8(buf, 27)),
        max_timestamp: i64::from_be_bytes(take8(buf, 35)),
        producer_id: i64::from_be_bytes(take8(buf, 43)),
        record_count: i32::from_be_bytes(take4(buf, 57)),
    })
}

/// Validates the `records` field of one partition of a Produce request: exactly one v2 batch,
/// intact, not a control batch. Returns its header.
pub fn verify_produce_records(records: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_and_verify(records)?;
    if header.span.total_len != records.len() {
        let mut count = 1;
        let mut rest = &records[header.span.total_len..];
        while let Ok(span) = read_span(rest) {
            count += 1;
            rest = rest.get(span.total_len..).unwrap_or(&[]);
        }
        return Err(BatchError::NotOneBatch(count.max(2)));
    }
    if header.attributes & ATTR_CONTROL != 0 {
        return Err(BatchError::ControlBatch);
    }
    Ok(header)
}

/// Writes the assigned base offset (GSN) and leader epoch (Raft term) into a batch in place.
/// Both fields are outside the CRC, so the batch stays valid.
pub fn stamp(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    if batch.len() >= HEADER_LEN {
        batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
        batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    }
}

/// The timestamp-type attribute bit: set means LogAppendTime.
const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;

/// message.timestamp.type=LogAppendTime, as Kafka does it for v2 batches: sets the
/// timestamp-type bit and the batch's max timestamp to the broker's clock and recomputes the
/// CRC (both fields are inside it). Consumers then report every record of the batch with that
/// timestamp. `batch` must be exactly one whole batch.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    if batch.len() < HEADER_LEN {
        return;
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]) | ATTR_LOG_APPEND_TIME;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Attribute bit of a transactional batch.
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;

/// The idempotence fields of a batch header (producerId @43, producerEpoch @51,
/// baseSequence @53) with what is needed to remember the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub last_offset_delta: i32,
    pub attributes: i16,
    pub max_timestamp: i64,
}

/// Reads the producer fields of the batch at the start of `buf`; None when shorter than a
/// header.
pub fn producer_fields(buf: &[u8]) -> Option<ProducerFields> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some(ProducerFields {
        producer_id: i64::from_be_bytes(take8(buf, 43)),
        producer_epoch: i16::from_be_bytes([buf[51], buf[52]]),
        base_sequence: i32::from_be_bytes(take4(buf, 53)),
        last_offset_delta: i32::from_be_bytes(take4(buf, 23)),
        attributes: i16::from_be_bytes([buf[21], buf[22]]),
        max_timestamp: i64::from_be_bytes(take8(buf, 35)),
    })
}

/// Writes the fields every header needs into a 61-byte header `out` whose first 8 bytes
/// (baseOffset) are set, and recomputes its length and CRC over whatever follows the header.
#[allow(clippy::too_many_arguments)]
fn finish_header(
    out: &mut [u8],
    leader_epoch: i32,
    attributes: i16,
    last_offset_delta: i32,
    timestamp: i64,
    record_count: i32,
) {
    let len = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    out[16] = MAGIC_V2 as u8;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
    out[27..35].copy_from_slice(&timestamp.to_be_bytes());
    out[35..43].copy_from_slice(&timestamp.to_be_bytes());
    // No producer: producerId -1, producerEpoch -1, baseSequence -1.
    out[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    out[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    out[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    out[57..61].copy_from_slice(&record_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// `batch` without its records: an empty batch (Kafka's empty-batch header, as the cleaner
/// leaves) with the same offsets and max timestamp and no producer, so neither readers nor
/// the idempotent-producer state see anything of it. What a log stores in place of a batch
/// whose numbers were taken in another Raft term than the entry's (`frontier::stale_reservation`).
pub fn voided(batch: &[u8]) -> Result<Vec<u8>, BatchError> {
    let header = parse_header(batch)?;
    let mut out = batch[..HEADER_LEN].to_vec();
    finish_header(
        &mut out,
        header.span.leader_epoch,
        0,
        header.last_offset_delta,
        header.max_timestamp,
        0,
    );
    Ok(out)
}

/// Control batch attribute bits: transactional + control.
const ATTR_MARKER: i16 = ATTR_TRANSACTIONAL | ATTR_CONTROL;

/// A transaction COMMIT marker covering offsets `base..=last`, its one control record at
/// `last`. read_committed fetches end with one when nothing else lies below the last stable
/// offset: consumers skip control records but move their position past `last`, so a quiet
/// partition's position reaches the stable offset. No producer (-1) and no transaction
/// opened it, so no client has anything to commit.
pub fn commit_marker(base: i64, last: i64, leader_epoch: i32, timestamp: i64) -> Vec<u8> {
    let delta = i32::try_from(last.saturating_sub(base).max(0)).unwrap_or(i32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + 24);
    out.extend_from_slice(&base.to_be_bytes());
    out.resize(HEADER_LEN, 0);
    // Record: attributes, timestampDelta 0, offsetDelta, key (version 0, type 1 = COMMIT),
    // value (version 0, coordinator epoch 0), no headers.
    let mut record = vec![0u8, 0u8];
    put_varint(&mut record, i64::from(delta));
    put_varint(&mut record, 4);
    record.extend_from_slice(&[0, 0, 0, 1]);
    put_varint(&mut record, 6);
    record.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    put_varint(&mut record, 0);
    put_varint(&mut out, record.len() as i64);
    out.extend_from_slice(&record);
    finish_header(&mut out, leader_epoch, ATTR_MARKER, delta, timestamp, 1);
    out
}

/// Appends a zigzag varint (Kafka's record encoding).
fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take4(buf: &[u8], at: usize) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&buf[at..at + 4]);
    out
}

fn take8(buf: &[u8], at: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&buf[at..at + 8]);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn log_append_time_sets_type_and_max_timestamp_and_keeps_the_crc_valid() {
        let mut b = make_batch(0, 3, 1_000);
        set_log_append_time(&mut b, 1_700_000_000_000);
        let h = parse_and_verify(&b).expect("CRC recomputed");
        assert_eq!(h.attributes & ATTR_LOG_APPEND_TIME, ATTR_LOG_APPEND_TIME);
        assert_eq!(h.max_timestamp, 1_700_000_000_000);
        assert_eq!(h.base_timestamp, 1_000, "Kafka leaves the base timestamp");
        assert_eq!(h.record_count, 3);
    }

    /// Builds a valid v2 batch of `count` minimal records (not compressed) by hand, so these
    /// tests pin the byte layout independently of any codec crate.
    pub fn make_batch(base_offset: i64, count: i32, timestamp: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..count {
            // length, attributes, timestampDelta, offsetDelta, keyLen(-1), valueLen, value, headers
            let body = [0u8, 0, (i as u8) << 1, 1, 2, b'v', 0];
            records.push((body.len() as u8) << 1);
            records.extend_from_slice(&body);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&base_offset.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // length, patched below
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(count - 1).to_be_bytes());
        b.extend_from_slice(&timestamp.to_be_bytes());
        b.extend_from_slice(&timestamp.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&records);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn parses_a_hand_built_batch() {
        let b = make_batch(0, 3, 1_700_000_000_000);
        let h = parse_and_verify(&b).expect("valid");
        assert_eq!(h.record_count, 3);
        assert_eq!(h.span.total_len, b.len());
        assert_eq!(h.span.last_offset, 2);
        assert_eq!(h.max_timestamp, 1_700_000_000_000);
    }

    #[test]
    fn stamping_keeps_crc_valid_and_moves_offsets() {
        let mut b = make_batch(0, 3, 5);
        stamp(&mut b, 1_000, 7);
        let h = parse_and_verify(&b).expect("still valid after stamping");
        assert_eq!(h.span.base_offset, 1_000);
        assert_eq!(h.span.last_offset, 1_002);
        assert_eq!(h.span.leader_epoch, 7);
        assert_eq!(&b[0..8], &1_000i64.to_be_bytes());
    }

    #[test]
    fn corrupt_payload_fails_crc() {
        let mut b = make_batch(0, 2, 5);
        let last = b.len() - 2;
        b[last] ^= 0xff;
        assert!(matches!(
            parse_and_verify(&b),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn truncated_and_bad_lengths_are_errors_not_panics() {
        let b = make_batch(0, 2, 5);
        for cut in 0..b.len() {
            assert!(
                parse_and_verify(&b[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
        let mut neg = b.clone();
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(read_span(&neg), Err(BatchError::BadLength(-5)));
    }

    #[test]
    fn old_magic_is_rejected() {
        let mut b = make_batch(0, 1, 5);
        b[16] = 1;
        assert_eq!(read_span(&b), Err(BatchError::UnsupportedMagic(1)));
    }

    #[test]
    fn produce_needs_exactly_one_batch() {
        let mut two = make_batch(0, 1, 5);
        two.extend(make_batch(0, 1, 5));
        assert_eq!(
            verify_produce_records(&two),
            Err(BatchError::NotOneBatch(2))
        );
        assert!(verify_produce_records(&make_batch(0, 1, 5)).is_ok());
    }

    #[test]
    fn count_must_match_delta() {
        let mut b = make_batch(0, 2, 5);
        b[23..27].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            parse_and_verify(&b),
            Err(BatchError::BadRecordCount { .. })
        ));
    }

    #[test]
    fn a_voided_batch_keeps_its_offsets_and_loses_records_and_producer() {
        let mut b = make_batch(100, 3, 5_000);
        b[43..51].copy_from_slice(&7i64.to_be_bytes());
        stamp(&mut b, 100, 4);
        let v = voided(&b).expect("void");
        assert_eq!(v.len(), HEADER_LEN);
        let h = verify_stored(&v).expect("a voided batch is a valid stored batch");
        assert_eq!((h.span.base_offset, h.span.last_offset), (100, 102));
        assert_eq!(h.record_count, 0);
        assert_eq!(h.span.leader_epoch, 4);
        assert_eq!(h.max_timestamp, 5_000);
        assert_eq!(producer_fields(&v).map(|f| f.producer_id), Some(-1));
    }

    #[test]
    fn a_commit_marker_is_one_control_record_at_its_last_offset() {
        let m = commit_marker(1_000, 1_499, 3, 42);
        let h = verify_stored(&m).expect("valid stored batch");
        assert_eq!((h.span.base_offset, h.span.last_offset), (1_000, 1_499));
        assert_eq!(h.record_count, 1);
        assert_eq!(
            h.attributes & (ATTR_CONTROL | ATTR_TRANSACTIONAL),
            ATTR_MARKER
        );
        let mut buf = bytes::Bytes::from(m);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).expect("decodes");
        assert_eq!(set.records.len(), 1);
        let r = &set.records[0];
        assert!(r.control && r.transactional);
        assert_eq!(r.offset, 1_499);
        assert_eq!(
            r.key.as_deref(),
            Some(&[0u8, 0, 0, 1][..]),
            "COMMIT, version 0"
        );
        assert_eq!(r.producer_id, -1);
    }
}
