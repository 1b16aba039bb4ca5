//! A coordinator group: three (or five) coordinators that replicate the journal with Raft, so the
//! swarm keeps going when any one of them (the leader included) goes away.
//!
//! Raft is [openraft](https://docs.rs/openraft) 0.9: a maintained, async (tokio) implementation
//! whose storage and network are traits, so the journal's own redb file holds the Raft log beside
//! the journal ([`store`]) and the members talk over libp2p with their own identities
//! ([`transport`]); membership changes go through joint consensus. (raft-rs, TiKV's, is the other
//! mature one, but leaves the event loop, timers and message plumbing to the application.)
//!
//! ```text
//!  member (follower)          member (leader)                         member (follower)
//!  raft ◀──── append ──────── raft ◀── client_write(batches) ── journal committer ◀── Work
//!  journal.redb (applied)     journal.redb (applied)  ──── append ───▶ raft, journal.redb
//!  HTTP: /v1/group, else      HTTP API, swarm, scheduler, sessions:
//!  307 to the leader          the lone coordinator's code, unchanged
//! ```
//!
//! Only the leader runs the coordinator proper: the swarm the nodes join (under the group's one
//! swarm identity, so to the nodes the coordinator is one peer whichever member leads), the
//! scheduler rebuilt from the journal, the HTTP API. Its journal hands every batch of facts to
//! Raft and counts it durable only once a quorum has it and it is applied here, so nothing is
//! acknowledged that a new leader would not know. A member that becomes leader replays its
//! journal as a restarted coordinator does and takes over; one that stops being leader stops its
//! coordinator and goes back to following. Followers answer `GET /v1/group` and send every other
//! API request to the leader (307, so a client re-sends it there with its method and body).

pub(crate) mod store;
mod transport;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use hearth_net::libp2p::multiaddr::Protocol;
use hearth_net::libp2p::{Multiaddr, PeerId};
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::journal::{Batch, Ticket};
use crate::limits::{
    GROUP_APPEND_ENTRIES_MAX, GROUP_CATCH_UP_WAIT, GROUP_ELECTION_TIMEOUT_MS, GROUP_HEARTBEAT_MS,
    GROUP_MEMBERS_MAX, GROUP_STATUS_TIMEOUT,
};
use crate::{Error, Result};

/// A member's Raft id: the first 8 bytes of the BLAKE3 of its peer id.
pub type NodeId = u64;

/// A member as Raft's membership keeps it: its peer id and the address of its group swarm.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its peer id (base58).
    pub peer_id: String,
    /// Its group address, ending in `/p2p/PEER_ID`.
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

impl Member {
    /// A member from its address, which must end in `/p2p/PEER_ID`.
    pub fn parse(addr: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Refused(format!(
                "group member {addr:?}: {why} (give each member's group address, such as /ip4/10.0.0.2/udp/7081/quic-v1/p2p/12D3KooW…)"
            ))
        };
        let parsed: Multiaddr = addr.parse().map_err(|_| bad("not a multiaddr"))?;
        let Some(Protocol::P2p(peer)) = parsed.iter().last() else {
            return Err(bad("it does not end in /p2p/PEER_ID"));
        };
        hearth_net::from_libp2p_peer_id(&peer)
            .ok_or_else(|| bad("its peer id is not an ed25519 key"))?;
        Ok(Self {
            peer_id: peer.to_string(),
            addr: addr.to_string(),
        })
    }

    fn parsed(&self) -> std::result::Result<(PeerId, Multiaddr), String> {
        let addr: Multiaddr = self.addr.parse().map_err(|e| format!("{e}"))?;
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Ok((peer, addr)),
            _ => Err(format!("{} does not end in /p2p/PEER_ID", self.addr)),
        }
    }

    /// Its Raft id.
    pub fn node_id(&self) -> NodeId {
        node_id(&self.peer_id)
    }
}

fn node_id(peer_id: &str) -> NodeId {
    let hash = blake3::hash(peer_id.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 of 32 bytes"))
}

/// What the group agrees on, entry by entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Proposal {
    /// Batches of the journal, with the leader's tickets.
    Batches(Vec<(Ticket, Batch)>),
    /// The group's shared secrets, proposed by its first leader: the journal's secret (behind
    /// every random check) and the swarm identity the nodes know the coordinator by.
    Founding {
        /// The journal's secret.
        secret: [u8; 32],
        /// The swarm identity's secret key.
        identity: [u8; 32],
        /// The group's admin key (each member keeps it in its `admin.key`).
        admin: String,
    },
    /// An API key made or revoked (its quotas with it).
    Key(crate::keys::KeyRecord),
    /// A co-op revocation the leader accepted: every member keeps it in its `revoked/`.
    Revocation(hearth_protocol::coop::Revocation),
}

