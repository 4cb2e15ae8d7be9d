//! DescribeLogDirs: the broker's one log directory (`--data-dir`) with the size of every
//! partition replica it holds, and (v4) the file system's total and usable bytes.
//!
//! A replica offline after a storage error is not in that list: its own directory is
//! reported as a log directory with KAFKA_STORAGE_ERROR (Kafka reports an offline log
//! directory that way; here the replica is the unit that goes offline).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::{group_name, Broker};

pub async fn handle(
    broker: &Arc<Broker>,
    req: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    // None: every partition (Kafka's null topics); otherwise topic -> partitions asked for.
    let wanted: Option<BTreeMap<String, BTreeSet<i32>>> = req.topics.map(|topics| {
        let mut m: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for t in topics {
            m.entry(t.topic.0.to_string())
                .or_default()
                .extend(t.partitions);
        }
        m
    });
    let mut topics: Vec<DescribeLogDirsTopic> = Vec::new();
    let mut offline: Vec<DescribeLogDirsResult> = Vec::new();
    let mut hosted = broker.topics();
    hosted.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    for topic in hosted {
        let filter = match &wanted {
            None => None,
            Some(w) => match w.get(&topic.record.name) {
                Some(parts) => Some(parts),
                None => continue,
            },
        };
        let wanted = |index: i32| filter.is_none_or(|f| f.contains(&index));
        for (index, failure) in topic.offline_replicas() {
            if wanted(index) {
                let dir = broker
                    .config
                    .data_dir
                    .join(group_name(&topic.record, index));
                tracing::debug!(dir = %dir.display(), %failure, "offline replica directory");
                offline.push(offline_dir(&dir));
            }
        }
        let partitions: Vec<DescribeLogDirsPartition> = topic
            .partitions
            .iter()
            .flatten()
            .filter(|p| wanted(p.index) && !p.is_offline())
            .map(|p| {
                DescribeLogDirsPartition::default()
                    .with_partition_index(p.index)
                    .with_partition_size(i64::try_from(p.size_bytes()).unwrap_or(i64::MAX))
                    // Leaders are never behind themselves; a follower does not know the
                    // leader's end offset, so it reports 0 as Kafka does when unknown.
                    .with_offset_lag(0)
                    .with_is_future_key(false)
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.record.name.clone())))
                    .with_partitions(partitions),
            );
        }
    }
    let dir = &broker.config.data_dir;
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(dir.display().to_string()))
        .with_topics(topics)
        .with_total_bytes(-1)
        .with_usable_bytes(-1);
    if version >= 4 {
        match disk_space(dir) {
            Ok((total, usable)) => {
                result = result.with_total_bytes(total).with_usable_bytes(usable);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "statvfs of the data dir failed")
            }
        }
    }
    let mut results = vec![result];
    results.extend(offline);
    DescribeLogDirsResponse::default().with_results(results)
}

/// The directory of a replica offline after a storage error, as an offline log directory.
fn offline_dir(dir: &Path) -> DescribeLogDirsResult {
    DescribeLogDirsResult::default()
        .with_error_code(ResponseError::KafkaStorageError.code())
        .with_log_dir(StrBytes::from_string(dir.display().to_string()))
        .with_total_bytes(-1)
        .with_usable_bytes(-1)
}

/// Total and usable (available to unprivileged users) bytes of the file system at `dir`.
fn disk_space(dir: &Path) -> std::io::Result<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `st` points to
    // writable memory of the size statvfs fills; it is read only after a 0 return.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    let block = st.f_frsize as u128;
    let clamp = |blocks: u128| i64::try_from(blocks * block).unwrap_or(i64::MAX);
    Ok((clamp(st.f_blocks as u128), clamp(st.f_bavail as u128)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_of_a_real_dir_is_positive_and_consistent() {
        let dir = tempfile::tempdir().expect("tmp");
        let (total, usable) = disk_space(dir.path()).expect("statvfs");
        assert!(
            total > 0 && usable >= 0 && usable <= total,
            "{total} {usable}"
        );
        assert!(disk_space(Path::new("/no/such/dir/here")).is_err());
    }
}
