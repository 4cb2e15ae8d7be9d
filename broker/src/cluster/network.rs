//! openraft's network traits over the transport, for partition groups and the metadata
//! group alike: a `Route` says how a group's RPCs are wrapped into transport requests.
//!
//! A peer that cannot be reached (connect refused, connection lost, a peer that does not host
//! the group yet) is reported as `Unreachable`, so openraft backs off (500 ms) instead of
//! retrying in a tight loop; a request that merely took too long is a `Timeout` (retried at
//! the next heartbeat, no backoff). An AppendEntries whose encoding exceeds `MAX_APPEND_BYTES` is answered with
//! `PayloadTooLarge`, and openraft resends it with fewer entries.

use std::sync::Arc;

use bincode::Options;
use openraft::error::{
    InstallSnapshotError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use openraft::{BasicNode, RaftTypeConfig};
use raft_support::{PreVoteNetwork, PreVoteRequest, PreVoteResponse};

use super::metadata::MetaConfig;
use super::transport::{Transport, TransportError};
use super::wire::{GroupKey, Request, Response, MAX_APPEND_BYTES};
use crate::raft::TypeConfig;

/// How one kind of Raft group's RPCs travel.
pub trait Route<C: RaftTypeConfig>: Clone + Send + Sync + 'static {
    fn append(&self, rpc: AppendEntriesRequest<C>) -> Request;
    fn vote(&self, rpc: VoteRequest<u64>) -> Request;
    fn snapshot(&self, rpc: InstallSnapshotRequest<C>) -> Request;
    fn pre_vote(&self, rpc: PreVoteRequest) -> Request;
}

/// A partition's group.
#[derive(Clone, Copy)]
pub struct PartitionRoute(pub GroupKey);

impl Route<TypeConfig> for PartitionRoute {
    fn append(&self, rpc: AppendEntriesRequest<TypeConfig>) -> Request {
        Request::Append(self.0, rpc)
    }
    fn vote(&self, rpc: VoteRequest<u64>) -> Request {
        Request::Vote(self.0, rpc)
    }
    fn snapshot(&self, rpc: InstallSnapshotRequest<TypeConfig>) -> Request {
        Request::Snapshot(self.0, rpc)
    }
    fn pre_vote(&self, rpc: PreVoteRequest) -> Request {
        Request::PreVote(self.0, rpc)
    }
}

/// The cluster metadata group.
#[derive(Clone, Copy)]
pub struct MetaRoute;

impl Route<MetaConfig> for MetaRoute {
    fn append(&self, rpc: AppendEntriesRequest<MetaConfig>) -> Request {
        Request::MetaAppend(rpc)
    }
    fn vote(&self, rpc: VoteRequest<u64>) -> Request {
        Request::MetaVote(rpc)
    }
    fn snapshot(&self, rpc: InstallSnapshotRequest<MetaConfig>) -> Request {
        Request::MetaSnapshot(rpc)
    }
    fn pre_vote(&self, rpc: PreVoteRequest) -> Request {
        Request::MetaPreVote(rpc)
    }
}

#[derive(Clone)]
pub struct Network<R> {
    transport: Arc<Transport>,
    route: R,
}

impl<R> Network<R> {
    pub fn new(transport: Arc<Transport>, route: R) -> Self {
        Self { transport, route }
    }
}

/// Pre-vote requests (see `raft_support::prevote`) travel on the control lane like votes.
/// Any failure to get an answer counts as a refusal, so a node that reaches nobody never
/// campaigns.
impl<C, R> PreVoteNetwork<C> for Network<R>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    R: Route<C>,
{
    async fn pre_vote(
        &self,
        target: u64,
        node: BasicNode,
        request: PreVoteRequest,
        ttl: std::time::Duration,
    ) -> Result<PreVoteResponse, String> {
        let rpc = self.route.pre_vote(request);
        match self.transport.call(target, &node.addr, &rpc, ttl).await {
            Ok(Response::PreVote(answer)) => Ok(answer),
            Ok(Response::NoGroup) => Err("does not host the group".to_string()),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

pub struct PeerClient<R> {
    transport: Arc<Transport>,
    route: R,
    target: u64,
    addr: String,
}

impl<C, R> RaftNetworkFactory<C> for Network<R>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    R: Route<C>,
{
    type Network = PeerClient<R>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        PeerClient {
            transport: Arc::clone(&self.transport),
            route: self.route.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

fn unreachable<E: std::error::Error>(why: impl ToString) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&Failure(why.to_string())))
}

impl<R> PeerClient<R> {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        action: RPCTypes,
        option: &RPCOption,
    ) -> Result<Response, RPCError<u64, BasicNode, E>> {
        match self
            .transport
            .call(self.target, &self.addr, &request, option.hard_ttl())
            .await
        {
            Ok(Response::NoGroup) => Err(unreachable(format!(
                "node {} does not host this group yet",
                self.target
            ))),
            Ok(r) => Ok(r),
            Err(TransportError::Timeout(_)) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.transport.node_id(),
                target: self.target,
                timeout: option.hard_ttl(),
            })),
            Err(e) => Err(unreachable(e)),
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<u64, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn encoded_size(request: &Request) -> usize {
    bincode::DefaultOptions::new()
        .serialized_size(request)
        .map_or(usize::MAX, |n| n as usize)
}

impl<C, R> RaftNetwork<C> for PeerClient<R>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    R: Route<C>,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let entries = rpc.entries.len();
        let request = self.route.append(rpc);
        if entries > 1 && encoded_size(&request) > MAX_APPEND_BYTES {
            let hint = (entries / 2) as u64;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        match self.call(request, RPCTypes::AppendEntries, &option).await? {
            Response::Append(Ok(r)) => Ok(r),
            Response::Append(Err(e)) => Err(self.remote(e)),
            other => Err(unreachable(format!("unexpected answer {other:?}"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(self.route.snapshot(rpc), RPCTypes::InstallSnapshot, &option)
            .await?
        {
            Response::Snapshot(Ok(r)) => Ok(r),
            Response::Snapshot(Err(e)) => Err(self.remote(e)),
            other => Err(unreachable(format!("unexpected answer {other:?}"))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .call(self.route.vote(rpc), RPCTypes::Vote, &option)
            .await?
        {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(self.remote(e)),
            other => Err(unreachable(format!("unexpected answer {other:?}"))),
        }
    }
}
