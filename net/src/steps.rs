//! Chained steps on long-lived streams: one stream per peer pair and direction, opened on the first
//! step a stage hands to the next and kept, so a token's hop costs one message on an open QUIC
//! stream. On request-response each step opened a new stream, and multistream-select's
//! negotiation waited one round trip before the step could go: on a path of 20–50 ms between peers
//! that tripled a hop's latency.
//!
//! A stream carries [`WorkRequest::Chain`] messages one way and their answers
//! ([`WorkResponse::Ack`] or a refusal) back, in order, in the work protocol's frames; to the
//! node's event loop a step sent this way is a request like any other: its answer or failure comes
//! as [`crate::NetEvent::WorkResponse`] or [`crate::NetEvent::WorkFailed`], and a step received comes
//! as [`crate::NetEvent::WorkRequest`] answered through [`crate::Network::respond`]. A stream that
//! breaks fails the steps awaiting their answers, as a closed connection fails requests; a step
//! whose write fails before the stream took all of it is written again once on a new stream (none
//! of it can arrive as a message, so it cannot arrive twice).
//!
//! A step carrying more than [`STEP_STREAM_INLINE_BYTES_MAX`] of hidden states (a long prompt's
//! prefill) goes on a stream of its own instead, as a request: on the shared stream it would hold
//! up every other session's steps to that peer behind it for as long as it takes to send.
//!
//! Each stream is served by a task of its own, beside the swarm's: the writer task per peer we send
//! to, a reader task per peer that sends to us. They talk to the [`crate::Network`] through
//! channels; the network keeps at most [`STEP_STREAMS_MAX`] of each kind.

use std::collections::VecDeque;
use std::time::Duration;

use futures::prelude::*;
use hearth_protocol::work::{self, WorkRequest, WorkResponse};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;

use crate::network::RequestId;

/// The protocol of chained-step streams.
pub const STEP_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/steps/1");

/// Streams of each direction a peer keeps open, one per peer (the peers it hands steps to, the
/// peers that hand steps to it). A stage has one predecessor and one successor per route, so a
/// node in many routes at once uses a handful; past it the least recently opened is closed.
pub const STEP_STREAMS_MAX: usize = 64;

/// How long a step sent on a stream waits for its answer, and for its stream to open and take it.
/// The answer is sent when the next stage queues the step, not when it has computed it, so it takes
/// a round trip; a stream without an answer for this long is taken as broken.
pub const STEP_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of hidden states a step carries on the shared stream to its peer. A bigger one goes
/// on a stream of its own, so the small steps of other sessions queued behind it on the shared
/// stream are not held up while it is sent (head-of-line blocking): over a home link of 100
/// Mbit/s, a 4,000-token prefill of a model 4,096 wide (64 MiB) would hold every other session's
/// tokens to that peer for over 5 s. Its own stream costs one more round trip to negotiate, little
/// beside sending it; this limit's worst wait at 100 Mbit/s is 21 ms. Decode steps (one row, or a
/// few) stay on the shared stream.
pub const STEP_STREAM_INLINE_BYTES_MAX: usize = 256 * 1024;

/// Whether `request` is a chained step small enough for the shared stream
/// ([`STEP_STREAM_INLINE_BYTES_MAX`]).
pub(crate) fn goes_on_shared_stream(request: &WorkRequest) -> bool {
    match request {
        WorkRequest::Chain(step) => match &step.forward.input {
            work::StageData::Hidden { bytes, .. } => bytes.len() <= STEP_STREAM_INLINE_BYTES_MAX,
            work::StageData::Tokens(ids) => ids.len() * 4 <= STEP_STREAM_INLINE_BYTES_MAX,
        },
        _ => false,
    }
}

/// Steps queued for one peer's writer task; past it a step fails at once (the peer reads nothing).
const STEPS_QUEUED_MAX: usize = 256;

/// What the stream tasks tell the network.
pub(crate) enum StreamEvent {
    /// A step we sent was answered.
    Answered(RequestId, WorkResponse),
    /// A step we sent failed, and why.
    Failed(RequestId, String),
    /// A peer sent a step on the incoming stream `stream`.
    Step {
        peer: PeerId,
        stream: u64,
        request: WorkRequest,
    },
    /// The incoming stream `stream` ended.
    Closed(u64),
}

/// Where a step received on a stream is answered: the stream it came on.
#[derive(Debug)]
pub struct StreamReply {
    pub(crate) stream: u64,
    pub(crate) peer: PeerId,
}

