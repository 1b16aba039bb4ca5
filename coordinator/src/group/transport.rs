//! The group's own connections: a small libp2p swarm (QUIC, or TCP with Noise and Yamux) per member,
//! on the address its `--group` entry names, keyed by the member's own identity. Raft's messages
//! travel on one request-response protocol; a request is served only from a peer id that is a
//! member (of the configured group or the current membership), so the connection's authenticated
//! peer id is the member's credential.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, RwLock};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use hearth_net::libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use hearth_net::libp2p::swarm::SwarmEvent;
use hearth_net::libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, tcp, yamux};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Member, MemberStatus, NodeId, Raft, TypeConfig};
use crate::limits::{
    GROUP_IDLE_CONNECTION_TIMEOUT, GROUP_MESSAGE_BYTES_MAX, GROUP_QUEUE_MAX, GROUP_REQUEST_TIMEOUT,
};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/group/1.0.0");

/// What one member asks another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum GroupRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Its role, log position and API, for `GET /v1/group`.
    Status,
}

/// The answer; a Raft error travels as its message (the asker retries, as on a lost message).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum GroupResponse {
    Append(Result<AppendEntriesResponse<NodeId>, String>),
    Vote(Result<VoteResponse<NodeId>, String>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, String>),
    Status(MemberStatus),
    Refused(String),
}

/// Length-prefixed postcard, bounded by [`GROUP_MESSAGE_BYTES_MAX`].
#[derive(Clone, Default)]
pub(crate) struct Codec;

async fn read_message<T: AsyncRead + Unpin + Send, M: serde::de::DeserializeOwned>(
    io: &mut T,
) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > GROUP_MESSAGE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("group message of {len} bytes, over {GROUP_MESSAGE_BYTES_MAX}"),
        ));
    }
    // Grown as the bytes arrive, not allocated at the length claimed: the length comes before
    // anyone knows whether the sender is a member.
    let mut bytes = Vec::new();
    io.take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("group message cut short: {} of {len} bytes", bytes.len()),
        ));
    }
    postcard::from_bytes(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_message<T: AsyncWrite + Unpin + Send, M: Serialize>(
    io: &mut T,
    message: &M,
) -> io::Result<()> {
    let bytes =
        postcard::to_stdvec(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if bytes.len() > GROUP_MESSAGE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "group message of {} bytes, over {GROUP_MESSAGE_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = GroupRequest;
    type Response = GroupResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<GroupRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<GroupResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: GroupRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: GroupResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &response).await
    }
}

type Behaviour = request_response::Behaviour<Codec>;

/// A request to send, and where its answer goes.
struct Outbound {
    to: PeerId,
    addrs: Vec<Multiaddr>,
    request: GroupRequest,
    reply: oneshot::Sender<Result<GroupResponse, String>>,
}

/// The sending half, shared by Raft's network clients.
#[derive(Clone)]
pub(crate) struct Transport {
    tx: mpsc::Sender<Outbound>,
}

impl Transport {
    /// Ask `member`; an error when it cannot be reached or does not answer in time.
    pub(crate) async fn ask(
        &self,
        member: &Member,
        request: GroupRequest,
    ) -> Result<GroupResponse, String> {
        let (peer, addr) = member.parsed()?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Outbound {
                to: peer,
                addrs: vec![addr],
                request,
                reply,
            })
            .await
            .map_err(|_| "the group's swarm has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the group's swarm has stopped".to_string())?
    }
}

/// Who may speak to this member: the peer ids of the group's members.
pub(crate) type Allowed = Arc<RwLock<HashSet<PeerId>>>;

/// Start the group's swarm for `key`, listening on `listen`; inbound requests from `allowed`
/// peers are served by `raft` (once it is set) and `status`.
pub(crate) fn start(
    key: &hearth_protocol::SecretKey,
    listen: Multiaddr,
    allowed: Allowed,
    raft: Arc<tokio::sync::OnceCell<Raft>>,
    status: Arc<dyn Fn() -> MemberStatus + Send + Sync>,
) -> crate::Result<Transport> {
    let mut swarm: Swarm<Behaviour> =
        hearth_net::libp2p::SwarmBuilder::with_existing_identity(hearth_net::keypair(key))
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| crate::Error::Swarm(Box::new(e)))?
            .with_quic()
            .with_behaviour(|_| {
                request_response::Behaviour::new(
                    [(PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(GROUP_REQUEST_TIMEOUT),
                )
            })
            .map_err(|e| crate::Error::Swarm(Box::new(e)))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(GROUP_IDLE_CONNECTION_TIMEOUT))
            .build();
    swarm
        .listen_on(listen.clone())
        .map_err(|e| crate::Error::Swarm(Box::new(e)))?;
    let (tx, mut outbound) = mpsc::channel::<Outbound>(GROUP_QUEUE_MAX);
    let (answers_tx, mut answers) = mpsc::channel::<(
        request_response::ResponseChannel<GroupResponse>,
        GroupResponse,
    )>(GROUP_QUEUE_MAX);
    tokio::spawn(async move {
        let mut waiting: HashMap<
            OutboundRequestId,
            oneshot::Sender<Result<GroupResponse, String>>,
        > = HashMap::new();
        loop {
            tokio::select! {
                Some(out) = outbound.recv() => {
                    let id = swarm.behaviour_mut().send_request_with_addresses(&out.to, out.request, out.addrs);
                    waiting.insert(id, out.reply);
                }
                Some((channel, response)) = answers.recv() => {
                    let _ = swarm.behaviour_mut().send_response(channel, response);
                }
                event = swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        tracing::info!(%address, "group listening");
                    }
                    SwarmEvent::Behaviour(request_response::Event::Message { peer, message, .. }) => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let permitted = allowed.read().unwrap_or_else(|e| e.into_inner()).contains(&peer);
                            if !permitted {
                                tracing::debug!(%peer, "group request from a peer that is not a member refused");
                                let _ = swarm.behaviour_mut().send_response(channel, GroupResponse::Refused("not a member of this coordinator group".into()));
                                continue;
                            }
                            let (raft, status, answers) = (raft.clone(), status.clone(), answers_tx.clone());
                            tokio::spawn(async move {
                                let response = serve(raft.get(), &*status, request).await;
                                let _ = answers.send((channel, response)).await;
                            });
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some(reply) = waiting.remove(&request_id) {
                                let _ = reply.send(Ok(response));
                            }
                        }
                    },
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                        if let Some(reply) = waiting.remove(&request_id) {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                    _ => {}
                },
                else => break,
            }
        }
    });
    Ok(Transport { tx })
}

