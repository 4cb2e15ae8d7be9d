//! `ring-controller`: one replica of the sequencer ring's control plane.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ring_controller::controller::{self, ControllerConfig, Metrics};
use ring_controller::http::{self, AdminState};
use ring_controller::replica::Replica;
use ring_controller::store::RosterEntry;
use sequencer_p4::control::DEFAULT_MAX_VISIT;
use tokio::net::{TcpListener, UdpSocket};

/// Control plane of the sequencer ring: stores the ring configuration in a 3-replica Raft
/// group and, on the leader, seals/installs/injects epochs on the switches.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This replica's Raft id (must appear in --peers).
    #[arg(long, env = "RING_CTRL_ID")]
    id: u64,
    /// All replicas, this one included: id=host:port of their --raft-listen. Used to form
    /// the group on first start (the lowest id initializes it); afterwards the membership
    /// lives in the Raft log and changes only through `POST /members`.
    #[arg(long, env = "RING_CTRL_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Start as a new replica of an existing group: initialize nothing and wait until the
    /// leader adds this replica (`POST /members?add=ID=HOST:PORT` on the leader).
    #[arg(long, env = "RING_CTRL_JOIN")]
    join: bool,
    /// TCP address for Raft RPCs from peers.
    #[arg(long, env = "RING_CTRL_RAFT_LISTEN")]
    raft_listen: SocketAddr,
    /// UDP address speaking the sequencer wire protocol to switches.
    #[arg(long, env = "RING_CTRL_UDP_LISTEN")]
    udp_listen: SocketAddrV4,
    /// HTTP admin endpoint: GET /ring, GET /metrics, POST /resize?switches=...
    #[arg(long, env = "RING_CTRL_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// Initial roster, in ring order: id=host:port of each switch's data plane.
    #[arg(long, env = "RING_CTRL_SWITCHES", value_delimiter = ',')]
    switches: Vec<String>,
    /// Directory for this replica's Raft state (raft.json). Omit to keep it in memory.
    #[arg(long, env = "RING_CTRL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// No progress for this many ms: the token is presumed lost.
    #[arg(long, default_value_t = 1000)]
    token_timeout_ms: u64,
    /// Most numbers per token visit (W), and so per request. Brokers refuse a ring whose W
    /// is below their per-batch record limit (1,000,000); the default leaves room for a
    /// partition's whole queue of batches in one request.
    #[arg(long, default_value_t = DEFAULT_MAX_VISIT)]
    max_visit: u32,
    /// Progress alarm every 2^report_shift token hops.
    #[arg(long, default_value_t = 12)]
    report_shift: u8,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn parse_pairs<T: std::str::FromStr>(items: &[String], what: &str) -> anyhow::Result<Vec<(u64, T)>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    items
        .iter()
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("{what} entry {p:?} is not id=host:port"))?;
            Ok((
                id.trim()
                    .parse()
                    .with_context(|| format!("{what} id {id:?}"))?,
                addr.trim()
                    .parse()
                    .with_context(|| format!("{what} address {addr:?}"))?,
            ))
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn".into());
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let peers: BTreeMap<u64, SocketAddr> =
        parse_pairs(&args.peers, "--peers")?.into_iter().collect();
    if !args.join && !peers.contains_key(&args.id) {
        bail!(
            "--id {} is not in --peers (a replica joining an existing group takes --join)",
            args.id
        );
    }
    let mut roster = Vec::new();
    for (id, addr) in parse_pairs::<SocketAddrV4>(&args.switches, "--switches")? {
        let switch_id = u16::try_from(id).context("switch id above 65535")?;
        roster.push(RosterEntry { switch_id, addr });
    }

    let raft_listener = TcpListener::bind(args.raft_listen)
        .await
        .with_context(|| format!("bind raft {}", args.raft_listen))?;
    let udp = UdpSocket::bind(args.udp_listen)
        .await
        .with_context(|| format!("bind udp {}", args.udp_listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("bind admin {}", args.admin_listen))?;

    let token_timeout = Duration::from_millis(args.token_timeout_ms);
    let cfg = ControllerConfig {
        token_timeout,
        give_up: token_timeout + token_timeout / 2,
        max_visit: args.max_visit,
        report_shift: args.report_shift,
        initial_roster: roster,
        ..ControllerConfig::default()
    };
    if let Err(e) = cfg.core().validate() {
        bail!("--max-visit / --token-timeout-ms: {e}");
    }
    if args.max_visit < 1_000_000 {
        tracing::warn!(
            max_visit = args.max_visit,
            "W is below the broker's per-batch record limit (1000000): brokers will refuse this ring"
        );
    }

    let replica = if args.join {
        Replica::join(args.id, raft_listener, args.data_dir.clone()).await?
    } else {
        Replica::start(args.id, peers, raft_listener, args.data_dir.clone()).await?
    };
    let metrics = Arc::new(Metrics::default());
    let (admin, ctrl_task) = controller::spawn(replica.clone(), udp, cfg, metrics.clone());
    tracing::info!(
        id = args.id,
        raft = %args.raft_listen,
        udp = %args.udp_listen,
        admin = %args.admin_listen,
        "ring-controller started"
    );
    let http_task = tokio::spawn(http::serve(
        admin_listener,
        AdminState {
            replica,
            metrics,
            admin,
        },
    ));
    tokio::select! {
        r = ctrl_task => bail!("controller loop ended: {r:?}"),
        r = http_task => bail!("admin endpoint ended: {r:?}"),
        r = tokio::signal::ctrl_c() => {
            r.context("signal handler")?;
            tracing::info!("interrupted; exiting");
            Ok(())
        }
    }
}
