//! Record-level validation of produced batches, as Kafka's log validator does: the records
//! inside a batch must parse, their offset deltas must run 0, 1, 2, … and their count must
//! match the header. Compressed batches are decompressed (into a bounded buffer) for the
//! check; the stored bytes stay exactly what the producer sent.

use std::borrow::Cow;
use std::io::Read;

use super::batch::{BatchHeader, HEADER_LEN};

/// Largest decompressed size accepted for one batch; a bigger one is treated as corrupt
/// (a compression bomb would otherwise make the broker allocate what the input asks for).
pub const MAX_DECOMPRESSED: usize = 128 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("compression codec {0} is unknown")]
    UnknownCodec(i16),
    #[error("compressed records do not decompress: {0}")]
    Decompress(String),
    #[error("records decompress to more than {MAX_DECOMPRESSED} bytes")]
    TooLarge,
    #[error("record {index} is malformed: {reason}")]
    Malformed { index: i32, reason: &'static str },
    #[error("record {index} has offset delta {delta}, expected {index}")]
    OffsetDelta { index: i32, delta: i64 },
    #[error("{extra} bytes follow the last record")]
    TrailingBytes { extra: usize },
    #[error("record {index} has no key; a compacted topic cannot accept records without a key")]
    MissingKey { index: i32 },
}

/// Checks every record of `batch` (already CRC-verified, header parsed into `header`).
/// With `require_keys` (a compacted topic) a record without a key is refused, as Kafka does.
pub fn verify(batch: &[u8], header: &BatchHeader, require_keys: bool) -> Result<(), RecordsError> {
    walk(
        &decompressed(batch, header)?,
        header.record_count,
        require_keys,
    )
}

/// The records section of `batch`, decompressed with the codec its attributes name.
pub fn decompressed<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Cow<'a, [u8]>, RecordsError> {
    let payload = batch.get(HEADER_LEN..header.span.total_len).unwrap_or(&[]);
    let codec = header.attributes & 0x07;
    Ok(match codec {
        0 => Cow::Borrowed(payload),
        1 => Cow::Owned(bounded(flate2::read::GzDecoder::new(payload))?),
        2 => Cow::Owned(snappy(payload)?),
        3 => {
            let decoder =
                lz4::Decoder::new(payload).map_err(|e| RecordsError::Decompress(e.to_string()))?;
            Cow::Owned(bounded(decoder)?)
        }
        4 => {
            let decoder = zstd::stream::read::Decoder::new(payload)
                .map_err(|e| RecordsError::Decompress(e.to_string()))?;
            Cow::Owned(bounded(decoder)?)
        }
        other => return Err(RecordsError::UnknownCodec(other)),
    })
}

fn bounded(reader: impl Read) -> Result<Vec<u8>, RecordsError> {
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RecordsError::Decompress(e.to_string()))?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(RecordsError::TooLarge);
    }
    Ok(out)
}

/// Kafka producers send either a raw snappy block or xerial framing (a 16-byte header, then
/// blocks each prefixed by a 4-byte big-endian length).
fn snappy(payload: &[u8]) -> Result<Vec<u8>, RecordsError> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    if payload.starts_with(XERIAL) {
        let mut out = Vec::new();
        let mut rest = payload.get(16..).unwrap_or(&[]);
        while !rest.is_empty() {
            let len_bytes: [u8; 4] = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| RecordsError::Decompress("truncated xerial chunk length".into()))?;
            let len = u32::from_be_bytes(len_bytes) as usize;
            let block = rest
                .get(4..4 + len)
                .ok_or_else(|| RecordsError::Decompress("truncated xerial chunk".into()))?;
            out.extend(raw_snappy(
                block,
                MAX_DECOMPRESSED.saturating_sub(out.len()),
            )?);
            rest = &rest[4 + len..];
        }
        Ok(out)
    } else {
        raw_snappy(payload, MAX_DECOMPRESSED)
    }
}

fn raw_snappy(block: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    let len =
        snap::raw::decompress_len(block).map_err(|e| RecordsError::Decompress(e.to_string()))?;
    if len > limit {
        return Err(RecordsError::TooLarge);
    }
    snap::raw::Decoder::new()
        .decompress_vec(block)
        .map_err(|e| RecordsError::Decompress(e.to_string()))
}

