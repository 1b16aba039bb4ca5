//! The work protocol on the wire: request-response over the swarm's existing connections, each
//! message one length-prefixed, versioned postcard frame ([`hearth_protocol::work`]). The header is
//! checked against [`WORK_FRAME_BYTES_MAX`] before the payload is read, so a hostile length costs
//! nothing.

use std::io;

use futures::prelude::*;
use hearth_protocol::work::{WorkRequest, WorkResponse, decode_request, decode_response};
use hearth_protocol::{FRAME_HEADER_BYTES, WORK_FRAME_BYTES_MAX, codec};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// The work protocol's libp2p name.
pub const WORK_STREAM_PROTOCOL: StreamProtocol =
    StreamProtocol::new(hearth_protocol::work::WORK_PROTOCOL);

/// Frames for [`WorkRequest`] and [`WorkResponse`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    io.read_exact(&mut header).await?;
    let len = codec::read_header_max(&header, WORK_FRAME_BYTES_MAX).map_err(invalid)?;
    let mut frame = vec![0u8; FRAME_HEADER_BYTES + len];
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
    io.read_exact(&mut frame[FRAME_HEADER_BYTES..]).await?;
    Ok(frame)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    value: &impl serde::Serialize,
) -> io::Result<()> {
    let frame = codec::encode_max(value, WORK_FRAME_BYTES_MAX).map_err(invalid)?;
    io.write_all(&frame).await?;
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
        decode_request(&read_frame(io).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WorkResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_response(&read_frame(io).await?).map_err(invalid)
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
        write_frame(io, &request).await
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
        write_frame(io, &response).await
    }
}
