//! Pre-decode bounds check for request bodies.
//!
//! kafka-protocol's array decoders call `Vec::with_capacity(n)` with `n` taken straight from
//! the wire (and its `Vec<u8>` string/bytes decoders do `vec![0; n]`), so a few bytes claiming
//! `i32::MAX` elements make the broker allocate gigabytes and abort. [`check_request_body`]
//! walks the body first, without allocating, and rejects every length prefix that cannot be
//! backed by the bytes that follow it. Only bodies it accepts may be handed to the codec.
//!
//! The layouts below mirror the `Decodable` impls in kafka-protocol 0.18
//! (`src/messages/*_request.rs`); the tests encode every supported version with the crate and
//! require the walker to consume exactly the encoded length, which pins the two together.
//!
//! Where the walker and the codec could read the same bytes differently, the walker is
//! stricter, so that an accepted body is parsed identically by both:
//! - unsigned varints: the codec silently stops after 5 bytes and drops overflowing bits; we
//!   reject a fifth byte above `0x0f` instead.
//! - known tagged fields: the codec decodes their value inline and ignores the declared size;
//!   we require the value to take exactly the declared size.

use thiserror::Error;

/// Why a request body was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BoundsError {
    #[error("request body truncated in `{field}`")]
    Truncated { field: &'static str },
    #[error("`{field}` claims {count} elements but only {remaining} bytes remain")]
    ArrayTooLong {
        field: &'static str,
        count: u64,
        remaining: usize,
    },
    #[error("`{field}` claims {len} bytes but only {remaining} bytes remain")]
    LengthTooLong {
        field: &'static str,
        len: u64,
        remaining: usize,
    },
    #[error("`{field}` has invalid negative length {len}")]
    NegativeLength { field: &'static str, len: i64 },
    #[error("`{field}` has an unsigned varint longer than 5 bytes or above u32::MAX")]
    BadVarint { field: &'static str },
    #[error("tagged field `{field}` declares {declared} bytes but its value takes {actual}")]
    TaggedFieldSize {
        field: &'static str,
        declared: u32,
        actual: usize,
    },
    #[error("request has more than {MAX_ELEMENTS} array elements in all")]
    TooManyElements,
    #[error("api key {api_key} version {version} is not supported")]
    UnsupportedApi { api_key: i16, version: i16 },
}

/// Checks that `body` (the request bytes after the request header) is a structurally sound
/// request of the given api and version whose every length prefix fits in the body.
/// Trailing bytes after the last known field are ignored, as the codec ignores them.
pub fn check_request_body(api_key: i16, version: i16, body: &[u8]) -> Result<(), BoundsError> {
    walk_body(api_key, version, body).map(|_| ())
}

/// Walks the body and returns how many bytes the request occupies.
fn walk_body(api_key: i16, version: i16, body: &[u8]) -> Result<usize, BoundsError> {
    let api = APIS
        .iter()
        .find(|a| a.key == api_key && (a.min..=a.max).contains(&version))
        .ok_or(BoundsError::UnsupportedApi { api_key, version })?;
    let mut walker = Walker {
        rest: body,
        version,
        flexible: version >= api.flexible_since,
        elements: 0,
    };
    walker.walk_struct(api.body)?;
    Ok(body.len() - walker.rest.len())
}

// ---------------------------------------------------------------------------------------------
// Layout descriptors
// ---------------------------------------------------------------------------------------------

/// Wire type of a field. Strings, bytes and arrays switch between the classic encoding
/// (i16/i32 length, -1 = null) and the compact one (unsigned varint length + 1, 0 = null)
/// depending on whether the message version is flexible.
enum Ty {
    Int8,
    Int16,
    Int32,
    Int64,
    Uuid,
    Bool,
    String,
    NullableString,
    /// Produce record data: nullable bytes, kept opaque here (the batch is validated later).
    Records,
    /// Non-nullable bytes (group protocol metadata, assignments).
    Bytes,
    Array(&'static Ty),
    NullableArray(&'static Ty),
    Struct(&'static Layout),
}

/// A field present in versions `min..=max`.
struct Field {
    name: &'static str,
    min: i16,
    max: i16,
    ty: Ty,
}

impl Field {
    const fn new(name: &'static str, ty: Ty) -> Self {
        Field {
            name,
            min: 0,
            max: i16::MAX,
            ty,
        }
    }
    const fn since(mut self, version: i16) -> Self {
        self.min = version;
        self
    }
    const fn until(mut self, version: i16) -> Self {
        self.max = version;
        self
    }
    fn present(&self, version: i16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

/// A tagged field the codec decodes itself (inline, see the module docs).
struct Tagged {
    tag: u32,
    field: Field,
}

impl Tagged {
    const fn new(tag: u32, field: Field) -> Self {
        Tagged { tag, field }
    }
}

/// Fields in wire order; in flexible versions a tagged-field section follows them.
struct Layout {
    fields: &'static [Field],
    tagged: &'static [Tagged],
}

const fn fields(fields: &'static [Field]) -> Layout {
    Layout {
        fields,
        tagged: &[],
    }
}

struct Api {
    key: i16,
    min: i16,
    max: i16,
    /// First version using compact encodings and tagged fields.
    flexible_since: i16,
    body: &'static Layout,
}

const fn api(key: i16, min: i16, max: i16, flexible_since: i16, body: &'static Layout) -> Api {
    Api {
        key,
        min,
        max,
        flexible_since,
        body,
    }
}

use Ty::*;

/// Every request the broker decodes: `api(key, min, max, flexible_since, body)`.
/// Anything else is refused as unsupported.
const APIS: &[Api] = &[
    api(0, 3, 13, 9, &PRODUCE_REQUEST),
    api(1, 4, 18, 12, &FETCH_REQUEST),
    api(2, 1, 10, 6, &LIST_OFFSETS_REQUEST),
    api(3, 0, 13, 9, &METADATA_REQUEST),
    api(18, 0, 4, 3, &API_VERSIONS_REQUEST),
    api(19, 2, 7, 5, &CREATE_TOPICS_REQUEST),
    api(20, 1, 6, 4, &DELETE_TOPICS_REQUEST),
    api(23, 2, 4, 4, &OFFSET_FOR_LEADER_EPOCH_REQUEST),
    api(32, 1, 4, 4, &DESCRIBE_CONFIGS_REQUEST),
    api(33, 0, 2, 2, &ALTER_CONFIGS_REQUEST),
    api(44, 0, 1, 1, &INCREMENTAL_ALTER_CONFIGS_REQUEST),
    api(37, 0, 3, 2, &CREATE_PARTITIONS_REQUEST),
    // DescribeCluster has been flexible since its first version.
    api(60, 0, 2, 0, &DESCRIBE_CLUSTER_REQUEST),
    api(35, 1, 4, 2, &DESCRIBE_LOG_DIRS_REQUEST),
    api(21, 0, 2, 2, &DELETE_RECORDS_REQUEST),
    // Consumer groups.
    api(8, 2, 9, 8, &OFFSET_COMMIT_REQUEST),
    api(9, 1, 9, 6, &OFFSET_FETCH_REQUEST),
    api(10, 0, 6, 3, &FIND_COORDINATOR_REQUEST),
    api(11, 0, 9, 6, &JOIN_GROUP_REQUEST),
    api(12, 0, 4, 4, &HEARTBEAT_REQUEST),
    api(13, 0, 5, 4, &LEAVE_GROUP_REQUEST),
    api(14, 0, 5, 4, &SYNC_GROUP_REQUEST),
    api(15, 0, 6, 5, &DESCRIBE_GROUPS_REQUEST),
    api(16, 0, 5, 3, &LIST_GROUPS_REQUEST),
    api(42, 0, 2, 2, &DELETE_GROUPS_REQUEST),
    // OffsetDelete has no flexible version.
    api(47, 0, 0, i16::MAX, &OFFSET_DELETE_REQUEST),
    // Idempotent producers.
    api(22, 0, 5, 2, &INIT_PRODUCER_ID_REQUEST),
];

// Layouts are named after kafka-protocol's structs, innermost first.

// Produce (0)
const PARTITION_PRODUCE_DATA: Ty = Struct(&fields(&[
    Field::new("index", Int32),
    Field::new("records", Records),
]));
const TOPIC_PRODUCE_DATA: Ty = Struct(&fields(&[
    Field::new("name", String).until(12),
    Field::new("topic_id", Uuid).since(13),
    Field::new("partition_data", Array(&PARTITION_PRODUCE_DATA)),
]));
const PRODUCE_REQUEST: Layout = fields(&[
    Field::new("transactional_id", NullableString),
    Field::new("acks", Int16),
    Field::new("timeout_ms", Int32),
    Field::new("topic_data", Array(&TOPIC_PRODUCE_DATA)),
]);

// Fetch (1)
const FETCH_PARTITION: Ty = Struct(&Layout {
    fields: &[
        Field::new("partition", Int32),
        Field::new("current_leader_epoch", Int32).since(9),
        Field::new("fetch_offset", Int64),
        Field::new("last_fetched_epoch", Int32).since(12),
        Field::new("log_start_offset", Int64).since(5),
        Field::new("partition_max_bytes", Int32),
    ],
    tagged: &[
        Tagged::new(0, Field::new("replica_directory_id", Uuid).since(17)),
        Tagged::new(1, Field::new("high_watermark", Int64).since(18)),
    ],
});
const FETCH_TOPIC: Ty = Struct(&fields(&[
    Field::new("topic", String).until(12),
    Field::new("topic_id", Uuid).since(13),
    Field::new("partitions", Array(&FETCH_PARTITION)),
]));
const FORGOTTEN_TOPIC: Ty = Struct(&fields(&[
    Field::new("topic", String).since(7).until(12),
    Field::new("topic_id", Uuid).since(13),
    Field::new("partitions", Array(&Int32)).since(7),
]));
const REPLICA_STATE: Ty = Struct(&fields(&[
    Field::new("replica_id", Int32).since(15),
    Field::new("replica_epoch", Int64).since(15),
]));
const FETCH_REQUEST: Layout = Layout {
    fields: &[
        Field::new("replica_id", Int32).until(14),
        Field::new("max_wait_ms", Int32),
        Field::new("min_bytes", Int32),
        Field::new("max_bytes", Int32),
        Field::new("isolation_level", Int8),
        Field::new("session_id", Int32).since(7),
        Field::new("session_epoch", Int32).since(7),
        Field::new("topics", Array(&FETCH_TOPIC)),
        Field::new("forgotten_topics_data", Array(&FORGOTTEN_TOPIC)).since(7),
        Field::new("rack_id", String).since(11),
    ],
    tagged: &[
        Tagged::new(0, Field::new("cluster_id", NullableString)),
        Tagged::new(1, Field::new("replica_state", REPLICA_STATE).since(15)),
    ],
};

// ListOffsets (2)
const LIST_OFFSETS_PARTITION: Ty = Struct(&fields(&[
    Field::new("partition_index", Int32),
    Field::new("current_leader_epoch", Int32).since(4),
    Field::new("timestamp", Int64),
]));
const LIST_OFFSETS_TOPIC: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("partitions", Array(&LIST_OFFSETS_PARTITION)),
]));
const LIST_OFFSETS_REQUEST: Layout = fields(&[
    Field::new("replica_id", Int32),
    Field::new("isolation_level", Int8).since(2),
    Field::new("topics", Array(&LIST_OFFSETS_TOPIC)),
    Field::new("timeout_ms", Int32).since(10),
]);

// Metadata (3)
const METADATA_REQUEST_TOPIC: Ty = Struct(&fields(&[
    Field::new("topic_id", Uuid).since(10),
    Field::new("name", NullableString),
]));
const METADATA_REQUEST: Layout = fields(&[
    Field::new("topics", NullableArray(&METADATA_REQUEST_TOPIC)),
    Field::new("allow_auto_topic_creation", Bool).since(4),
    Field::new("include_cluster_authorized_operations", Bool)
        .since(8)
        .until(10),
    Field::new("include_topic_authorized_operations", Bool).since(8),
]);

// ApiVersions (18)
const API_VERSIONS_REQUEST: Layout = fields(&[
    Field::new("client_software_name", String).since(3),
    Field::new("client_software_version", String).since(3),
]);

// CreateTopics (19)
const CREATABLE_REPLICA_ASSIGNMENT: Ty = Struct(&fields(&[
    Field::new("partition_index", Int32),
    Field::new("broker_ids", Array(&Int32)),
]));
const CREATABLE_TOPIC_CONFIG: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("value", NullableString),
]));
const CREATABLE_TOPIC: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("num_partitions", Int32),
    Field::new("replication_factor", Int16),
    Field::new("assignments", Array(&CREATABLE_REPLICA_ASSIGNMENT)),
    Field::new("configs", Array(&CREATABLE_TOPIC_CONFIG)),
]));
const CREATE_TOPICS_REQUEST: Layout = fields(&[
    Field::new("topics", Array(&CREATABLE_TOPIC)),
    Field::new("timeout_ms", Int32),
    Field::new("validate_only", Bool),
]);