openraft::declare_raft_types!(
    /// Hearth's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = (),
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// A member's own account of itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its peer id.
    pub peer_id: String,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of (peer id).
    pub leader: Option<String>,
    /// The index of the last entry of the group's log it applied to its journal.
    pub commit_index: u64,
    /// Its HTTP API's URL.
    pub api: Option<String>,
}

/// `GET /v1/group`'s member entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    /// Its peer id.
    pub peer_id: String,
    /// As it says (`unreachable` when it did not answer within [`GROUP_STATUS_TIMEOUT`]).
    pub role: String,
    /// Its journal position: the last entry of the group's log it applied.
    pub commit_index: Option<u64>,
    /// Its HTTP API.
    pub api: Option<String>,
}

/// `GET /v1/group`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupView {
    /// The member answering.
    #[serde(rename = "self")]
    pub me: SelfView,
    /// The leader's peer id, if one is known.
    pub leader: Option<String>,
    /// The answering member's term.
    pub term: u64,
    /// Every member.
    pub members: Vec<MemberView>,
}

/// The answering member in [`GroupView`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SelfView {
    /// Its peer id.
    pub peer_id: String,
    /// Its role.
    pub role: String,
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "stopped",
    }
}

/// A running member.
pub(crate) struct Group {
    pub(crate) raft: Raft,
    me: Member,
    store: store::Store,
    transport: transport::Transport,
    allowed: transport::Allowed,
    /// Its HTTP API's URL, once known.
    api: Arc<RwLock<Option<String>>>,
    pub(crate) db: Arc<redb::Database>,
    pub(crate) path: PathBuf,
}

