//! Raft transport between controller replicas: TCP, one request/response at a time per
//! connection, each message a 4-byte big-endian length and a serde_json body. The control
//! plane moves a few small entries per reconfiguration, so simplicity beats throughput here.
//! Frames are bounded ([`MAX_FRAME`]), every I/O has a timeout, and a failed connection is
//! dropped and re-dialled on the next RPC (openraft retries RPCs itself).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::store::{ControllerRaft, TypeConfig};

/// Largest frame accepted from a peer: a config with thousands of switches still fits.
pub const MAX_FRAME: usize = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    #[error("bad frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out")]
    Timeout,
    #[error("unknown peer {0}")]
    UnknownPeer(u64),
}

#[derive(Serialize, Deserialize)]
enum RpcRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Serialize, Deserialize)]
enum RpcResponse {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

async fn timed<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| NetError::Timeout)?
}

pub async fn write_frame<T: Serialize>(s: &mut TcpStream, msg: &T) -> Result<(), NetError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(NetError::FrameTooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| NetError::FrameTooLarge(body.len()))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).await?;
    Ok(())
}

pub async fn read_frame<T: DeserializeOwned>(s: &mut TcpStream) -> Result<T, NetError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    // Checked before allocating: a peer cannot make us reserve more than MAX_FRAME.
    if len > MAX_FRAME {
        return Err(NetError::FrameTooLarge(len));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Serves Raft RPCs from peers until the listener fails.
pub async fn serve(listener: TcpListener, raft: ControllerRaft) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "raft accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let raft = raft.clone();
        tokio::spawn(
            async move {
                if let Err(e) = serve_conn(stream, raft).await {
                    tracing::debug!(error = %e, "raft connection closed");
                }
            }
            .instrument(tracing::debug_span!("raft_conn", %peer)),
        );
    }
}

async fn serve_conn(mut stream: TcpStream, raft: ControllerRaft) -> Result<(), NetError> {
    let _ = stream.set_nodelay(true);
    loop {
        // No timeout on waiting for the next request: idle connections are normal. A peer
        // that stalls mid-frame is cut off by the bounded read below.
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(NetError::FrameTooLarge(len));
        }
        let mut body = vec![0u8; len];
        timed(IO_TIMEOUT, async {
            stream.read_exact(&mut body).await?;
            Ok(())
        })
        .await?;
        let req: RpcRequest = serde_json::from_slice(&body)?;
        let resp = match req {
            RpcRequest::Append(r) => RpcResponse::Append(raft.append_entries(r).await),
            RpcRequest::Vote(r) => RpcResponse::Vote(raft.vote(r).await),
            RpcRequest::Snapshot(r) => RpcResponse::Snapshot(raft.install_snapshot(r).await),
        };
        timed(IO_TIMEOUT, write_frame(&mut stream, &resp)).await?;
    }
}

/// Creates one [`PeerClient`] per target; addresses come from the static `--peers` list.
#[derive(Clone)]
pub struct TcpNetwork {
    pub peers: BTreeMap<u64, SocketAddr>,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        // The membership's node address wins; the static list is the fallback.
        let addr = node
            .addr
            .parse()
            .ok()
            .or_else(|| self.peers.get(&target).copied());
        PeerClient {
            target,
            addr,
            conn: None,
        }
    }
}

pub struct PeerClient {
    target: u64,
    addr: Option<SocketAddr>,
    conn: Option<TcpStream>,
}

impl PeerClient {
    async fn call(&mut self, req: &RpcRequest, timeout: Duration) -> Result<RpcResponse, NetError> {
        let addr = self.addr.ok_or(NetError::UnknownPeer(self.target))?;
        if self.conn.is_none() {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| NetError::Timeout)??;
            let _ = s.set_nodelay(true);
            self.conn = Some(s);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(NetError::Timeout);
        };
        let result = timed(timeout, async {
            write_frame(conn, req).await?;
            read_frame::<RpcResponse>(conn).await
        })
        .await;
        if result.is_err() {
            // The stream may hold half a frame: never reuse it.
            self.conn = None;
        }
        result
    }

    /// Every transport failure is reported as Unreachable: openraft then backs off (500 ms)
    /// before retrying that peer, instead of retrying a dead peer in a tight loop that
    /// starves the leader's controller task.
    fn net_err<E: std::error::Error>(e: NetError) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

fn rpc_timeout(option: &RPCOption) -> Duration {
    option.hard_ttl().min(IO_TIMEOUT)
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .call(&RpcRequest::Append(rpc), rpc_timeout(&option))
            .await
        {
            Ok(RpcResponse::Append(Ok(r))) => Ok(r),
            Ok(RpcResponse::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(Self::net_err(NetError::Json(serde::de::Error::custom(
                "mismatched response",
            )))),
            Err(e) => Err(Self::net_err(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(&RpcRequest::Snapshot(rpc), rpc_timeout(&option))
            .await
        {
            Ok(RpcResponse::Snapshot(Ok(r))) => Ok(r),
            Ok(RpcResponse::Snapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(Self::net_err(NetError::Json(serde::de::Error::custom(
                "mismatched response",
            )))),
            Err(e) => Err(Self::net_err(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .call(&RpcRequest::Vote(rpc), rpc_timeout(&option))
            .await
        {
            Ok(RpcResponse::Vote(Ok(r))) => Ok(r),
            Ok(RpcResponse::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(Self::net_err(NetError::Json(serde::de::Error::custom(
                "mismatched response",
            )))),
            Err(e) => Err(Self::net_err(e)),
        }
    }
}