// DeleteTopics (20): v6 switched from a list of names to structs carrying a name or an id.
const DELETE_TOPIC_STATE: Ty = Struct(&fields(&[
    Field::new("name", NullableString).since(6),
    Field::new("topic_id", Uuid).since(6),
]));
const DELETE_TOPICS_REQUEST: Layout = fields(&[
    Field::new("topics", Array(&DELETE_TOPIC_STATE)).since(6),
    Field::new("topic_names", Array(&String)).until(5),
    Field::new("timeout_ms", Int32),
]);

// OffsetForLeaderEpoch (23)
const OFFSET_FOR_LEADER_PARTITION: Ty = Struct(&fields(&[
    Field::new("partition", Int32),
    Field::new("current_leader_epoch", Int32),
    Field::new("leader_epoch", Int32),
]));
const OFFSET_FOR_LEADER_TOPIC: Ty = Struct(&fields(&[
    Field::new("topic", String),
    Field::new("partitions", Array(&OFFSET_FOR_LEADER_PARTITION)),
]));
const OFFSET_FOR_LEADER_EPOCH_REQUEST: Layout = fields(&[
    Field::new("replica_id", Int32).since(3),
    Field::new("topics", Array(&OFFSET_FOR_LEADER_TOPIC)),
]);

// DescribeConfigs (32)
const DESCRIBE_CONFIGS_RESOURCE: Ty = Struct(&fields(&[
    Field::new("resource_type", Int8),
    Field::new("resource_name", String),
    Field::new("configuration_keys", NullableArray(&String)),
]));
const DESCRIBE_CONFIGS_REQUEST: Layout = fields(&[
    Field::new("resources", Array(&DESCRIBE_CONFIGS_RESOURCE)),
    Field::new("include_synonyms", Bool),
    Field::new("include_documentation", Bool).since(3),
]);

// AlterConfigs (33)
const ALTERABLE_CONFIG: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("value", NullableString),
]));
const ALTER_CONFIGS_RESOURCE: Ty = Struct(&fields(&[
    Field::new("resource_type", Int8),
    Field::new("resource_name", String),
    Field::new("configs", Array(&ALTERABLE_CONFIG)),
]));
const ALTER_CONFIGS_REQUEST: Layout = fields(&[
    Field::new("resources", Array(&ALTER_CONFIGS_RESOURCE)),
    Field::new("validate_only", Bool),
]);

// IncrementalAlterConfigs (44)
const INCREMENTAL_ALTERABLE_CONFIG: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("config_operation", Int8),
    Field::new("value", NullableString),
]));
const INCREMENTAL_ALTER_CONFIGS_RESOURCE: Ty = Struct(&fields(&[
    Field::new("resource_type", Int8),
    Field::new("resource_name", String),
    Field::new("configs", Array(&INCREMENTAL_ALTERABLE_CONFIG)),
]));
const INCREMENTAL_ALTER_CONFIGS_REQUEST: Layout = fields(&[
    Field::new("resources", Array(&INCREMENTAL_ALTER_CONFIGS_RESOURCE)),
    Field::new("validate_only", Bool),
]);

// CreatePartitions (37)
const CREATE_PARTITIONS_ASSIGNMENT: Ty =
    Struct(&fields(&[Field::new("broker_ids", Array(&Int32))]));
const CREATE_PARTITIONS_TOPIC: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("count", Int32),
    Field::new("assignments", NullableArray(&CREATE_PARTITIONS_ASSIGNMENT)),
]));
const CREATE_PARTITIONS_REQUEST: Layout = fields(&[
    Field::new("topics", Array(&CREATE_PARTITIONS_TOPIC)),
    Field::new("timeout_ms", Int32),
    Field::new("validate_only", Bool),
]);

// DescribeCluster (60)
const DESCRIBE_CLUSTER_REQUEST: Layout = fields(&[
    Field::new("include_cluster_authorized_operations", Bool),
    Field::new("endpoint_type", Int8).since(1),
    Field::new("include_fenced_brokers", Bool).since(2),
]);