impl Group {
    /// Start this member (`key`'s) of the group `members`: its Raft state in the journal's file in
    /// `data_dir`, its group swarm on its own entry's address. A new group is initialized with
    /// `members` (by each of them: the same list everywhere is safe).
    pub(crate) async fn start(
        data_dir: &std::path::Path,
        key: &hearth_protocol::SecretKey,
        members: &[Member],
        api: String,
        found: bool,
    ) -> Result<Arc<Self>> {
        if members.len() > GROUP_MEMBERS_MAX {
            return Err(Error::Refused(format!(
                "a group has at most {GROUP_MEMBERS_MAX} members, not {}",
                members.len()
            )));
        }
        let peer = hearth_net::to_libp2p_peer_id(&key.public().peer_id()).to_string();
        let me = members
            .iter()
            .find(|m| m.peer_id == peer)
            .cloned()
            .ok_or_else(|| {
                Error::Refused(format!(
                    "this coordinator ({peer}) is not one of --group's members: give every member's group address, its own among them, ending in /p2p/ and the member's peer id (`hearth keygen --data-dir DIR` prints it)"
                ))
            })?;
        let path = data_dir.join(crate::journal::JOURNAL_FILE);
        let db = Arc::new(redb::Database::create(&path).map_err(|e| Error::Journal {
            path: path.clone(),
            message: e.to_string(),
        })?);
        let store = store::Store::open(db.clone(), path.clone())?;
        let allowed: transport::Allowed = Arc::new(RwLock::new(
            members
                .iter()
                .filter_map(|m| m.parsed().ok().map(|(p, _)| p))
                .collect::<HashSet<_>>(),
        ));
        let cell: Arc<tokio::sync::OnceCell<Raft>> = Arc::new(tokio::sync::OnceCell::new());
        let api = Arc::new(RwLock::new(Some(api)));
        let status = {
            let (cell, api, store, peer) = (cell.clone(), api.clone(), store.clone(), peer.clone());
            Arc::new(move || status_of(&peer, cell.get(), &store, &api))
                as Arc<dyn Fn() -> MemberStatus + Send + Sync>
        };
        let listen: Multiaddr = me
            .parsed()
            .map_err(Error::Refused)?
            .1
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        let transport = transport::start(key, listen, allowed.clone(), cell.clone(), status)?;
        let config = openraft::Config {
            cluster_name: "hearth".into(),
            heartbeat_interval: GROUP_HEARTBEAT_MS,
            election_timeout_min: GROUP_ELECTION_TIMEOUT_MS.start,
            election_timeout_max: GROUP_ELECTION_TIMEOUT_MS.end,
            max_payload_entries: GROUP_APPEND_ENTRIES_MAX,
            snapshot_policy: SnapshotPolicy::Never,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Refused(format!("group configuration: {e}")))?;
        let (log, machine) = openraft::storage::Adaptor::new(store.clone());
        let network = transport::Network {
            transport: transport.clone(),
        };
        let raft = Raft::new(me.node_id(), Arc::new(config), network, log, machine)
            .await
            .map_err(|e| Error::Refused(format!("group: {e}")))?;
        let _ = cell.set(raft.clone());
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Refused(format!("group: {e}")))?;
        if !initialized && !found {
            tracing::info!("a new member: waiting to be added to the group (`hearth group add`)");
        } else if !initialized {
            let nodes: BTreeMap<NodeId, Member> =
                members.iter().map(|m| (m.node_id(), m.clone())).collect();
            match raft.initialize(nodes).await {
                Ok(()) => tracing::info!(members = members.len(), "group initialized"),
                // Another member's initialization reached us first: the same group.
                Err(error) => tracing::debug!(%error, "group already initialized"),
            }
        }
        // Members added later (or their replacements) may speak to this one from the moment the
        // membership that names them reaches it.
        {
            let (mut metrics, allowed) = (raft.metrics(), allowed.clone());
            tokio::spawn(async move {
                while metrics.changed().await.is_ok() {
                    let nodes: Vec<Member> = metrics
                        .borrow_and_update()
                        .membership_config
                        .membership()
                        .nodes()
                        .map(|(_, m)| m.clone())
                        .collect();
                    let mut allowed = allowed.write().unwrap_or_else(|e| e.into_inner());
                    for member in nodes {
                        if let Ok((peer, _)) = member.parsed() {
                            allowed.insert(peer);
                        }
                    }
                }
            });
        }
        tracing::info!(member = %me.addr, "group member started");
        Ok(Arc::new(Self {
            raft,
            me,
            store,
            transport,
            allowed,
            api,
            db,
            path,
        }))
    }

    /// This member's role now.
    pub(crate) fn state(&self) -> ServerState {
        self.raft.metrics().borrow().state
    }

    /// Resolves once this member leads (or the group stopped).
    pub(crate) async fn until_leader(&self) {
        let mut metrics = self.raft.metrics();
        loop {
            if matches!(
                metrics.borrow_and_update().state,
                ServerState::Leader | ServerState::Shutdown
            ) {
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves once this member no longer leads.
    pub(crate) async fn until_not_leader(&self) {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().state != ServerState::Leader {
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// As the new leader: wait until every entry of earlier terms is applied, and found the group
    /// (its shared secrets) if no leader did yet. The group's swarm identity.
    pub(crate) async fn take_office(&self) -> Result<hearth_protocol::SecretKey> {
        self.raft
            .ensure_linearizable()
            .await
            .map_err(|e| Error::Refused(format!("no longer the group's leader: {e}")))?;
        if self.store.identity().is_none() {
            let mut secret = [0u8; 32];
            let mut identity = [0u8; 32];
            getrandom::fill(&mut secret)
                .and_then(|()| getrandom::fill(&mut identity))
                .map_err(|e| Error::Refused(format!("no OS randomness: {e}")))?;
            let admin = crate::keys::new_admin_key()?;
            self.raft
                .client_write(Proposal::Founding {
                    secret,
                    identity,
                    admin,
                })
                .await
                .map_err(|e| Error::Refused(format!("the group was not founded: {e}")))?;
            tracing::info!("group founded: its secret and swarm identity are replicated");
        }
        let bytes = self
            .store
            .identity()
            .ok_or_else(|| Error::Refused("the group's founding entry is not applied".into()))?;
        Ok(hearth_protocol::SecretKey::from_bytes(&bytes))
    }

    /// Add `member` to the group, as the leader: first as a learner that catches up from the log
    /// (within [`GROUP_CATCH_UP_WAIT`]), then as a voter, through Raft's joint consensus.
    pub(crate) async fn add(&self, member: Member) -> std::result::Result<(), String> {
        let id = member.node_id();
        let voters = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        if voters >= GROUP_MEMBERS_MAX {
            return Err(format!("a group has at most {GROUP_MEMBERS_MAX} members"));
        }
        if let Ok((peer, _)) = member.parsed() {
            self.allowed
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer);
        }
        tokio::time::timeout(
            GROUP_CATCH_UP_WAIT,
            self.raft.add_learner(id, member.clone(), true),
        )
        .await
        .map_err(|_| {
            format!(
                "{} did not catch up within {} s: is it running, with `hearth coordinator --group {} --group-join`?",
                member.addr,
                GROUP_CATCH_UP_WAIT.as_secs(),
                member.addr
            )
        })?
        .map_err(|e| e.to_string())?;
        self.raft
            .change_membership(
                openraft::ChangeMembers::AddVoterIds([id].into_iter().collect()),
                false,
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(member = %member.addr, "member added to the group");
        Ok(())
    }

    /// Remove the member with `peer_id` from the group, as the leader.
    pub(crate) async fn remove(&self, peer_id: &str) -> std::result::Result<(), String> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let Some((id, _)) = membership.nodes().find(|(_, m)| m.peer_id == peer_id) else {
            return Err(format!("{peer_id} is not a member of this group"));
        };
        let id = *id;
        let voters = membership.voter_ids().count();
        if voters <= 1 && membership.voter_ids().any(|v| v == id) {
            return Err("the last member of a group cannot be removed".into());
        }
        self.raft
            .change_membership(
                openraft::ChangeMembers::RemoveVoters([id].into_iter().collect()),
                false,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.raft
            .change_membership(
                openraft::ChangeMembers::RemoveNodes([id].into_iter().collect()),
                false,
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(member = %peer_id, "member removed from the group");
        Ok(())
    }

    /// The index of the last entry of the group's log this member applied.
    pub(crate) fn applied_index(&self) -> u64 {
        self.store.applied_index()
    }

    /// The group's admin key, once founded.
    pub(crate) fn admin_key(&self) -> Option<String> {
        self.store.admin_key()
    }

    /// The leader's HTTP API, as it says, when a leader is known.
    pub(crate) async fn leader_api(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        if leader == self.me.node_id() {
            return self.api.read().unwrap_or_else(|e| e.into_inner()).clone();
        }
        let member = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        match tokio::time::timeout(
            GROUP_STATUS_TIMEOUT,
            self.transport.ask(&member, transport::GroupRequest::Status),
        )
        .await
        {
            Ok(Ok(transport::GroupResponse::Status(status))) => status.api,
            _ => None,
        }
    }

    /// `GET /v1/group`: this member's view, each other member asked for its own account.
    pub(crate) async fn view(&self) -> GroupView {
        let metrics = self.raft.metrics().borrow().clone();
        let nodes: Vec<(NodeId, Member)> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let mine = status_of(&self.me.peer_id, Some(&self.raft), &self.store, &self.api);
        let asks = nodes.iter().map(|(id, member)| {
            let transport = self.transport.clone();
            let mine = mine.clone();
            let me = self.me.node_id();
            let (id, member) = (*id, member.clone());
            async move {
                if id == me {
                    return MemberView {
                        peer_id: mine.peer_id,
                        role: mine.role,
                        commit_index: Some(mine.commit_index),
                        api: mine.api,
                    };
                }
                let answer = tokio::time::timeout(
                    GROUP_STATUS_TIMEOUT,
                    transport.ask(&member, transport::GroupRequest::Status),
                )
                .await;
                match answer {
                    Ok(Ok(transport::GroupResponse::Status(s))) => MemberView {
                        peer_id: member.peer_id,
                        role: s.role,
                        commit_index: Some(s.commit_index),
                        api: s.api,
                    },
                    _ => MemberView {
                        peer_id: member.peer_id,
                        role: "unreachable".into(),
                        commit_index: None,
                        api: None,
                    },
                }
            }
        });
        let members = futures::future::join_all(asks).await;
        let leader = metrics.current_leader.and_then(|id| {
            nodes
                .iter()
                .find(|(n, _)| *n == id)
                .map(|(_, m)| m.peer_id.clone())
        });
        GroupView {
            me: SelfView {
                peer_id: self.me.peer_id.clone(),
                role: mine.role,
            },
            leader,
            term: metrics.current_term,
            members,
        }
    }
}

fn status_of(
    peer: &str,
    raft: Option<&Raft>,
    store: &store::Store,
    api: &RwLock<Option<String>>,
) -> MemberStatus {
    let (role, term, leader) = match raft {
        Some(raft) => {
            let m = raft.metrics().borrow().clone();
            let leader = m.current_leader.and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.peer_id.clone())
            });
            (role_name(m.state).to_string(), m.current_term, leader)
        }
        None => ("starting".to_string(), 0, None),
    };
    MemberStatus {
        peer_id: peer.to_string(),
        role,
        term,
        leader,
        commit_index: store.applied_index(),
        api: api.read().unwrap_or_else(|e| e.into_inner()).clone(),
    }
}

/// `GET /v1/group`, served beside the API on every member (no key: it names peers, roles and API
/// addresses, as `/v1/swarm` does).
pub(crate) fn routes(group: Arc<Group>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/v1/group",
            get(
                |axum::extract::State(group): axum::extract::State<Arc<Group>>| async move {
                    axum::Json(group.view().await)
                },
            ),
        )
        .with_state(group)
}

/// The leader's membership changes, behind the admin key: `POST /v1/admin/group/members`
/// (`{"addr"}`: add the member at this group address) and `DELETE
/// /v1/admin/group/members/{peer_id}`.
pub(crate) fn admin_routes(group: Arc<Group>) -> axum::Router {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{delete, post};
    #[derive(Deserialize)]
    struct Add {
        addr: String,
    }
    let answer = |result: std::result::Result<(), String>, group: Arc<Group>| async move {
        match result {
            Ok(()) => axum::Json(group.view().await).into_response(),
            Err(why) => crate::http::error(StatusCode::CONFLICT, &why),
        }
    };
    axum::Router::new()
        .route(
            "/v1/admin/group/members",
            post(
                move |State(group): State<Arc<Group>>,
                      body: std::result::Result<
                    axum::Json<Add>,
                    axum::extract::rejection::JsonRejection,
                >| async move {
                    let member = match body {
                        Ok(axum::Json(add)) => Member::parse(&add.addr),
                        Err(rejection) => {
                            return crate::http::error(rejection.status(), &rejection.body_text());
                        }
                    };
                    match member {
                        Ok(member) => answer(group.add(member).await, group).await,
                        Err(why) => crate::http::error(StatusCode::BAD_REQUEST, &why.to_string()),
                    }
                },
            ),
        )
        .route(
            "/v1/admin/group/members/{peer_id}",
            delete(
                move |State(group): State<Arc<Group>>, Path(peer_id): Path<String>| async move {
                    answer(group.remove(&peer_id).await, group).await
                },
            ),
        )
        .with_state(group)
}

/// The header a member's 503 carries when the group has no leader to send the request to, so a
/// client tries the group's other members (a 503 for a generation the swarm cannot serve now has
/// `Retry-After` too, and is an answer, not a reason to try elsewhere).
pub const NO_LEADER_HEADER: &str = "x-hearth-no-leader";

/// Send a request to the leader with a 307 (method and body kept), or answer 503 with
/// `Retry-After` and [`NO_LEADER_HEADER`] while no leader is known.
async fn to_leader(group: &Group, uri: &axum::http::Uri) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    match group.leader_api().await {
        Some(api) if group.state() != ServerState::Leader => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("{api}{path}"))],
            )
                .into_response()
        }
        _ => {
            let mut response = crate::http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the coordinator group has no leader right now (an election is under way): try again in a few seconds",
            );
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            headers.insert(NO_LEADER_HEADER, header::HeaderValue::from_static("1"));
            response
        }
    }
}

