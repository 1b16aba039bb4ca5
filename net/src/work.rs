//! The work protocol on the wire: request-response over the swarm's existing connections, each
//! message one or more length-prefixed, versioned postcard frames ([`hearth_protocol::work`]). Each
//! header is checked against the frame and message limits before its payload is read, so a hostile
//! length costs nothing.

use std::io;

use futures::prelude::*;
use hearth_protocol::FRAME_HEADER_BYTES;
use hearth_protocol::work::{self, WorkRequest, WorkResponse};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// The work protocol's libp2p name.
pub const WORK_STREAM_PROTOCOL: StreamProtocol =
    StreamProtocol::new(hearth_protocol::work::WORK_PROTOCOL);

/// Frames for [`WorkRequest`] and [`WorkResponse`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkCodec;

/// Read one message: frames until the first shorter than the frame limit, each header checked
/// (against the frame limit and what is left of the message limit) before its bytes are taken,
/// so the buffer grows only as fast as a peer actually sends.
pub(crate) async fn read_message<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut reader = work::message_reader();
    let mut piece = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        io.read_exact(&mut header).await?;
        let len = reader.header(&header).map_err(invalid)?;
        piece.resize(len, 0);
        io.read_exact(&mut piece).await?;
        if reader.push(&piece) {
            return Ok(reader.into_payload());
        }
    }
}

async fn write_message<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    value: &impl serde::Serialize,
) -> io::Result<()> {
    let message = work::encode(value).map_err(invalid)?;
    io.write_all(&message).await?;
    io.close().await
}

fn invalid(error: hearth_protocol::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl request_response::Codec for WorkCodec {
    type Protocol = StreamProtocol;
    type Request = WorkRequest;
    type Response = WorkResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WorkRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        work::request_from_payload(&read_message(io).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WorkResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        work::response_from_payload(&read_message(io).await?).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: WorkRequest,
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
        response: WorkResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &response).await
    }
}