/// Serve one member's request.
async fn serve(
    raft: Option<&Raft>,
    status: &(dyn Fn() -> MemberStatus + Send + Sync),
    request: GroupRequest,
) -> GroupResponse {
    let Some(raft) = raft else {
        return GroupResponse::Refused("this member is starting".into());
    };
    match request {
        GroupRequest::Append(rpc) => {
            GroupResponse::Append(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
        }
        GroupRequest::Vote(rpc) => {
            GroupResponse::Vote(raft.vote(rpc).await.map_err(|e| e.to_string()))
        }
        GroupRequest::Snapshot(rpc) => {
            GroupResponse::Snapshot(raft.install_snapshot(rpc).await.map_err(|e| e.to_string()))
        }
        GroupRequest::Status => GroupResponse::Status(status()),
    }
}

/// Raft's network: one client per member, all over the [`Transport`].
pub(crate) struct Network {
    pub(crate) transport: Transport,
}

pub(crate) struct Client {
    transport: Transport,
    target: NodeId,
    member: Member,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Client {
        Client {
            transport: self.transport.clone(),
            target,
            member: node.clone(),
        }
    }
}

fn unreachable<E: std::error::Error>(why: String) -> RPCError<NodeId, Member, E> {
    RPCError::Unreachable(Unreachable::new(&io::Error::other(why)))
}

fn remote<E: std::error::Error>(why: String) -> RPCError<NodeId, Member, E> {
    RPCError::Network(NetworkError::new(&io::Error::other(why)))
}

impl Client {
    async fn call<E: std::error::Error>(
        &self,
        request: GroupRequest,
    ) -> Result<GroupResponse, RPCError<NodeId, Member, E>> {
        match self.transport.ask(&self.member, request).await {
            Ok(GroupResponse::Refused(why)) => Err(remote(why)),
            Ok(response) => Ok(response),
            Err(why) => Err(unreachable(format!("member {}: {why}", self.target))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(GroupRequest::Append(rpc)).await? {
            GroupResponse::Append(answer) => answer.map_err(remote),
            other => Err(remote(format!("unexpected answer {other:?}"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(GroupRequest::Snapshot(rpc)).await? {
            GroupResponse::Snapshot(answer) => answer.map_err(remote),
            other => Err(remote(format!("unexpected answer {other:?}"))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(GroupRequest::Vote(rpc)).await? {
            GroupResponse::Vote(answer) => answer.map_err(remote),
            other => Err(remote(format!("unexpected answer {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message's length is checked against the bound before anything is read, a message shorter
    /// than it claims is refused, and one written is read back whole.
    #[test]
    fn messages_over_the_bound_or_cut_short_are_refused() {
        futures::executor::block_on(async {
            let over = ((GROUP_MESSAGE_BYTES_MAX + 1) as u32).to_be_bytes();
            let mut io = futures::io::Cursor::new(over.to_vec());
            let error = read_message::<_, GroupRequest>(&mut io)
                .await
                .expect_err("over");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");

            let mut short = 100_000_000u32.to_be_bytes().to_vec();
            short.extend_from_slice(&[1, 2, 3]);
            let mut io = futures::io::Cursor::new(short);
            let error = read_message::<_, GroupRequest>(&mut io)
                .await
                .expect_err("short");
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");

            let mut written = futures::io::Cursor::new(Vec::new());
            write_message(&mut written, &GroupRequest::Status)
                .await
                .expect("write");
            let mut io = futures::io::Cursor::new(written.into_inner());
            let read = read_message::<_, GroupRequest>(&mut io)
                .await
                .expect("read");
            assert!(matches!(read, GroupRequest::Status));
        });
    }
}