/// A writer task's handle: where to queue steps for its peer.
pub(crate) struct Outgoing {
    steps: mpsc::Sender<(RequestId, Vec<u8>)>,
}

impl Outgoing {
    /// Start the writer task for `peer`.
    pub(crate) fn start(
        peer: PeerId,
        control: libp2p_stream::Control,
        events: mpsc::Sender<StreamEvent>,
    ) -> Self {
        let (steps, queued) = mpsc::channel(STEPS_QUEUED_MAX);
        tokio::spawn(write_steps(peer, control, queued, events));
        Self { steps }
    }

    /// Queue a step's encoded message; the step back when the queue is full or the task ended.
    pub(crate) fn send(&self, id: RequestId, message: Vec<u8>) -> Result<(), String> {
        self.steps.try_send((id, message)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                format!("{STEPS_QUEUED_MAX} steps already queued for this peer")
            }
            mpsc::error::TrySendError::Closed(_) => "its stream task ended".to_string(),
        })
    }

    /// Whether the task still runs.
    pub(crate) fn is_open(&self) -> bool {
        !self.steps.is_closed()
    }
}

/// The encoded message of a chained step, ready for a stream.
pub(crate) fn encode(request: &WorkRequest) -> Result<Vec<u8>, String> {
    work::encode(request).map_err(|e| e.to_string())
}

/// An open stream: where we write, and the answers (or, incoming, the steps) read from it.
struct Open {
    write: futures::io::WriteHalf<libp2p::Stream>,
    read: stream::BoxStream<'static, std::io::Result<Vec<u8>>>,
}

impl Open {
    fn new(stream: libp2p::Stream) -> Self {
        let (read, write) = stream.split();
        // Each message, then the error that ended the stream (if any), then the end.
        let read = stream::unfold(Some(read), |read| async move {
            let mut read = read?;
            let message = crate::work::read_message(&mut read).await;
            let next = message.is_ok().then_some(read);
            Some((message, next))
        })
        .boxed();
        Self { write, read }
    }

    /// Write `message` whole. `Err((true, _))`: the write failed before the whole message was
    /// taken, so none of it can arrive as a message; `Err((false, _))`: it was taken but not
    /// flushed, so it may.
    async fn write(&mut self, message: &[u8]) -> Result<(), (bool, std::io::Error)> {
        self.write.write_all(message).await.map_err(|e| (true, e))?;
        self.write.flush().await.map_err(|e| (false, e))
    }
}