// DeleteRecords (21)
const DELETE_RECORDS_PARTITION: Ty = Struct(&fields(&[
    Field::new("partition_index", Int32),
    Field::new("offset", Int64),
]));
const DELETE_RECORDS_TOPIC: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("partitions", Array(&DELETE_RECORDS_PARTITION)),
]));
const DELETE_RECORDS_REQUEST: Layout = fields(&[
    Field::new("topics", Array(&DELETE_RECORDS_TOPIC)),
    Field::new("timeout_ms", Int32),
]);

// DescribeLogDirs (35)
const DESCRIBABLE_LOG_DIR_TOPIC: Ty = Struct(&fields(&[
    Field::new("topic", String),
    Field::new("partitions", Array(&Int32)),
]));
const DESCRIBE_LOG_DIRS_REQUEST: Layout = fields(&[Field::new(
    "topics",
    NullableArray(&DESCRIBABLE_LOG_DIR_TOPIC),
)]);

// OffsetCommit (8)
const OFFSET_COMMIT_REQUEST_PARTITION: Ty = Struct(&fields(&[
    Field::new("partition_index", Int32),
    Field::new("committed_offset", Int64),
    Field::new("committed_leader_epoch", Int32).since(6),
    Field::new("committed_metadata", NullableString),
]));
const OFFSET_COMMIT_REQUEST_TOPIC: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("partitions", Array(&OFFSET_COMMIT_REQUEST_PARTITION)),
]));
const OFFSET_COMMIT_REQUEST: Layout = fields(&[
    Field::new("group_id", String),
    Field::new("generation_id_or_member_epoch", Int32),
    Field::new("member_id", String),
    Field::new("group_instance_id", NullableString).since(7),
    Field::new("retention_time_ms", Int64).until(4),
    Field::new("topics", Array(&OFFSET_COMMIT_REQUEST_TOPIC)),
]);

// OffsetFetch (9): v8 replaced the single group by an array of groups.
const OFFSET_FETCH_REQUEST_TOPIC: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("partition_indexes", Array(&Int32)),
]));
const OFFSET_FETCH_REQUEST_GROUP: Ty = Struct(&fields(&[
    Field::new("group_id", String),
    Field::new("member_id", NullableString).since(9),
    Field::new("member_epoch", Int32).since(9),
    Field::new("topics", NullableArray(&OFFSET_FETCH_REQUEST_TOPIC)),
]));
const OFFSET_FETCH_REQUEST: Layout = fields(&[
    Field::new("group_id", String).until(7),
    Field::new("topics", NullableArray(&OFFSET_FETCH_REQUEST_TOPIC)).until(7),
    Field::new("groups", Array(&OFFSET_FETCH_REQUEST_GROUP)).since(8),
    Field::new("require_stable", Bool).since(7),
]);

// FindCoordinator (10): v4 replaced the key by an array of keys.
const FIND_COORDINATOR_REQUEST: Layout = fields(&[
    Field::new("key", String).until(3),
    Field::new("key_type", Int8).since(1),
    Field::new("coordinator_keys", Array(&String)).since(4),
]);

// JoinGroup (11)
const JOIN_GROUP_REQUEST_PROTOCOL: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("metadata", Bytes),
]));
const JOIN_GROUP_REQUEST: Layout = fields(&[
    Field::new("group_id", String),
    Field::new("session_timeout_ms", Int32),
    Field::new("rebalance_timeout_ms", Int32).since(1),
    Field::new("member_id", String),
    Field::new("group_instance_id", NullableString).since(5),
    Field::new("protocol_type", String),
    Field::new("protocols", Array(&JOIN_GROUP_REQUEST_PROTOCOL)),
    Field::new("reason", NullableString).since(8),
]);

// Heartbeat (12)
const HEARTBEAT_REQUEST: Layout = fields(&[
    Field::new("group_id", String),
    Field::new("generation_id", Int32),
    Field::new("member_id", String),
    Field::new("group_instance_id", NullableString).since(3),
]);

// LeaveGroup (13): v3 replaced the member id by an array of members.
const LEAVE_GROUP_MEMBER: Ty = Struct(&fields(&[
    Field::new("member_id", String),
    Field::new("group_instance_id", NullableString),
    Field::new("reason", NullableString).since(5),
]));
const LEAVE_GROUP_REQUEST: Layout = fields(&[
    Field::new("group_id", String),
    Field::new("member_id", String).until(2),
    Field::new("members", Array(&LEAVE_GROUP_MEMBER)).since(3),
]);

// SyncGroup (14)
const SYNC_GROUP_REQUEST_ASSIGNMENT: Ty = Struct(&fields(&[
    Field::new("member_id", String),
    Field::new("assignment", Bytes),
]));
const SYNC_GROUP_REQUEST: Layout = fields(&[
    Field::new("group_id", String),
    Field::new("generation_id", Int32),
    Field::new("member_id", String),
    Field::new("group_instance_id", NullableString).since(3),
    Field::new("protocol_type", NullableString).since(5),
    Field::new("protocol_name", NullableString).since(5),
    Field::new("assignments", Array(&SYNC_GROUP_REQUEST_ASSIGNMENT)),
]);

// DescribeGroups (15)
const DESCRIBE_GROUPS_REQUEST: Layout = fields(&[
    Field::new("groups", Array(&String)),
    Field::new("include_authorized_operations", Bool).since(3),
]);

// ListGroups (16)
const LIST_GROUPS_REQUEST: Layout = fields(&[
    Field::new("states_filter", Array(&String)).since(4),
    Field::new("types_filter", Array(&String)).since(5),
]);

// DeleteGroups (42)
const DELETE_GROUPS_REQUEST: Layout = fields(&[Field::new("groups_names", Array(&String))]);

// OffsetDelete (47)
const OFFSET_DELETE_REQUEST_PARTITION: Ty =
    Struct(&fields(&[Field::new("partition_index", Int32)]));
const OFFSET_DELETE_REQUEST_TOPIC: Ty = Struct(&fields(&[
    Field::new("name", String),
    Field::new("partitions", Array(&OFFSET_DELETE_REQUEST_PARTITION)),
]));
const OFFSET_DELETE_REQUEST: Layout = fields(&[
    Field::new("group_id", String),
    Field::new("topics", Array(&OFFSET_DELETE_REQUEST_TOPIC)),
]);

// InitProducerId (22)
const INIT_PRODUCER_ID_REQUEST: Layout = fields(&[
    Field::new("transactional_id", NullableString),
    Field::new("transaction_timeout_ms", Int32),
    Field::new("producer_id", Int64).since(3),
    Field::new("producer_epoch", Int16).since(3),
]);

// ---------------------------------------------------------------------------------------------
// Walker
// ---------------------------------------------------------------------------------------------

const TAGGED_FIELDS: &str = "tagged_fields";

/// Width of a classic (non-flexible) length prefix.
#[derive(Clone, Copy)]
enum Prefix {
    I16,
    I32,
}

/// Most array elements one request may hold, over all its arrays. A decoded element takes up
/// to ~36x its smallest wire size (a 2-byte Metadata topic becomes a 72-byte struct), so the
/// per-array check alone would let a 100 MiB frame allocate ~3.8 GB. Real requests stay far
/// below this: a broker hosts at most 20,000 partitions.
pub const MAX_ELEMENTS: u64 = 100_000;

struct Walker<'a> {
    rest: &'a [u8],
    version: i16,
    flexible: bool,
    /// Array elements seen so far, over all arrays of the request.
    elements: u64,
}

