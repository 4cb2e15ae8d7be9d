//! The broker-to-broker Raft transport's messages and frames.
//!
//! A frame is `[u32 length][u64 request id][bincode body]`, big-endian prefix. Requests name
//! the Raft group they are for, so one connection per peer carries the metadata group and
//! every partition group. Bodies are bincode (binary, no JSON on the data path); record
//! batches inside AppendEntries travel as raw bytes.

use bincode::Options;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raft_support::{PreVoteRequest, PreVoteResponse};
use serde::{Deserialize, Serialize};

use super::metadata::{MetaCommand, MetaConfig, MetaReply};
use crate::raft::TypeConfig;

/// Largest frame either side accepts. An AppendEntries over `MAX_APPEND_BYTES` is split by
/// openraft (PayloadTooLarge); a single batch may still be as large as a produce frame.
pub const MAX_FRAME_BYTES: usize = 256 << 20;
/// AppendEntries requests above this many encoded bytes are sent with fewer entries, so one
/// request never occupies a connection for long (openraft's AppendEntries timeout is the
/// heartbeat interval).
pub const MAX_APPEND_BYTES: usize = 2 << 20;
/// Frame prefix: length (u32) + request id (u64).
pub const PREFIX: usize = 12;

/// A partition's Raft group: topic id and partition index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub topic_id: [u8; 16],
    pub partition: i32,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Append(GroupKey, AppendEntriesRequest<TypeConfig>),
    Vote(GroupKey, VoteRequest<u64>),
    Snapshot(GroupKey, InstallSnapshotRequest<TypeConfig>),
    MetaAppend(AppendEntriesRequest<MetaConfig>),
    MetaVote(VoteRequest<u64>),
    MetaSnapshot(InstallSnapshotRequest<MetaConfig>),
    /// A metadata command forwarded to the metadata leader.
    MetaWrite(MetaCommand),
    /// A frontier round's probe (see `frontier_driver`).
    Frontier(frontier::Probe<GroupKey>),
    /// Liveness probe: every broker asks every registered broker now and then, so each one
    /// knows which brokers are up (Metadata lists only those).
    Ping,
    /// Would the receiver vote for the sender in the next term? (`raft_support::prevote`)
    PreVote(GroupKey, PreVoteRequest),
    MetaPreVote(PreVoteRequest),
}

/// Which of the two connections to a peer a request takes: heartbeats, votes and metadata
/// never queue behind record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Control,
    Data,
}

impl Request {
    pub fn lane(&self) -> Lane {
        match self {
            Request::Append(_, rpc) if !rpc.entries.is_empty() => Lane::Data,
            Request::Snapshot(..) => Lane::Data,
            _ => Lane::Control,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The command's reply and the metadata log index it was committed at.
    MetaWrite(Result<(MetaReply, u64), ForwardError>),
    /// The receiver hosts no replica of that group (yet: it may not have applied the
    /// metadata that creates it).
    NoGroup,
    Frontier(frontier::Ack<GroupKey>),
    /// The answer to `Ping`.
    Pong,
    PreVote(PreVoteResponse),
}

/// Why a forwarded metadata write did not happen.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("node is not the metadata leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    #[error("metadata write failed: {0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("frame shorter than its prefix")]
    Short,
    #[error("cannot encode or decode a message: {0}")]
    Codec(#[from] bincode::Error),
}

fn options(limit: usize) -> impl bincode::Options {
    bincode::DefaultOptions::new().with_limit(limit as u64)
}

/// Encodes one frame: prefix + body.
pub fn encode<T: Serialize>(id: u64, msg: &T) -> Result<Bytes, WireError> {
    let size = options(MAX_FRAME_BYTES).serialized_size(msg)? as usize;
    if size + PREFIX > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(size + PREFIX));
    }
    let mut out = BytesMut::with_capacity(PREFIX + size);
    out.put_u32((size + 8) as u32);
    out.put_u64(id);
    let mut writer = out.writer();
    options(MAX_FRAME_BYTES).serialize_into(&mut writer, msg)?;
    Ok(writer.into_inner().freeze())
}

/// Size of the body of a frame whose first 4 bytes are `prefix`, checked against the limit.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len < 8 {
        return Err(WireError::Short);
    }
    if len > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes `[u64 id][body]` (the frame after its length prefix).
pub fn decode<T: for<'de> Deserialize<'de>>(mut frame: Bytes) -> Result<(u64, T), WireError> {
    if frame.len() < 8 {
        return Err(WireError::Short);
    }
    let id = frame.get_u64();
    let msg = options(frame.len()).deserialize(&frame)?;
    Ok((id, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::BatchEntry;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    fn append(batches: usize) -> Request {
        let entries = (0..batches)
            .map(|i| Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(3, 1), i as u64 + 1),
                payload: EntryPayload::Normal(BatchEntry::received(Bytes::from(vec![7u8; 100]))),
            })
            .collect();
        Request::Append(
            GroupKey {
                topic_id: [9; 16],
                partition: 4,
            },
            AppendEntriesRequest {
                vote: Vote::new_committed(3, 1),
                prev_log_id: None,
                entries,
                leader_commit: None,
            },
        )
    }

    #[test]
    fn append_round_trips_with_raw_batch_bytes() {
        let frame = encode(42, &append(3)).expect("encode");
        let len = frame_len(frame[..4].try_into().expect("prefix")).expect("len");
        assert_eq!(len + 4, frame.len());
        // 3 batches of 100 bytes plus small overhead: batches are not inflated.
        assert!(
            frame.len() < 3 * 100 + 120,
            "frame is {} bytes",
            frame.len()
        );
        let (id, back): (u64, Request) = decode(frame.slice(4..)).expect("decode");
        assert_eq!(id, 42);
        match back {
            Request::Append(key, rpc) => {
                assert_eq!(key.partition, 4);
                assert_eq!(rpc.entries.len(), 3);
                match &rpc.entries[2].payload {
                    EntryPayload::Normal(b) => {
                        assert_eq!(b.batch.len(), 100);
                        assert!(!b.verified, "received entries must be verified again");
                    }
                    other => panic!("unexpected payload {other:?}"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        assert!(matches!(
            frame_len((u32::MAX).to_be_bytes()),
            Err(WireError::TooLarge(_))
        ));
        assert!(matches!(
            frame_len(3u32.to_be_bytes()),
            Err(WireError::Short)
        ));
        // A forwarded CreateTopic whose topic name claims 2^32 bytes, in a 20-byte frame:
        // refused by the length check, nothing allocated for it.
        let mut body = BytesMut::new();
        body.put_u64(1);
        body.extend_from_slice(&[6, 1, 253, 0, 0, 0, 0, 1, 0, 0, 0, b'x']);
        assert!(decode::<Request>(body.freeze()).is_err());
    }
}