/// The writer task of the steps we send `peer`: opens the stream when a step comes and none is
/// open, writes each step, and matches the answers read back to the steps in order.
async fn write_steps(
    peer: PeerId,
    mut control: libp2p_stream::Control,
    mut queued: mpsc::Receiver<(RequestId, Vec<u8>)>,
    events: mpsc::Sender<StreamEvent>,
) {
    let mut open: Option<Open> = None;
    // Steps written and not yet answered, with when they were written.
    let mut waiting: VecDeque<(RequestId, tokio::time::Instant)> = VecDeque::new();
    loop {
        let due = waiting.front().map(|(_, at)| *at + STEP_ANSWER_TIMEOUT);
        tokio::select! {
            step = queued.recv() => {
                let Some((id, message)) = step else { break };
                // A stream that fails the write before taking the whole message is replaced
                // once: none of it can arrive as a message.
                let mut written = Err("not written".to_string());
                for _ in 0..2 {
                    if open.is_none() {
                        let opening = control.open_stream(peer, STEP_STREAM_PROTOCOL);
                        match tokio::time::timeout(STEP_ANSWER_TIMEOUT, opening).await {
                            Ok(Ok(stream)) => open = Some(Open::new(stream)),
                            Ok(Err(e)) => {
                                written = Err(e.to_string());
                                break;
                            }
                            Err(_) => {
                                written = Err(format!(
                                    "no stream opened within {} s",
                                    STEP_ANSWER_TIMEOUT.as_secs()
                                ));
                                break;
                            }
                        }
                    }
                    let stream = open.as_mut().expect("opened above");
                    // A peer that stopped reading (a stopped process) holds a write at its flow
                    // control window: bounded like an answer.
                    let write = tokio::time::timeout(STEP_ANSWER_TIMEOUT, stream.write(&message));
                    match write.await {
                        Ok(Ok(())) => {
                            written = Ok(());
                            break;
                        }
                        Ok(Err((unsent, e))) => {
                            written = Err(e.to_string());
                            open = None;
                            fail_all(&mut waiting, &events, &written).await;
                            if !unsent {
                                break;
                            }
                        }
                        Err(_) => {
                            written = Err(format!(
                                "not taken within {} s",
                                STEP_ANSWER_TIMEOUT.as_secs()
                            ));
                            open = None;
                            fail_all(&mut waiting, &events, &written).await;
                            break;
                        }
                    }
                }
                match written {
                    Ok(()) => waiting.push_back((id, tokio::time::Instant::now())),
                    Err(why) => {
                        let _ = events.send(StreamEvent::Failed(id, why)).await;
                    }
                }
            }
            answer = async { open.as_mut().expect("guarded").read.next().await }, if open.is_some() => {
                let answer = match answer {
                    Some(Ok(payload)) => work::response_from_payload(&payload).map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the stream closed".to_string()),
                };
                match answer {
                    Ok(response) => match waiting.pop_front() {
                        Some((id, _)) => {
                            let _ = events.send(StreamEvent::Answered(id, response)).await;
                        }
                        None => {
                            tracing::debug!(%peer, "an answer to no step; stream closed");
                            open = None;
                        }
                    },
                    Err(why) => {
                        tracing::debug!(%peer, %why, "step stream ended");
                        open = None;
                        fail_all(&mut waiting, &events, &Err(why)).await;
                    }
                }
            }
            () = async { tokio::time::sleep_until(due.expect("guarded")).await }, if due.is_some() => {
                open = None;
                let why = format!("no answer within {} s", STEP_ANSWER_TIMEOUT.as_secs());
                fail_all(&mut waiting, &events, &Err(why)).await;
            }
        }
    }
    fail_all(
        &mut waiting,
        &events,
        &Err("the step stream was closed".into()),
    )
    .await;
}

/// Fail every step awaiting its answer.
async fn fail_all(
    waiting: &mut VecDeque<(RequestId, tokio::time::Instant)>,
    events: &mpsc::Sender<StreamEvent>,
    why: &Result<(), String>,
) {
    let why = why.as_ref().err().cloned().unwrap_or_default();
    for (id, _) in waiting.drain(..) {
        let _ = events.send(StreamEvent::Failed(id, why.clone())).await;
    }
}

/// A reader task's handle: where to queue the answers to the steps it read.
pub(crate) struct Incoming {
    /// Who sends on it.
    pub(crate) peer: PeerId,
    answers: mpsc::Sender<Vec<u8>>,
}

impl Incoming {
    /// Start the reader task of `stream`, numbered `id`, from `peer`.
    pub(crate) fn start(
        peer: PeerId,
        id: u64,
        stream: libp2p::Stream,
        events: mpsc::Sender<StreamEvent>,
    ) -> Self {
        let (answers, queued) = mpsc::channel(STEPS_QUEUED_MAX);
        tokio::spawn(read_steps(peer, id, stream, queued, events));
        Self { peer, answers }
    }

    /// Queue the answer to the oldest step unanswered; false if the stream is gone or its peer
    /// reads no answers.
    pub(crate) fn answer(&self, response: &WorkResponse) -> bool {
        work::encode(response)
            .ok()
            .is_some_and(|message| self.answers.try_send(message).is_ok())
    }
}