impl<'a> Walker<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BoundsError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(BoundsError::Truncated { field })?;
        self.rest = tail;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BoundsError> {
        <[u8; N]>::try_from(self.take(N, field)?).map_err(|_| BoundsError::Truncated { field })
    }

    /// Takes `len` bytes announced by a length prefix; an oversized prefix is reported as
    /// such rather than as a plain truncation.
    fn take_len(&mut self, len: u64, field: &'static str) -> Result<&'a [u8], BoundsError> {
        let remaining = self.rest.len();
        match usize::try_from(len) {
            Ok(n) if n <= remaining => self.take(n, field),
            _ => Err(BoundsError::LengthTooLong {
                field,
                len,
                remaining,
            }),
        }
    }

    fn uvarint(&mut self, field: &'static str) -> Result<u32, BoundsError> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.fixed::<1>(field)?;
            // The fifth byte may carry only the top 4 bits of a u32 and must end the varint.
            if i == 4 && b > 0x0f {
                break;
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(BoundsError::BadVarint { field })
    }

    /// Reads a length prefix; `None` is null. Negative lengths other than a nullable field's
    /// null are rejected here, as is a compact null for a non-nullable field.
    fn length(
        &mut self,
        field: &'static str,
        prefix: Prefix,
        nullable: bool,
    ) -> Result<Option<u64>, BoundsError> {
        let len = if self.flexible {
            i64::from(self.uvarint(field)?) - 1
        } else {
            match prefix {
                Prefix::I16 => i64::from(i16::from_be_bytes(self.fixed(field)?)),
                Prefix::I32 => i64::from(i32::from_be_bytes(self.fixed(field)?)),
            }
        };
        match u64::try_from(len) {
            Ok(n) => Ok(Some(n)),
            Err(_) if len == -1 && nullable => Ok(None),
            Err(_) => Err(BoundsError::NegativeLength { field, len }),
        }
    }

    /// Smallest number of bytes a value of `ty` can occupy at this version: the bound that
    /// makes an element count trustworthy (`count * min_size <= remaining`).
    fn min_size(&self, ty: &Ty) -> u64 {
        let prefix = |classic| if self.flexible { 1 } else { classic };
        match ty {
            Int8 | Bool => 1,
            Int16 => 2,
            Int32 => 4,
            Int64 => 8,
            Uuid => 16,
            String | NullableString => prefix(2),
            Records | Bytes | Array(_) | NullableArray(_) => prefix(4),
            Struct(s) => {
                let tags = u64::from(self.flexible);
                s.fields
                    .iter()
                    .filter(|f| f.present(self.version))
                    .map(|f| self.min_size(&f.ty))
                    .sum::<u64>()
                    + tags
            }
        }
    }

    fn walk(&mut self, field: &'static str, ty: &Ty) -> Result<(), BoundsError> {
        match ty {
            Int8 | Bool => self.take(1, field).map(drop),
            Int16 => self.take(2, field).map(drop),
            Int32 => self.take(4, field).map(drop),
            Int64 => self.take(8, field).map(drop),
            Uuid => self.take(16, field).map(drop),
            String | NullableString => {
                let nullable = matches!(ty, NullableString);
                match self.length(field, Prefix::I16, nullable)? {
                    Some(len) => self.take_len(len, field).map(drop),
                    None => Ok(()),
                }
            }
            Records | Bytes => match self.length(field, Prefix::I32, matches!(ty, Records))? {
                Some(len) => self.take_len(len, field).map(drop),
                None => Ok(()),
            },
            Array(elem) | NullableArray(elem) => {
                let nullable = matches!(ty, NullableArray(_));
                let Some(count) = self.length(field, Prefix::I32, nullable)? else {
                    return Ok(());
                };
                // No genuine array of `count` elements fits in fewer than `count * min` bytes.
                // Holding counts to that keeps the codec's `Vec::with_capacity` within what a
                // real request of this size would allocate anyway, and bounds this loop too.
                // (`max(1)` only guards a layout with no fields at this version.)
                let min = self.min_size(elem).max(1);
                let remaining = self.rest.len();
                if count.saturating_mul(min) > remaining as u64 {
                    return Err(BoundsError::ArrayTooLong {
                        field,
                        count,
                        remaining,
                    });
                }
                self.elements = self.elements.saturating_add(count);
                if self.elements > MAX_ELEMENTS {
                    return Err(BoundsError::TooManyElements);
                }
                for _ in 0..count {
                    self.walk(field, elem)?;
                }
                Ok(())
            }
            Struct(s) => self.walk_struct(s),
        }
    }

    fn walk_struct(&mut self, s: &Layout) -> Result<(), BoundsError> {
        let version = self.version;
        for f in s.fields.iter().filter(|f| f.present(version)) {
            self.walk(f.name, &f.ty)?;
        }
        if self.flexible {
            self.walk_tagged_fields(s)?;
        }
        Ok(())
    }

    fn walk_tagged_fields(&mut self, s: &Layout) -> Result<(), BoundsError> {
        let count = self.uvarint(TAGGED_FIELDS)?;
        // Each entry is at least a one-byte tag and a one-byte size.
        let remaining = self.rest.len();
        if u64::from(count) * 2 > remaining as u64 {
            return Err(BoundsError::ArrayTooLong {
                field: TAGGED_FIELDS,
                count: count.into(),
                remaining,
            });
        }
        for _ in 0..count {
            let tag = self.uvarint(TAGGED_FIELDS)?;
            let size = self.uvarint(TAGGED_FIELDS)?;
            let value = self.take_len(size.into(), TAGGED_FIELDS)?;
            let known = s
                .tagged
                .iter()
                .find(|t| t.tag == tag && t.field.present(self.version));
            if let Some(Tagged { field, .. }) = known {
                let mut inner = Walker {
                    rest: value,
                    ..*self
                };
                inner.walk(field.name, &field.ty)?;
                self.elements = inner.elements;
                if !inner.rest.is_empty() {
                    return Err(BoundsError::TaggedFieldSize {
                        field: field.name,
                        declared: size,
                        actual: value.len() - inner.rest.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::{
        alter_configs_request as acfg, api_versions_request::ApiVersionsRequest,
        create_partitions_request as cp, create_topics_request as ct,
        delete_records_request as drr, delete_topics_request as dt, describe_cluster_request as dc,
        describe_configs_request as dcfg, describe_log_dirs_request as dld, fetch_request as fe,
        incremental_alter_configs_request as iacfg, list_offsets_request as lo,
        metadata_request as md, offset_for_leader_epoch_request as ofle, produce_request as pr,
        BrokerId, GroupId, TopicName, TransactionalId,
    };
    use kafka_protocol::messages::{
        delete_groups_request as dg, describe_groups_request as dgr,
        find_coordinator_request as fc, heartbeat_request as hb, join_group_request as jg,
        leave_group_request as lg, list_groups_request as lgr, offset_commit_request as oc,
        offset_delete_request as od, offset_fetch_request as of, sync_group_request as sg,
    };
    use kafka_protocol::messages::{init_producer_id_request as ipi, ProducerId};
    use kafka_protocol::protocol::{Decodable, Request, StrBytes};

    // ---- helpers -----------------------------------------------------------------------

    struct Case {
        key: i16,
        version: i16,
        body: Vec<u8>,
    }

    fn encode<R: Request>(req: &R, version: i16) -> Case {
        let mut buf = BytesMut::new();
        req.encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("encode key {} v{version}: {e}", R::KEY));
        Case {
            key: R::KEY,
            version,
            body: buf.to_vec(),
        }
    }

    fn s(v: &'static str) -> StrBytes {
        StrBytes::from_static_str(v)
    }

    fn topic(v: &'static str) -> TopicName {
        TopicName(s(v))
    }

    /// Carries a non-nil UUID in `topic_id`: `uuid::Uuid` cannot be named or built without
    /// depending on the `uuid` crate, so let the codec decode one.
    fn uuid(seed: u8) -> md::MetadataRequestTopic {
        let mut body = vec![seed; 16];
        body.extend_from_slice(&[0, 0]); // null name, no tagged fields
        md::MetadataRequestTopic::decode(&mut &body[..], 10).unwrap()
    }

    /// Runs kafka-protocol's own decoder; returns how many bytes it consumed. Only ever call
    /// this on bodies the walker accepted: on others it may try to allocate gigabytes.
    fn codec_len(key: i16, version: i16, body: &[u8]) -> Option<usize> {
        fn len<R: Decodable>(body: &[u8], version: i16) -> Option<usize> {
            let mut rest = body;
            R::decode(&mut rest, version).ok()?;
            Some(body.len() - rest.len())
        }
        match key {
            0 => len::<pr::ProduceRequest>(body, version),
            1 => len::<fe::FetchRequest>(body, version),
            2 => len::<lo::ListOffsetsRequest>(body, version),
            3 => len::<md::MetadataRequest>(body, version),
            18 => len::<ApiVersionsRequest>(body, version),
            19 => len::<ct::CreateTopicsRequest>(body, version),
            20 => len::<dt::DeleteTopicsRequest>(body, version),
            23 => len::<ofle::OffsetForLeaderEpochRequest>(body, version),
            32 => len::<dcfg::DescribeConfigsRequest>(body, version),
            33 => len::<acfg::AlterConfigsRequest>(body, version),
            44 => len::<iacfg::IncrementalAlterConfigsRequest>(body, version),
            37 => len::<cp::CreatePartitionsRequest>(body, version),
            60 => len::<dc::DescribeClusterRequest>(body, version),
            35 => len::<dld::DescribeLogDirsRequest>(body, version),
            21 => len::<drr::DeleteRecordsRequest>(body, version),
            8 => len::<oc::OffsetCommitRequest>(body, version),
            9 => len::<of::OffsetFetchRequest>(body, version),
            10 => len::<fc::FindCoordinatorRequest>(body, version),
            11 => len::<jg::JoinGroupRequest>(body, version),
            12 => len::<hb::HeartbeatRequest>(body, version),
            13 => len::<lg::LeaveGroupRequest>(body, version),
            14 => len::<sg::SyncGroupRequest>(body, version),
            15 => len::<dgr::DescribeGroupsRequest>(body, version),
            16 => len::<lgr::ListGroupsRequest>(body, version),
            42 => len::<dg::DeleteGroupsRequest>(body, version),
            47 => len::<od::OffsetDeleteRequest>(body, version),
            22 => len::<ipi::InitProducerIdRequest>(body, version),
            _ => unreachable!("no codec for key {key}"),
        }
    }

    /// Checks a (possibly hostile) body: if the walker accepts it, the codec must either
    /// reject it or consume exactly what the walker did. Returns whether it was accepted.
    fn check_against_codec(key: i16, version: i16, body: &[u8]) -> bool {
        match walk_body(key, version, body) {
            Ok(walked) => {
                if let Some(decoded) = codec_len(key, version, body) {
                    assert_eq!(walked, decoded, "key {key} v{version} body {body:02x?}");
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Seeded xorshift64: reproducible fuzzing without a rand dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    // ---- realistic requests, one builder per api ---------------------------------------

    const RECORDS: &[u8] = &[0xab; 61];

    fn produce(v: i16) -> pr::ProduceRequest {
        let partition = |i: i32, records: Option<Bytes>| {
            let p = pr::PartitionProduceData::default()
                .with_index(i)
                .with_records(records);
            if v >= 9 {
                p.with_unknown_tagged_field(7, Bytes::from_static(b"tag"))
            } else {
                p
            }
        };
        let topic = |name, id| {
            let t = pr::TopicProduceData::default().with_partition_data(vec![
                partition(0, Some(Bytes::from_static(RECORDS))),
                partition(1, Some(Bytes::from_static(&RECORDS[..5]))),
                partition(2, None),
            ]);
            if v <= 12 {
                t.with_name(topic(name))
            } else {
                t.with_topic_id(uuid(id).topic_id)
            }
        };
        pr::ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(s("txn-1"))))
            .with_acks(-1)
            .with_timeout_ms(1500)
            .with_topic_data(vec![topic("orders", 1), topic("payments", 2)])
    }

    fn fetch(v: i16) -> fe::FetchRequest {
        let partition = |i: i32| {
            let mut p = fe::FetchPartition::default()
                .with_partition(i)
                .with_fetch_offset(1000 + i64::from(i))
                .with_partition_max_bytes(1 << 20);
            if v >= 9 {
                p = p.with_current_leader_epoch(4);
            }
            if v >= 12 {
                p = p.with_last_fetched_epoch(3);
            }
            if v >= 5 {
                p = p.with_log_start_offset(10);
            }
            if v >= 17 {
                p = p.with_replica_directory_id(uuid(9).topic_id);
            }
            if v >= 18 {
                p = p.with_high_watermark(5000);
            }
            p
        };
        let fetch_topic = |name, id| {
            let t = fe::FetchTopic::default().with_partitions(vec![
                partition(0),
                partition(1),
                partition(2),
            ]);
            if v <= 12 {
                t.with_topic(topic(name))
            } else {
                t.with_topic_id(uuid(id).topic_id)
            }
        };
        let mut req = fe::FetchRequest::default()
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_isolation_level(1)
            .with_topics(vec![fetch_topic("orders", 1), fetch_topic("payments", 2)]);
        if v <= 14 {
            req = req.with_replica_id(BrokerId(-1));
        }
        if v >= 7 {
            let forgotten = fe::ForgottenTopic::default().with_partitions(vec![4, 5, 6]);
            let forgotten = if v <= 12 {
                forgotten.with_topic(topic("gone"))
            } else {
                forgotten.with_topic_id(uuid(3).topic_id)
            };
            req = req
                .with_session_id(77)
                .with_session_epoch(2)
                .with_forgotten_topics_data(vec![forgotten]);
        }
        if v >= 11 {
            req = req.with_rack_id(s("rack-a"));
        }
        if v >= 12 {
            req = req
                .with_cluster_id(Some(s("cluster-xyz")))
                .with_unknown_tagged_field(9, Bytes::from_static(b"unknown"));
        }
        if v >= 15 {
            req = req.with_replica_state(
                fe::ReplicaState::default()
                    .with_replica_id(BrokerId(2))
                    .with_replica_epoch(8),
            );
        }
        req
    }

    fn list_offsets(v: i16) -> lo::ListOffsetsRequest {
        let partition = |i: i32| {
            let p = lo::ListOffsetsPartition::default()
                .with_partition_index(i)
                .with_timestamp(-1);
            if v >= 4 {
                p.with_current_leader_epoch(6)
            } else {
                p
            }
        };
        let topic = |name| {
            lo::ListOffsetsTopic::default()
                .with_name(topic(name))
                .with_partitions(vec![partition(0), partition(1), partition(2)])
        };
        let mut req = lo::ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![topic("orders"), topic("payments")]);
        if v >= 2 {
            req = req.with_isolation_level(1);
        }
        if v >= 10 {
            req = req.with_timeout_ms(3000);
        }
        req
    }

    fn metadata(v: i16) -> md::MetadataRequest {
        let mut second = md::MetadataRequestTopic::default().with_name(Some(topic("payments")));
        if v >= 10 {
            // From v10 topics may be named by id only.
            second = second.with_topic_id(uuid(5).topic_id).with_name(None);
        }
        let mut req = md::MetadataRequest::default().with_topics(Some(vec![
            md::MetadataRequestTopic::default().with_name(Some(topic("orders"))),
            second,
        ]));
        if v >= 4 {
            req = req.with_allow_auto_topic_creation(false);
        }
        if (8..=10).contains(&v) {
            req = req.with_include_cluster_authorized_operations(true);
        }
        if v >= 8 {
            req = req.with_include_topic_authorized_operations(true);
        }
        req
    }

    fn api_versions(v: i16) -> ApiVersionsRequest {
        let req = ApiVersionsRequest::default();
        if v >= 3 {
            req.with_client_software_name(s("bounds-test"))
                .with_client_software_version(s("1.0.0"))
        } else {
            req
        }
    }

    fn create_topics(_v: i16) -> ct::CreateTopicsRequest {
        let assignment = |p: i32| {
            ct::CreatableReplicaAssignment::default()
                .with_partition_index(p)
                .with_broker_ids(vec![BrokerId(1), BrokerId(2)])
        };
        ct::CreateTopicsRequest::default()
            .with_topics(vec![
                ct::CreatableTopic::default()
                    .with_name(topic("orders"))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
                    .with_assignments(vec![assignment(0), assignment(1), assignment(2)]),
                ct::CreatableTopic::default()
                    .with_name(topic("payments"))
                    .with_num_partitions(3)
                    .with_replication_factor(2)
                    .with_configs(vec![
                        ct::CreatableTopicConfig::default()
                            .with_name(s("cleanup.policy"))
                            .with_value(Some(s("compact"))),
                        ct::CreatableTopicConfig::default()
                            .with_name(s("retention.ms"))
                            .with_value(None),
                    ]),
            ])
            .with_timeout_ms(30_000)
            .with_validate_only(true)
    }

    fn delete_topics(v: i16) -> dt::DeleteTopicsRequest {
        let req = dt::DeleteTopicsRequest::default().with_timeout_ms(30_000);
        if v >= 6 {
            req.with_topics(vec![
                dt::DeleteTopicState::default().with_name(Some(topic("orders"))),
                dt::DeleteTopicState::default()
                    .with_name(None)
                    .with_topic_id(uuid(4).topic_id),
            ])
        } else {
            req.with_topic_names(vec![topic("orders"), topic("payments")])
        }
    }

    fn offset_for_leader_epoch(v: i16) -> ofle::OffsetForLeaderEpochRequest {
        let partition = |i: i32| {
            ofle::OffsetForLeaderPartition::default()
                .with_partition(i)
                .with_current_leader_epoch(5)
                .with_leader_epoch(4)
        };
        let topic = |name| {
            ofle::OffsetForLeaderTopic::default()
                .with_topic(topic(name))
                .with_partitions(vec![partition(0), partition(1), partition(2)])
        };
        let req = ofle::OffsetForLeaderEpochRequest::default()
            .with_topics(vec![topic("orders"), topic("payments")]);
        if v >= 3 {
            req.with_replica_id(BrokerId(-1))
        } else {
            req
        }
    }

    fn alter_configs(_v: i16) -> acfg::AlterConfigsRequest {
        acfg::AlterConfigsRequest::default()
            .with_resources(vec![
                acfg::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("orders"))
                    .with_configs(vec![
                        acfg::AlterableConfig::default()
                            .with_name(s("retention.ms"))
                            .with_value(Some(s("1000"))),
                        acfg::AlterableConfig::default()
                            .with_name(s("cleanup.policy"))
                            .with_value(None),
                    ]),
                acfg::AlterConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("")),
            ])
            .with_validate_only(true)
    }

    fn incremental_alter_configs(_v: i16) -> iacfg::IncrementalAlterConfigsRequest {
        iacfg::IncrementalAlterConfigsRequest::default().with_resources(vec![
            iacfg::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("orders"))
                .with_configs(vec![
                    iacfg::AlterableConfig::default()
                        .with_name(s("cleanup.policy"))
                        .with_config_operation(2)
                        .with_value(Some(s("compact"))),
                    iacfg::AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_config_operation(1)
                        .with_value(None),
                ]),
        ])
    }

    fn describe_configs(v: i16) -> dcfg::DescribeConfigsRequest {
        let req = dcfg::DescribeConfigsRequest::default()
            .with_resources(vec![
                dcfg::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("orders"))
                    .with_configuration_keys(Some(vec![s("retention.ms"), s("cleanup.policy")])),
                dcfg::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("1"))
                    .with_configuration_keys(None),
            ])
            .with_include_synonyms(true);
        if v >= 3 {
            req.with_include_documentation(true)
        } else {
            req
        }
    }

    fn create_partitions(_v: i16) -> cp::CreatePartitionsRequest {
        let assignment = |a: i32| {
            cp::CreatePartitionsAssignment::default().with_broker_ids(vec![
                BrokerId(a),
                BrokerId(a + 1),
                BrokerId(a + 2),
            ])
        };
        cp::CreatePartitionsRequest::default()
            .with_topics(vec![
                cp::CreatePartitionsTopic::default()
                    .with_name(topic("orders"))
                    .with_count(6)
                    .with_assignments(Some(vec![assignment(1), assignment(2), assignment(3)])),
                cp::CreatePartitionsTopic::default()
                    .with_name(topic("payments"))
                    .with_count(4)
                    .with_assignments(None),
            ])
            .with_timeout_ms(30_000)
            .with_validate_only(false)
    }

    fn describe_cluster(v: i16) -> dc::DescribeClusterRequest {
        let req =
            dc::DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
        if v >= 2 {
            req.with_endpoint_type(1).with_include_fenced_brokers(true)
        } else {
            req
        }
    }

    fn delete_records(_v: i16) -> drr::DeleteRecordsRequest {
        drr::DeleteRecordsRequest::default()
            .with_topics(vec![drr::DeleteRecordsTopic::default()
                .with_name(topic("a"))
                .with_partitions(vec![
                    drr::DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(-1),
                    drr::DeleteRecordsPartition::default()
                        .with_partition_index(3)
                        .with_offset(1 << 40),
                ])])
            .with_timeout_ms(5_000)
    }

    fn describe_log_dirs(v: i16) -> dld::DescribeLogDirsRequest {
        // Every other version asks for everything (null topics).
        if v % 2 == 0 {
            return dld::DescribeLogDirsRequest::default().with_topics(None);
        }
        dld::DescribeLogDirsRequest::default().with_topics(Some(vec![
            dld::DescribableLogDirTopic::default()
                .with_topic(topic("a"))
                .with_partitions(vec![0, 1, 2]),
            dld::DescribableLogDirTopic::default().with_topic(topic("bb")),
        ]))
    }

    // ---- consumer groups ---------------------------------------------------------------

    fn group(v: &'static str) -> GroupId {
        GroupId(s(v))
    }

    fn offset_commit(v: i16) -> oc::OffsetCommitRequest {
        let partition = |i: i32, metadata: Option<StrBytes>| {
            let p = oc::OffsetCommitRequestPartition::default()
                .with_partition_index(i)
                .with_committed_offset(1000 + i64::from(i))
                .with_committed_metadata(metadata);
            if v >= 6 {
                p.with_committed_leader_epoch(3)
            } else {
                p
            }
        };
        let mut req = oc::OffsetCommitRequest::default()
            .with_group_id(group("g"))
            .with_generation_id_or_member_epoch(4)
            .with_member_id(s("member-1"))
            .with_topics(vec![
                oc::OffsetCommitRequestTopic::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![partition(0, Some(s("meta"))), partition(1, None)]),
                oc::OffsetCommitRequestTopic::default().with_name(topic("payments")),
            ]);
        if v >= 7 {
            req = req.with_group_instance_id(Some(s("instance-1")));
        }
        if v <= 4 {
            req = req.with_retention_time_ms(60_000);
        }
        req
    }

    fn offset_fetch(v: i16) -> of::OffsetFetchRequest {
        if v >= 8 {
            let g = |id, topics| {
                let g = of::OffsetFetchRequestGroup::default()
                    .with_group_id(group(id))
                    .with_topics(topics);
                if v >= 9 {
                    g.with_member_id(Some(s("m"))).with_member_epoch(3)
                } else {
                    g
                }
            };
            let topics = of::OffsetFetchRequestTopics::default()
                .with_name(topic("orders"))
                .with_partition_indexes(vec![0, 1, 2]);
            return of::OffsetFetchRequest::default()
                .with_groups(vec![g("g1", Some(vec![topics])), g("g2", None)])
                .with_require_stable(true);
        }
        let req = of::OffsetFetchRequest::default()
            .with_group_id(group("g"))
            .with_topics(Some(vec![of::OffsetFetchRequestTopic::default()
                .with_name(topic("orders"))
                .with_partition_indexes(vec![0, 1])]));
        if v >= 7 {
            req.with_require_stable(true)
        } else {
            req
        }
    }

    fn find_coordinator(v: i16) -> fc::FindCoordinatorRequest {
        let req = fc::FindCoordinatorRequest::default();
        let req = if v >= 4 {
            req.with_coordinator_keys(vec![s("g1"), s("g2")])
        } else {
            req.with_key(s("g1"))
        };
        if v >= 1 {
            req.with_key_type(0)
        } else {
            req
        }
    }

    fn join_group(v: i16) -> jg::JoinGroupRequest {
        let protocol = |name| {
            jg::JoinGroupRequestProtocol::default()
                .with_name(s(name))
                .with_metadata(Bytes::from_static(b"\0\x01subscription"))
        };
        let mut req = jg::JoinGroupRequest::default()
            .with_group_id(group("g"))
            .with_session_timeout_ms(45_000)
            .with_member_id(s("member-1"))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![protocol("range"), protocol("roundrobin")]);
        if v >= 1 {
            req = req.with_rebalance_timeout_ms(300_000);
        }
        if v >= 5 {
            req = req.with_group_instance_id(Some(s("instance-1")));
        }
        if v >= 8 {
            req = req.with_reason(Some(s("rebalance")));
        }
        req
    }

    fn heartbeat(v: i16) -> hb::HeartbeatRequest {
        let req = hb::HeartbeatRequest::default()
            .with_group_id(group("g"))
            .with_generation_id(3)
            .with_member_id(s("member-1"));
        if v >= 3 {
            req.with_group_instance_id(Some(s("instance-1")))
        } else {
            req
        }
    }

    fn leave_group(v: i16) -> lg::LeaveGroupRequest {
        let req = lg::LeaveGroupRequest::default().with_group_id(group("g"));
        if v <= 2 {
            return req.with_member_id(s("member-1"));
        }
        let member = |id, instance: Option<StrBytes>| {
            let m = lg::MemberIdentity::default()
                .with_member_id(s(id))
                .with_group_instance_id(instance);
            if v >= 5 {
                m.with_reason(Some(s("bye")))
            } else {
                m
            }
        };
        req.with_members(vec![member("m-1", None), member("", Some(s("i-2")))])
    }

    fn sync_group(v: i16) -> sg::SyncGroupRequest {
        let assignment = |id| {
            sg::SyncGroupRequestAssignment::default()
                .with_member_id(s(id))
                .with_assignment(Bytes::from_static(b"\0\x01assignment"))
        };
        let mut req = sg::SyncGroupRequest::default()
            .with_group_id(group("g"))
            .with_generation_id(3)
            .with_member_id(s("m-1"))
            .with_assignments(vec![assignment("m-1"), assignment("m-2")]);
        if v >= 3 {
            req = req.with_group_instance_id(Some(s("instance-1")));
        }
        if v >= 5 {
            req = req
                .with_protocol_type(Some(s("consumer")))
                .with_protocol_name(Some(s("range")));
        }
        req
    }

    fn describe_groups(v: i16) -> dgr::DescribeGroupsRequest {
        let req = dgr::DescribeGroupsRequest::default().with_groups(vec![group("a"), group("b")]);
        if v >= 3 {
            req.with_include_authorized_operations(true)
        } else {
            req
        }
    }

    fn list_groups(v: i16) -> lgr::ListGroupsRequest {
        let mut req = lgr::ListGroupsRequest::default();
        if v >= 4 {
            req = req.with_states_filter(vec![s("Stable"), s("Empty")]);
        }
        if v >= 5 {
            req = req.with_types_filter(vec![s("classic")]);
        }
        req
    }

    fn delete_groups(_v: i16) -> dg::DeleteGroupsRequest {
        dg::DeleteGroupsRequest::default().with_groups_names(vec![group("a"), group("")])
    }

    fn offset_delete(_v: i16) -> od::OffsetDeleteRequest {
        od::OffsetDeleteRequest::default()
            .with_group_id(group("g"))
            .with_topics(vec![od::OffsetDeleteRequestTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![
                    od::OffsetDeleteRequestPartition::default().with_partition_index(0),
                    od::OffsetDeleteRequestPartition::default().with_partition_index(7),
                ])])
    }

    fn init_producer_id(v: i16) -> ipi::InitProducerIdRequest {
        let req = ipi::InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(s("txn-1"))))
            .with_transaction_timeout_ms(60_000);
        if v >= 3 {
            req.with_producer_id(ProducerId(42)).with_producer_epoch(3)
        } else {
            req.with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
        }
    }

    fn cases_for<R: Request>(build: fn(i16) -> R) -> Vec<Case> {
        (R::VERSIONS.min..=R::VERSIONS.max)
            .map(|v| encode(&build(v), v))
            .collect()
    }

    /// One realistic request per supported (api, version), plus a few edge shapes.
    fn valid_cases() -> Vec<Case> {
        let mut cases = Vec::new();
        cases.extend(cases_for(produce));
        cases.extend(cases_for(fetch));
        cases.extend(cases_for(list_offsets));
        cases.extend(cases_for(metadata));
        cases.extend(cases_for(api_versions));
        cases.extend(cases_for(create_topics));
        cases.extend(cases_for(delete_topics));
        cases.extend(cases_for(offset_for_leader_epoch));
        cases.extend(cases_for(describe_configs));
        cases.extend(cases_for(alter_configs));
        cases.extend(cases_for(incremental_alter_configs));
        cases.extend(cases_for(create_partitions));
        cases.extend(cases_for(describe_cluster));
        cases.extend(cases_for(describe_log_dirs));
        cases.extend(cases_for(delete_records));
        cases.extend(cases_for(offset_commit));
        cases.extend(cases_for(offset_fetch));
        cases.extend(cases_for(find_coordinator));
        cases.extend(cases_for(join_group));
        cases.extend(cases_for(heartbeat));
        cases.extend(cases_for(leave_group));
        cases.extend(cases_for(sync_group));
        cases.extend(cases_for(describe_groups));
        cases.extend(cases_for(list_groups));
        cases.extend(cases_for(delete_groups));
        cases.extend(cases_for(offset_delete));
        cases.extend(cases_for(init_producer_id));
        // An idempotent producer's request: no transactional id.
        for v in 0..=5 {
            let req = init_producer_id(v).with_transactional_id(None);
            cases.push(encode(&req, v));
        }
        // OffsetFetch for all topics (null), v2-v7.
        for v in 2..=7 {
            let req = offset_fetch(v).with_topics(None);
            cases.push(encode(&req, v));
        }
        // Null and empty arrays, empty strings.
        for v in 0..=13 {
            cases.push(encode(&md::MetadataRequest::default().with_topics(None), v));
            cases.push(encode(
                &md::MetadataRequest::default().with_topics(Some(vec![])),
                v,
            ));
        }
        for v in 3..=13 {
            cases.push(encode(&pr::ProduceRequest::default(), v));
        }
        cases
    }

    // ---- the walker matches the codec on valid requests ---------------------------------

    #[test]
    fn table_matches_kafka_protocol_versions() {
        fn check<R: Request>() {
            let api = APIS.iter().find(|a| a.key == R::KEY).unwrap();
            assert_eq!((api.min, api.max), (R::VERSIONS.min, R::VERSIONS.max));
        }
        check::<pr::ProduceRequest>();
        check::<fe::FetchRequest>();
        check::<lo::ListOffsetsRequest>();
        check::<md::MetadataRequest>();
        check::<ApiVersionsRequest>();
        check::<ct::CreateTopicsRequest>();
        check::<dt::DeleteTopicsRequest>();
        check::<ofle::OffsetForLeaderEpochRequest>();
        check::<dcfg::DescribeConfigsRequest>();
        check::<acfg::AlterConfigsRequest>();
        check::<iacfg::IncrementalAlterConfigsRequest>();
        check::<cp::CreatePartitionsRequest>();
        check::<dc::DescribeClusterRequest>();
        check::<dld::DescribeLogDirsRequest>();
        check::<drr::DeleteRecordsRequest>();
        check::<oc::OffsetCommitRequest>();
        check::<of::OffsetFetchRequest>();
        check::<fc::FindCoordinatorRequest>();
        check::<jg::JoinGroupRequest>();
        check::<hb::HeartbeatRequest>();
        check::<lg::LeaveGroupRequest>();
        check::<sg::SyncGroupRequest>();
        check::<dgr::DescribeGroupsRequest>();
        check::<lgr::ListGroupsRequest>();
        check::<dg::DeleteGroupsRequest>();
        check::<od::OffsetDeleteRequest>();
        check::<ipi::InitProducerIdRequest>();
        assert_eq!(APIS.len(), 27);
        // Every served API is walked, and nothing else.
        for (key, min, max, _) in crate::protocol::SUPPORTED {
            let api = APIS.iter().find(|a| a.key == *key as i16);
            assert_eq!(api.map(|a| (a.min, a.max)), Some((*min, *max)), "{key:?}");
        }
    }

    #[test]
    fn every_version_walks_exactly_the_encoding() {
        let cases = valid_cases();
        for api in APIS {
            for v in api.min..=api.max {
                assert!(
                    cases.iter().any(|c| c.key == api.key && c.version == v),
                    "no case for key {} v{v}",
                    api.key
                );
            }
        }
        for c in &cases {
            let len = c.body.len();
            assert_eq!(
                walk_body(c.key, c.version, &c.body),
                Ok(len),
                "key {} v{}",
                c.key,
                c.version
            );
            assert!(check_request_body(c.key, c.version, &c.body).is_ok());
            assert_eq!(codec_len(c.key, c.version, &c.body), Some(len));
        }
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        for c in valid_cases() {
            let mut body = c.body.clone();
            body.extend_from_slice(&[0xff; 9]);
            assert_eq!(walk_body(c.key, c.version, &body), Ok(c.body.len()));
        }
    }

    #[test]
    fn unsupported_apis_and_versions_are_rejected() {
        let unsupported = |api_key, version| BoundsError::UnsupportedApi { api_key, version };
        for api in APIS {
            for v in [api.min - 1, api.max + 1, -1, i16::MAX] {
                assert_eq!(
                    check_request_body(api.key, v, &[]),
                    Err(unsupported(api.key, v))
                );
            }
        }
        // AddPartitionsToTxn, an unknown key.
        for key in [24, 1000, -1] {
            assert_eq!(
                check_request_body(key, 0, &[0; 64]),
                Err(unsupported(key, 0))
            );
        }
    }

    // ---- hostile lengths ----------------------------------------------------------------

    #[test]
    fn huge_counts_in_tiny_bodies_are_rejected() {
        let too_long = |field, count, remaining| BoundsError::ArrayTooLong {
            field,
            count,
            remaining,
        };
        // Metadata v0: topics = i32::MAX, then 4 bytes of junk -- the 8-byte bomb.
        let body = [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(
            check_request_body(3, 0, &body),
            Err(too_long("topics", i32::MAX as u64, 4))
        );
        // Metadata v12: compact topics = u32::MAX (count u32::MAX - 1).
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0];
        assert_eq!(
            check_request_body(3, 12, &body),
            Err(too_long("topics", u64::from(u32::MAX) - 1, 3))
        );
        // CreateTopics v2: topics = i32::MAX.
        let body = [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1];
        assert!(matches!(
            check_request_body(19, 2, &body),
            Err(BoundsError::ArrayTooLong { .. })
        ));
        // Produce v3 nested: one topic "t" whose partition_data claims i32::MAX elements.
        let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100, 0, 0, 0, 1, 0, 1, b't'];
        body.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(
            check_request_body(0, 3, &body),
            Err(too_long("partition_data", i32::MAX as u64, 0))
        );
        // Count fits one byte per element but not the element's minimum size: ListOffsets v1
        // partitions are >= 12 bytes each, so 3 partitions need 36 bytes, not 20.
        let mut body = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 3];
        body.extend_from_slice(&[0; 20]);
        assert_eq!(
            check_request_body(2, 1, &body),
            Err(too_long("partitions", 3, 20))
        );
        // Tagged-field count bomb: DescribeCluster v0 with u32::MAX tagged fields.
        let body = [1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0];
        assert_eq!(
            check_request_body(60, 0, &body),
            Err(too_long(TAGGED_FIELDS, u32::MAX.into(), 2))
        );
    }

    #[test]
    fn huge_strings_and_tag_sizes_are_rejected() {
        // Produce v3: transactional_id of 32767 bytes in a 10-byte body.
        let body = [0x7f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            check_request_body(0, 3, &body),
            Err(BoundsError::LengthTooLong {
                field: "transactional_id",
                len: 32767,
                remaining: 8
            })
        );
        // Produce v3: records of i32::MAX bytes.
        let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100, 0, 0, 0, 1, 0, 1, b't'];
        body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(
            check_request_body(0, 3, &body),
            Err(BoundsError::LengthTooLong {
                field: "records",
                len: i32::MAX as u64,
                remaining: 2
            })
        );
        // DescribeCluster v0: one tagged field whose size is u32::MAX.
        let body = [1, 1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f, 0];
        assert!(matches!(
            check_request_body(60, 0, &body),
            Err(BoundsError::LengthTooLong {
                len: 4_294_967_295,
                ..
            })
        ));
    }

    #[test]
    fn negative_lengths() {
        // ApiVersions v3: client_software_name as a compact null (0) is not allowed.
        assert_eq!(
            check_request_body(18, 3, &[0, 1, 0]),
            Err(BoundsError::NegativeLength {
                field: "client_software_name",
                len: -1
            })
        );
        // Produce v3: transactional_id -1 is null (fine), -2 is not.
        let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100, 0, 0, 0, 0];
        assert_eq!(check_request_body(0, 3, &body), Ok(()));
        body[1] = 0xfe;
        assert_eq!(
            check_request_body(0, 3, &body),
            Err(BoundsError::NegativeLength {
                field: "transactional_id",
                len: -2
            })
        );
        // CreateTopics v2: topics = -1 is not nullable.
        assert_eq!(
            check_request_body(19, 2, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0]),
            Err(BoundsError::NegativeLength {
                field: "topics",
                len: -1
            })
        );
        // Metadata v1: topics = -1 is null ("all topics").
        assert_eq!(check_request_body(3, 1, &[0xff, 0xff, 0xff, 0xff]), Ok(()));
    }

    #[test]
    fn varints_are_bounded() {
        // Metadata v9, empty topics (compact 1) in an overlong but legal 5-byte encoding.
        let body = [0x81, 0x80, 0x80, 0x80, 0x00, 0, 0, 0, 0];
        assert_eq!(walk_body(3, 9, &body), Ok(9));
        assert_eq!(codec_len(3, 9, &body), Some(9));
        // Six bytes, or a fifth byte carrying bits beyond u32: rejected.
        for body in [
            [0x81, 0x80, 0x80, 0x80, 0x80, 0x00, 0, 0],
            [0x81, 0x80, 0x80, 0x80, 0x10, 0x00, 0, 0],
        ] {
            assert_eq!(
                check_request_body(3, 9, &body),
                Err(BoundsError::BadVarint { field: "topics" })
            );
        }
        // Varint running off the end.
        assert_eq!(
            check_request_body(3, 9, &[0x80, 0x80]),
            Err(BoundsError::Truncated { field: "topics" })
        );
    }

    #[test]
    fn known_tagged_field_must_fill_its_declared_size() {
        // Fetch v12 with every array empty and one tagged field: cluster_id.
        let fixed = [0u8; 4 + 4 + 4 + 4 + 1 + 4 + 4];
        let body = |size: u8| {
            let mut b = fixed.to_vec();
            b.extend_from_slice(&[1, 1, 1]); // topics, forgotten_topics_data, rack_id ""
            b.extend_from_slice(&[1, 0, size, 3, b'a', b'b', 0, 0]); // 1 tag: 0, "ab"
            b
        };
        assert_eq!(walk_body(1, 12, &body(3)), Ok(fixed.len() + 3 + 6));
        assert_eq!(codec_len(1, 12, &body(3)), Some(fixed.len() + 3 + 6));
        // The codec would read "ab" inline and resume after it, ignoring the declared size,
        // so a mismatch would desynchronise it from the walker.
        assert_eq!(
            check_request_body(1, 12, &body(5)),
            Err(BoundsError::TaggedFieldSize {
                field: "cluster_id",
                declared: 5,
                actual: 3
            })
        );
        assert!(check_request_body(1, 12, &body(2)).is_err());
        // Tag 1 (replica_state) is unknown before v15, so it is skipped by size like any other.
        let mut b = fixed.to_vec();
        b.extend_from_slice(&[1, 1, 1, 1, 1, 2, 0xaa, 0xbb]);
        assert_eq!(walk_body(1, 12, &b), Ok(b.len()));
    }

    // ---- truncation and fuzzing ---------------------------------------------------------

    #[test]
    fn every_proper_prefix_is_rejected() {
        let mut checked = 0;
        for c in valid_cases() {
            for n in 0..c.body.len() {
                assert!(
                    check_request_body(c.key, c.version, &c.body[..n]).is_err(),
                    "key {} v{} prefix {n}/{}",
                    c.key,
                    c.version,
                    c.body.len()
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for api in APIS {
            for v in api.min..=api.max {
                for _ in 0..300 {
                    let len = rng.below(48);
                    let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    accepted += usize::from(check_against_codec(api.key, v, &body));
                }
            }
        }
        // Small bodies of ApiVersions v0-2 and DescribeCluster are almost always valid.
        assert!(accepted > 0);
    }

    #[test]
    fn mutated_valid_requests_agree_with_codec() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut tried, mut accepted) = (0, 0);
        for c in valid_cases().iter().filter(|c| !c.body.is_empty()) {
            for _ in 0..400 {
                let mut body = c.body.clone();
                let i = rng.below(body.len());
                body[i] = rng.next() as u8;
                tried += 1;
                accepted += usize::from(check_against_codec(c.key, c.version, &body));
            }
        }
        assert!(
            tried > 30_000 && accepted > tried / 10,
            "{accepted}/{tried}"
        );
    }

    #[test]
    fn huge_counts_at_every_offset_are_rejected_or_harmless() {
        // Overwrite each position with a maximal classic or compact length. Whatever the
        // walker accepts is decoded by the codec, which would abort on a bogus huge count.
        for c in valid_cases() {
            for i in 0..c.body.len() {
                for bomb in [
                    &[0x7f, 0xff, 0xff, 0xff][..],
                    &[0xff, 0xff, 0xff, 0xff, 0x0f],
                ] {
                    let mut body = c.body.clone();
                    let end = (i + bomb.len()).min(body.len());
                    body[i..end].copy_from_slice(&bomb[..end - i]);
                    check_against_codec(c.key, c.version, &body);
                }
            }
        }
    }

    #[test]
    fn element_total_is_capped_against_memory_amplification() {
        // Metadata v9 (flexible): null-named topics are 2 wire bytes but 72 decoded bytes.
        let topics = |n: u32| {
            let mut body = Vec::new();
            let mut v = n + 1;
            while v >= 0x80 {
                body.push((v as u8) | 0x80);
                v >>= 7;
            }
            body.push(v as u8);
            for _ in 0..n {
                body.extend_from_slice(&[0x00, 0x00]);
            }
            body.extend_from_slice(&[1, 0, 0, 0]);
            body
        };
        let over = topics(MAX_ELEMENTS as u32 + 1);
        assert_eq!(
            check_request_body(3, 9, &over),
            Err(BoundsError::TooManyElements)
        );
    }
}