/// A follower's API: `GET /v1/group`; the reads `reads` answers (jobs, their status, output and
/// receipts, from this member's replica of the journal) when given; every other request sent to
/// the leader ([`to_leader`]).
pub(crate) fn follower_routes(group: Arc<Group>, reads: Option<axum::Router>) -> axum::Router {
    let app = match reads {
        Some(reads) => routes(group.clone()).merge(reads),
        None => routes(group.clone()),
    };
    let fallback = {
        let group = group.clone();
        move |uri: axum::http::Uri| {
            let group = group.clone();
            async move { to_leader(&group, &uri).await }
        }
    };
    let answered = move |request: axum::extract::Request, next: axum::middleware::Next| {
        let group = group.clone();
        async move {
            let own =
                request.uri().path() == "/v1/group" && request.method() == axum::http::Method::GET;
            if own || crate::http::is_read(&request) {
                next.run(request).await
            } else {
                to_leader(&group, request.uri()).await
            }
        }
    };
    app.fallback(fallback)
        .layer(axum::middleware::from_fn(answered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_need_an_address_ending_in_their_peer_id() {
        let key = hearth_protocol::SecretKey::from_bytes(&[9; 32]);
        let peer = hearth_net::to_libp2p_peer_id(&key.public().peer_id());
        let good = format!("/ip4/10.0.0.2/udp/7081/quic-v1/p2p/{peer}");
        let member = Member::parse(&good).expect("valid");
        assert_eq!(member.peer_id, peer.to_string());
        assert_eq!(
            member.node_id(),
            Member::parse(&good).expect("valid").node_id()
        );
        for bad in ["/ip4/10.0.0.2/udp/7081/quic-v1", "10.0.0.2:7081", ""] {
            let error = Member::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("/p2p/"), "{error}");
        }
    }
}