/// Walks `count` records: length varint, then attributes, timestamp delta (varlong) and the
/// offset delta (varint), which must equal the record's index; the record must fit its length.
fn walk(mut data: &[u8], count: i32, require_keys: bool) -> Result<(), RecordsError> {
    for index in 0..count {
        let malformed = |reason| RecordsError::Malformed { index, reason };
        let len = read_varint(&mut data).ok_or(malformed("bad length"))?;
        let len = usize::try_from(len).map_err(|_| malformed("negative length"))?;
        let mut record = data
            .get(..len)
            .ok_or(malformed("length past the end of the batch"))?;
        data = &data[len..];
        record = record.get(1..).ok_or(malformed("empty record"))?; // attributes
        read_varint(&mut record).ok_or(malformed("bad timestamp delta"))?;
        let delta = read_varint(&mut record).ok_or(malformed("bad offset delta"))?;
        if delta != i64::from(index) {
            return Err(RecordsError::OffsetDelta { index, delta });
        }
        if require_keys && read_varint(&mut record).ok_or(malformed("bad key length"))? < 0 {
            return Err(RecordsError::MissingKey { index });
        }
    }
    if !data.is_empty() {
        return Err(RecordsError::TrailingBytes { extra: data.len() });
    }
    Ok(())
}

/// Zig-zag varint (up to 64 bits) as Kafka records use; None when truncated or too long.
pub(crate) fn read_varint(data: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let (&byte, rest) = data.split_first()?;
        *data = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{parse_and_verify, tests::make_batch};

    fn recrc(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn hand_built_batch_is_valid() {
        let b = make_batch(0, 5, 1);
        let h = parse_and_verify(&b).expect("valid");
        assert_eq!(verify(&b, &h, false), Ok(()));
    }

    #[test]
    fn keyless_records_are_refused_only_when_keys_are_required() {
        let b = make_batch(0, 3, 1); // its records have a null key
        let h = parse_and_verify(&b).expect("valid");
        assert_eq!(verify(&b, &h, false), Ok(()));
        assert_eq!(
            verify(&b, &h, true),
            Err(RecordsError::MissingKey { index: 0 })
        );
    }

    #[test]
    fn backwards_offset_deltas_are_rejected() {
        let mut b = make_batch(0, 3, 1);
        // Record 0 starts at 61: length, attributes, timestamp delta, then offset delta.
        b[61 + 3] = 4; // zig-zag 2
        recrc(&mut b);
        let h = parse_and_verify(&b).expect("crc fixed");
        assert!(matches!(
            verify(&b, &h, false),
            Err(RecordsError::OffsetDelta { index: 0, delta: 2 })
        ));
    }

    #[test]
    fn oversized_record_length_is_rejected() {
        let mut b = make_batch(0, 1, 1);
        b[61] = 0xfe; // a length varint that runs past the batch
        recrc(&mut b);
        let h = parse_and_verify(&b).expect("crc fixed");
        assert!(verify(&b, &h, false).is_err());
    }

    #[test]
    fn unknown_codec_and_bad_gzip_are_rejected() {
        let mut b = make_batch(0, 1, 1);
        b[22] = 7;
        recrc(&mut b);
        let h = parse_and_verify(&b).expect("crc fixed");
        assert_eq!(verify(&b, &h, false), Err(RecordsError::UnknownCodec(7)));
        b[22] = 1;
        recrc(&mut b);
        let h = parse_and_verify(&b).expect("crc fixed");
        assert!(matches!(
            verify(&b, &h, false),
            Err(RecordsError::Decompress(_))
        ));
    }

    #[test]
    fn every_codec_round_trips() {
        let plain = make_batch(0, 4, 1);
        let records = &plain[HEADER_LEN..];
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, records).expect("gzip");
            e.finish().expect("gzip")
        };
        let sn = snap::raw::Encoder::new()
            .compress_vec(records)
            .expect("snappy");
        let mut xerial = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        xerial.extend_from_slice(&(sn.len() as u32).to_be_bytes());
        xerial.extend_from_slice(&sn);
        let lz = {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new()).expect("lz4");
            std::io::Write::write_all(&mut e, records).expect("lz4");
            let (out, r) = e.finish();
            r.expect("lz4");
            out
        };
        let zs = zstd::encode_all(records, 1).expect("zstd");
        for (codec, payload) in [(1i16, gz), (2, sn), (2, xerial), (3, lz), (4, zs)] {
            let mut b = plain[..HEADER_LEN].to_vec();
            b.extend_from_slice(&payload);
            let len = (b.len() - 12) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            b[21..23].copy_from_slice(&codec.to_be_bytes());
            recrc(&mut b);
            let h = parse_and_verify(&b).expect("valid header");
            assert_eq!(verify(&b, &h, false), Ok(()), "codec {codec}");
        }
    }
}