/// The reader task of a stream `peer` sends steps on: each step read goes to the network, each
/// answer the network gives is written back.
async fn read_steps(
    peer: PeerId,
    id: u64,
    stream: libp2p::Stream,
    mut answers: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<StreamEvent>,
) {
    let mut open = Open::new(stream);
    loop {
        tokio::select! {
            message = open.read.next() => {
                let request = match message {
                    Some(Ok(payload)) => work::request_from_payload(&payload),
                    Some(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "step stream ended");
                        break;
                    }
                    None => break,
                };
                match request {
                    Ok(request @ WorkRequest::Chain(_)) => {
                        let step = StreamEvent::Step { peer, stream: id, request };
                        if events.send(step).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {
                        tracing::debug!(%peer, "not a chained step on a step stream; closed");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "undecodable step; stream closed");
                        break;
                    }
                }
            }
            answer = answers.recv() => {
                let Some(answer) = answer else { break };
                if open.write(&answer).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = events.send(StreamEvent::Closed(id)).await;
}

#[cfg(test)]
mod tests {
    use hearth_protocol::work::{ChainStep, Forward, StageData};
    use hearth_protocol::{ModelId, SecretKey};

    use super::*;
    use crate::{NetConfig, NetEvent, Network, WorkChannel};

    fn network(seed: u8) -> Network {
        network_at(seed, None)
    }

    /// A network whose every message is held `delay` (`--fault delay`).
    fn network_at(seed: u8, delay: Option<Duration>) -> Network {
        let config = NetConfig {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("address")],
            mdns: false,
            send_delay: delay,
            ..NetConfig::default()
        };
        Network::new(SecretKey::from_bytes(&[seed; 32]), &config).expect("a network")
    }

    fn step(n: u64) -> WorkRequest {
        WorkRequest::Chain(Box::new(ChainStep {
            epoch: 1,
            forward: Forward {
                session: 7,
                step: n,
                model: ModelId::of_bytes(b"a model"),
                layers: (0, 4),
                pos: u32::try_from(n).expect("small"),
                input: StageData::Tokens(vec![u32::try_from(n).expect("small")]),
                all_positions: false,
                sampling: None,
            },
            receipts: Vec::new(),
            previous: None,
            rtts: Vec::new(),
        }))
    }

    /// The next event of `a` that `pick` wants, driving `b` meanwhile (answering what `b` is sent
    /// with `answer`).
    async fn next_of(
        a: &mut Network,
        b: &mut Network,
        answer: &mut dyn FnMut(u64) -> WorkResponse,
        pick: &mut dyn FnMut(NetEvent) -> Option<NetEvent>,
    ) -> NetEvent {
        let wait = async {
            loop {
                tokio::select! {
                    event = a.next() => if let Some(event) = pick(event) { return event },
                    event = b.next() => if let NetEvent::WorkRequest { request: WorkRequest::Chain(s), channel, .. } = event {
                        assert!(matches!(channel, WorkChannel::Stream(_)), "a step comes on its stream");
                        b.respond(channel, answer(s.forward.step));
                    },
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("in time")
    }

    /// Two networks, `a` connected to `b`, and `b`'s peer id.
    async fn connected(
        mut a: Network,
        mut b: Network,
    ) -> (Network, Network, hearth_protocol::PeerId) {
        let address = loop {
            if let NetEvent::Listening(address) = b.next().await {
                break address;
            }
        };
        let b_peer = *b.swarm.local_peer_id();
        a.swarm
            .dial(address.with(libp2p::multiaddr::Protocol::P2p(b_peer)))
            .expect("dial");
        let to = crate::from_libp2p_peer_id(&b_peer).expect("ed25519");
        (a, b, to)
    }

    /// An emulated distance (`--fault delay`) holds a step and its answer each for the delay,
    /// and never lets one out early.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delay_holds_steps_and_answers_for_their_time() {
        let delay = Duration::from_millis(40);
        let (mut a, mut b, to) =
            connected(network_at(3, Some(delay)), network_at(4, Some(delay))).await;
        for n in 0..3 {
            let sent = std::time::Instant::now();
            let id = a.request(&to, step(n));
            let event = next_of(
                &mut a,
                &mut b,
                &mut |_| WorkResponse::Ack,
                &mut |e| match e {
                    NetEvent::WorkResponse { .. } | NetEvent::WorkFailed { .. } => Some(e),
                    _ => None,
                },
            )
            .await;
            assert!(
                matches!(event, NetEvent::WorkResponse { id: got, response: WorkResponse::Ack } if got == id),
                "{event:?}"
            );
            assert!(
                sent.elapsed() >= 2 * delay,
                "the step and its answer were each held {delay:?}: {:?}",
                sent.elapsed()
            );
        }
    }

    /// A step of more hidden states than the shared stream carries goes as a request on a stream
    /// of its own; the small steps after it still go on the shared stream; both are answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_step_goes_on_a_stream_of_its_own() {
        let (mut a, mut b, to) = connected(network(5), network(6)).await;
        let big = {
            let WorkRequest::Chain(mut s) = step(0) else {
                unreachable!("a chained step")
            };
            let rows = 200;
            s.forward.input = StageData::hidden(rows, &vec![0.5; rows as usize * 576]);
            WorkRequest::Chain(s)
        };
        assert!(!goes_on_shared_stream(&big) && goes_on_shared_stream(&step(1)));
        let ids = [a.request(&to, big), a.request(&to, step(1))];
        let (mut answered, mut kinds) = (Vec::new(), Vec::new());
        tokio::time::timeout(Duration::from_secs(20), async {
            while answered.len() < 2 {
                tokio::select! {
                    event = a.next() => match event {
                        NetEvent::WorkResponse { id, response } => {
                            assert_eq!(response, WorkResponse::Ack);
                            answered.push(id);
                        }
                        NetEvent::WorkFailed { id, error } => panic!("{id:?} failed: {error}"),
                        _ => {}
                    },
                    event = b.next() => if let NetEvent::WorkRequest { request: WorkRequest::Chain(s), channel, .. } = event {
                        kinds.push((s.forward.step, matches!(channel, WorkChannel::Stream(_))));
                        b.respond(channel, WorkResponse::Ack);
                    },
                }
            }
        })
        .await
        .expect("both answered in time");
        answered.sort();
        assert_eq!(answered, ids.to_vec());
        kinds.sort();
        assert_eq!(
            kinds,
            vec![(0, false), (1, true)],
            "(step, on the shared stream)"
        );
        assert_eq!(
            b.incoming.len(),
            1,
            "the small step opened the shared stream"
        );
    }

    /// Steps to a peer go on one stream, kept open; each gets its own answer, in order; the steps
    /// waiting for an answer fail when the peer goes away.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn steps_share_one_stream_and_fail_when_the_peer_goes() {
        let (mut a, mut b, to) = connected(network(1), network(2)).await;
        let mut answer = |n: u64| {
            if n == 1 {
                WorkResponse::Rejected("step 1 refused".into())
            } else {
                WorkResponse::Ack
            }
        };
        let ids: Vec<_> = (0..3).map(|n| a.request(&to, step(n))).collect();
        let mut answers = std::collections::HashMap::new();
        while answers.len() < ids.len() {
            let event = next_of(&mut a, &mut b, &mut answer, &mut |e| match e {
                NetEvent::WorkResponse { .. } | NetEvent::WorkFailed { .. } => Some(e),
                _ => None,
            })
            .await;
            match event {
                NetEvent::WorkResponse { id, response } => answers.insert(id, Ok(response)),
                NetEvent::WorkFailed { id, error } => answers.insert(id, Err(error)),
                _ => unreachable!("picked"),
            };
        }
        assert_eq!(answers[&ids[0]], Ok(WorkResponse::Ack));
        assert_eq!(
            answers[&ids[1]],
            Ok(WorkResponse::Rejected("step 1 refused".into()))
        );
        assert_eq!(answers[&ids[2]], Ok(WorkResponse::Ack));
        assert_eq!(b.incoming.len(), 1, "one stream carried the three steps");
        assert_eq!(a.outgoing.len(), 1);
        assert!(a.on_streams.is_empty() && a.in_flight.is_empty() && b.in_flight.is_empty());

        // A new stream from the same peer (its old one closed) replaces the old one at `b`.
        a.outgoing.clear();
        let again = a.request(&to, step(3));
        let event = next_of(&mut a, &mut b, &mut answer, &mut |e| match e {
            NetEvent::WorkResponse { .. } | NetEvent::WorkFailed { .. } => Some(e),
            _ => None,
        })
        .await;
        assert!(
            matches!(event, NetEvent::WorkResponse { id, response: WorkResponse::Ack } if id == again)
        );
        assert_eq!(b.incoming.len(), 1, "one stream per peer at b");

        // A step that `b` never answers fails when `b` goes away, and says so.
        let unanswered = a.request(&to, step(4));
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                tokio::select! {
                    event = a.next() => match event {
                        NetEvent::WorkFailed { id, error } => break (id, error),
                        NetEvent::WorkResponse { id, .. } => panic!("{id:?} answered"),
                        _ => {}
                    },
                    event = b.next() => if let NetEvent::WorkRequest { .. } = event {
                        // Taken, never answered: the peer goes away with it.
                        break (unanswered, String::new());
                    },
                }
            }
        })
        .await
        .expect("in time");
        assert_eq!(got.0, unanswered);
        drop(b);
        let (id, error) = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let NetEvent::WorkFailed { id, error } = a.next().await {
                    break (id, error);
                }
            }
        })
        .await
        .expect("the step fails when its peer goes");
        assert_eq!(id, unanswered);
        assert!(!error.is_empty());
    }
}
