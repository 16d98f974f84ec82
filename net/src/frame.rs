//! Length-prefixed frames over any async byte stream.
//!
//! A frame is `len: u32 LE` followed by `len` bytes. The reader refuses a
//! length above its cap *before* reading the body, so an oversized or garbage
//! prefix closes the connection instead of allocating.

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Hard cap on any frame: a transaction is at most 1 MB, a block 2 MB.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Most buffer capacity a reader or writer keeps between frames; a larger
/// one, grown for a large frame or batch, is given back.
pub const RETAINED_BUFFER: usize = 16 * 1024;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the cap of {cap}")]
    Oversized { len: usize, cap: usize },
    #[error("empty frame")]
    Empty,
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub struct FrameReader<R> {
    inner: R,
    cap: usize,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, cap: usize) -> Self {
        FrameReader {
            inner,
            cap: cap.min(MAX_FRAME_LEN),
            buf: BytesMut::new(),
        }
    }

    /// Tightens or loosens the cap (kept tight until a handshake completes).
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.min(MAX_FRAME_LEN);
    }

    /// The stream read from (its peer's address, say).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads one frame. The returned slice is valid until the next call.
    pub async fn read_frame(&mut self) -> Result<&[u8], FrameError> {
        let mut len = [0u8; 4];
        match self.inner.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.cap {
            return Err(FrameError::Oversized { len, cap: self.cap });
        }
        if self.buf.capacity() > RETAINED_BUFFER {
            // One large frame must not pin its buffer for the life of the
            // connection (a thousand idle wallet connections that each sent
            // one 2 MiB frame would hold 2 GB).
            self.buf = BytesMut::new();
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        self.inner.read_exact(&mut self.buf[..]).await?;
        Ok(&self.buf[..])
    }
}

pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::new(),
        }
    }

    /// Queues a frame in the write buffer; call [`flush`](Self::flush) to send.
    /// Batching several frames into one write is what keeps syscalls off the
    /// hot path.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.is_empty() {
            return Err(FrameError::Empty);
        }
        if payload.len() > MAX_FRAME_LEN {
            return Err(FrameError::Oversized {
                len: payload.len(),
                cap: MAX_FRAME_LEN,
            });
        }
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(payload);
        Ok(())
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
            if self.buf.capacity() > RETAINED_BUFFER {
                self.buf = Vec::new();
            }
        }
        self.inner.flush().await?;
        Ok(())
    }

    pub async fn send(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        self.push(payload)?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_oversize() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b, 1024);
        w.push(b"hello").unwrap();
        w.push(b"world!").unwrap();
        w.flush().await.unwrap();
        assert_eq!(r.read_frame().await.unwrap(), b"hello");
        assert_eq!(r.read_frame().await.unwrap(), b"world!");
        w.send(&vec![7u8; 2000]).await.unwrap();
        assert!(matches!(
            r.read_frame().await,
            Err(FrameError::Oversized { len: 2000, .. })
        ));
    }
}
