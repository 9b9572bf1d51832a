//! Stock gRPC clients over the Unix socket: an `:authority` that h2 rejects is rewritten.
//!
//! A client that dials `unix:PATH` sends the socket path as HTTP/2's `:authority`: grpcurl
//! the path as given (`/run/arbiter/supervisor.sock`), grpcio %-encoded and without its
//! leading slash (`run%2Farbiter%2Fsupervisor.sock`), grpc-java likewise. h2, under tonic,
//! insists on an [`http::uri::Authority`] and resets such a stream with PROTOCOL_ERROR
//! before any handler (or tower layer) sees the request, so no request-level fix can reach
//! it. This module works one layer down instead: every accepted Unix connection is wrapped
//! in [`AuthorityFix`], whose reads pass the client's bytes through a [`Rewriter`]. The
//! rewriter follows the HTTP/2 framing, decodes each header block (HPACK) and replaces an
//! `:authority` that does not parse with `localhost`. Nothing routes on the authority of a
//! Unix connection (there is one server behind the socket), so the value is immaterial.
//!
//! A connection is decided by its first header block. A gRPC client dials one target per
//! channel and sends that target's authority on every request, so when the first block's
//! `:authority` is valid (tonic's clients, ours, `grpcurl -authority localhost`) the rest of
//! the connection goes on byte for byte without being parsed at all: such clients pay for
//! one decoded block per connection, not per request (decoding every block about tripled the
//! supervisor's CPU per request in the lease benchmark: h2 sends each `:path` as a
//! Huffman-coded literal, and loona-hpack builds its Huffman table afresh for every
//! string). A client that changed to an invalid authority later on such a connection
//! would be reset by h2, as every stock client was before this module.
//!
//! When the first block's `:authority` is invalid, the connection is rewritten to its end.
//! HPACK is stateful: both ends keep a dynamic table that the client's encoder fills and
//! refers to by index. The rewriter's own decoder sees every block the client sends, so it
//! knows the client's table; the first block, rewritten, and *every* later one are
//! re-encoded, each field as a literal never indexed: the server's table stops changing and
//! no re-encoded block refers to it, so its content no longer matters, and the client's
//! dynamic table size updates are dropped for the same reason (the server's table stays
//! within its own SETTINGS_HEADER_TABLE_SIZE, which a client's update could only lower).
//! Never-indexed rather than without-indexing because RFC 7541 §6.2.3 tells intermediaries
//! to keep that representation for fields the client marked sensitive, and the decoder does
//! not say which those were; for the server, the last hop, the two mean the same.
//! Re-encoded blocks go out as a HEADERS frame (keeping END_STREAM and PRIORITY, dropping
//! padding, which carries nothing) and CONTINUATION frames of at most 16,384 bytes, the
//! smallest SETTINGS_MAX_FRAME_SIZE a peer may have.
//!
//! A stream the rewriter cannot follow (no HTTP/2 preface, bad padding, a CONTINUATION
//! missing, a block it cannot decode before anything was rewritten) is passed on as it
//! came, and from there on every byte, so that h2 reports the protocol error itself. After
//! a rewrite the server's table no longer matches the client's, so a block that cannot be
//! decoded (or grows past [`MAX_BLOCK`]) cannot be passed on raw: the connection is closed
//! with an error saying why, which the wrapper logs.
//!
//! HPACK decoding is loona-hpack's (the maintained fork of the `hpack` crate, with Huffman
//! decoding and RFC 7541's checks on integers, padding and EOS). `httlib-hpack` copies its
//! input per field and has seen no release since 2021; h2's own codec is private. Encoding
//! is a few lines here, since only one representation (literal, new name, raw strings) is
//! ever written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an invalid `:authority` becomes.
pub const REPLACEMENT: &[u8] = b"localhost";

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// The largest frame payload this module writes: the initial SETTINGS_MAX_FRAME_SIZE,
/// which every peer accepts.
const MAX_FRAME: usize = 16_384;
/// The most bytes one header block may take, as received (all its frames) and as
/// re-encoded. Far above what the server accepts (hyper's default header list limit is
/// 16 KiB), so only a broken or hostile client reaches it; it bounds the memory one
/// connection can make the rewriter hold, and HPACK's expansion (one byte referring to a
/// 4 KiB table entry).
pub const MAX_BLOCK: usize = 1 << 20;
/// The dynamic table size the server's decoder allows (h2's default; tonic does not
/// change it). A client's size update above it is the client's error.
const SERVER_HEADER_TABLE_SIZE: usize = 4_096;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why a rewritten connection had to be closed rather than passed on.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error(
        "the client sent a header block that cannot be decoded ({0}) after its :authority had been rewritten; it cannot be passed on, since the server's HPACK table no longer matches the client's"
    )]
    Hpack(String),
    #[error(
        "the client sent a header block over {MAX_BLOCK} bytes after its :authority had been rewritten"
    )]
    TooLarge,
}

/// Where the rewriter is in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Matching the connection preface; `matched` bytes of it seen.
    Preface { matched: usize },
    /// Reading a frame's 9-byte header; `have` bytes of it seen.
    Head { have: usize },
    /// Passing a frame's payload through; `remaining` bytes to go.
    Forward { remaining: usize },
    /// Collecting a HEADERS or CONTINUATION frame's payload into `raw`.
    Collect { remaining: usize },
    /// Passing everything through, for h2 to judge.
    Opaque,
}

/// The header block being collected: from its HEADERS frame.
#[derive(Clone, Copy, Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// The client-to-server half of an HTTP/2 connection, rewritten (see the module's doc).
/// Sans IO: [`feed`](Rewriter::feed) takes bytes as they were read, at any boundaries,
/// and appends what the server is to read.
pub struct Rewriter {
    state: State,
    head: [u8; FRAME_HEADER_LEN],
    /// The open header block, while its frames are collected.
    block: Option<Block>,
    /// The open block's frames as received, for passing them on unchanged.
    raw: Vec<u8>,
    /// Where the frame being collected starts in `raw`.
    frame_start: usize,
    /// The open block's header block fragments, joined.
    fragment: Vec<u8>,
    /// The last block, re-encoded (kept to reuse its allocation).
    encoded: Vec<u8>,
    /// The client's HPACK state.
    decoder: loona_hpack::Decoder<'static>,
    /// Set by the first rewrite: every later block is re-encoded too.
    reencode: bool,
    /// The first authority rewritten, for the one log line per connection.
    rewrote: Option<String>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(SERVER_HEADER_TABLE_SIZE);
        Rewriter {
            state: State::Preface { matched: 0 },
            head: [0; FRAME_HEADER_LEN],
            block: None,
            raw: Vec::new(),
            frame_start: 0,
            fragment: Vec::new(),
            encoded: Vec::new(),
            decoder,
            reencode: false,
            rewrote: None,
        }
    }

    /// The first `:authority` this connection had rewritten, if any.
    pub fn rewritten(&self) -> Option<&str> {
        self.rewrote.as_deref()
    }

    /// Whatever comes next goes on as it is: the rewriter need not see it.
    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Takes the next bytes the client sent and appends what the server is to read to
    /// `out`. An error means the connection must be closed (it says why); nothing more may
    /// be fed after one.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            match self.state {
                State::Preface { matched } => {
                    let n = (PREFACE.len() - matched).min(input.len());
                    let (taken, rest) = input.split_at(n);
                    out.extend_from_slice(taken);
                    input = rest;
                    self.state = if taken != &PREFACE[matched..matched + n] {
                        State::Opaque
                    } else if matched + n == PREFACE.len() {
                        State::Head { have: 0 }
                    } else {
                        State::Preface {
                            matched: matched + n,
                        }
                    };
                }
                State::Head { have } => {
                    let n = (FRAME_HEADER_LEN - have).min(input.len());
                    self.head[have..have + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    if have + n == FRAME_HEADER_LEN {
                        self.frame_started(out)?;
                    } else {
                        self.state = State::Head { have: have + n };
                    }
                }
                State::Forward { remaining } => {
                    let n = remaining.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == remaining {
                        State::Head { have: 0 }
                    } else {
                        State::Forward {
                            remaining: remaining - n,
                        }
                    };
                }
                State::Collect { remaining } => {
                    let n = remaining.min(input.len());
                    self.raw.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == remaining {
                        self.frame_collected(out)?;
                    } else {
                        self.state = State::Collect {
                            remaining: remaining - n,
                        };
                    }
                }
                State::Opaque => {
                    out.extend_from_slice(input);
                    input = &[];
                }
            }
        }
        Ok(())
    }

    /// A frame's header is complete in `self.head`: decide what to do with the frame.
    fn frame_started(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let head = self.head;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match self.block {
            // A block is open: only its CONTINUATION may come; anything else is h2's to
            // refuse, so the block goes on as it came.
            Some(block) if kind != CONTINUATION || stream != block.stream => {
                return self.give_up_block(out, true);
            }
            Some(_) => {}
            None if kind == HEADERS => {
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority: None,
                });
                self.raw.clear();
                self.fragment.clear();
            }
            None => {
                out.extend_from_slice(&head);
                self.state = State::Forward { remaining: len };
                return Ok(());
            }
        }
        if self.raw.len() + FRAME_HEADER_LEN + len > MAX_BLOCK {
            if self.reencode {
                return Err(RewriteError::TooLarge);
            }
            return self.give_up_block(out, true);
        }
        self.frame_start = self.raw.len();
        self.raw.extend_from_slice(&head);
        self.state = State::Collect { remaining: len };
        if len == 0 {
            self.frame_collected(out)?;
        }
        Ok(())
    }

    /// The open block's current frame is complete in `raw`: take its fragment, and
    /// finish the block at END_HEADERS.
    fn frame_collected(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let frame = &self.raw[self.frame_start..];
        let (kind, flags) = (frame[3], frame[4]);
        let Some((payload, priority)) = fragment_of(kind, flags, &frame[FRAME_HEADER_LEN..]) else {
            // Padding or priority longer than the frame: h2 refuses the frame itself.
            return self.give_up_block(out, false);
        };
        self.fragment.extend_from_slice(payload);
        if let (Some(priority), Some(block)) = (priority, self.block.as_mut()) {
            block.priority = Some(priority);
        }
        if flags & END_HEADERS != 0 {
            self.finish_block(out)
        } else {
            self.state = State::Head { have: 0 };
            Ok(())
        }
    }

    /// Passes the open block on as it came (with the frame header in `head` when
    /// `with_head`: the frame that broke the sequence) and everything after it.
    fn give_up_block(&mut self, out: &mut Vec<u8>, with_head: bool) -> Result<(), RewriteError> {
        out.extend_from_slice(&self.raw);
        if with_head {
            out.extend_from_slice(&self.head);
        }
        self.raw.clear();
        self.block = None;
        self.state = State::Opaque;
        Ok(())
    }

    /// Decodes the complete block; passes it on as it came, or re-encoded.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let Some(block) = self.block.take() else {
            self.state = State::Opaque;
            return Ok(());
        };
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.clear();
        let mut rewrote: Option<String> = None;
        let mut too_large = false;
        let decoded = self.decoder.decode_with_cb(&self.fragment, |name, value| {
            let value: &[u8] = if &name[..] == b":authority"
                && http::uri::Authority::try_from(&value[..]).is_err()
            {
                rewrote.get_or_insert_with(|| String::from_utf8_lossy(&value).into_owned());
                REPLACEMENT
            } else {
                &value
            };
            if too_large || encoded.len() + name.len() + value.len() + 16 > MAX_BLOCK {
                too_large = true;
            } else {
                encode_never_indexed(&mut encoded, &name, value);
            }
        });
        self.state = State::Head { have: 0 };
        match decoded {
            Err(error) if self.reencode => {
                self.encoded = encoded;
                return Err(RewriteError::Hpack(error.to_string()));
            }
            Err(_) => {
                // The decoder's state is unknown from here on: h2 will say what is wrong.
                self.encoded = encoded;
                return self.give_up_block(out, false);
            }
            Ok(()) => {}
        }
        if !self.reencode && rewrote.is_none() {
            // A valid first authority: nothing on this connection needs the rewriter.
            out.extend_from_slice(&self.raw);
            self.raw = Vec::new();
            self.fragment = Vec::new();
            self.state = State::Opaque;
            return Ok(());
        }
        self.reencode = true;
        if too_large {
            self.encoded = encoded;
            return Err(RewriteError::TooLarge);
        }
        if let Some(authority) = rewrote
            && self.rewrote.is_none()
        {
            tracing::debug!(
                %authority,
                replacement = "localhost",
                "rewrote the client's :authority, which is not a valid authority (a socket path?), on this Unix connection"
            );
            self.rewrote = Some(authority);
        }
        write_block(out, block, &encoded);
        self.raw.clear();
        self.encoded = encoded;
        Ok(())
    }
}

/// A HEADERS or CONTINUATION frame's header block fragment, and a HEADERS frame's
/// priority fields; None when its padding or priority does not fit the payload.
fn fragment_of(kind: u8, flags: u8, payload: &[u8]) -> Option<(&[u8], Option<[u8; 5]>)> {
    if kind != HEADERS {
        return Some((payload, None));
    }
    let mut payload = payload;
    if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        payload = &rest[..rest.len().checked_sub(usize::from(pad))?];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (fields, rest) = payload.split_first_chunk::<5>()?;
        priority = Some(*fields);
        payload = rest;
    }
    Some((payload, priority))
}

/// Appends one field as a literal never indexed, new name, raw strings (RFC 7541 §6.2.3).
fn encode_never_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x10);
    for string in [name, value] {
        encode_integer(out, 0x00, 7, string.len());
        out.extend_from_slice(string);
    }
}

/// Appends `value` as an HPACK integer with a `prefix`-bit prefix, under `high` (the bits
/// above the prefix in the first byte) (RFC 7541 §5.1).
fn encode_integer(out: &mut Vec<u8>, high: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `fragment` as a HEADERS frame and as many CONTINUATION frames as it needs, each
/// payload at most [`MAX_FRAME`] bytes.
fn write_block(out: &mut Vec<u8>, block: Block, fragment: &[u8]) {
    let priority_len = if block.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = fragment.split_at(fragment.len().min(MAX_FRAME - priority_len));
    let mut flags = 0;
    if block.end_stream {
        flags |= END_STREAM;
    }
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    write_frame_head(
        out,
        priority_len + first.len(),
        HEADERS,
        flags,
        block.stream,
    );
    if let Some(priority) = block.priority {
        out.extend_from_slice(&priority);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        write_frame_head(out, chunk.len(), CONTINUATION, flags, block.stream);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

fn write_frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    // len <= MAX_FRAME, so it fits the 24-bit length field.
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// How many bytes of the socket one read takes at most.
const READ_CHUNK: usize = 16 * 1024;

/// A Unix connection whose client-to-server bytes go through a [`Rewriter`]; writes go to
/// the socket untouched. It reports the inner stream's connect info (for a UnixStream the
/// peer's credentials, which the supervisor reads for a caller's pid and uid).
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes read from the socket, before rewriting.
    read_buf: Box<[u8]>,
    /// Rewritten bytes not yet handed to the reader, from `pos` on.
    out: Vec<u8>,
    pos: usize,
    /// The rewriter refused the stream: every later read fails.
    failed: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            pos: 0,
            failed: false,
        }
    }

    /// The first `:authority` rewritten on this connection, if any.
    pub fn rewritten(&self) -> Option<&str> {
        self.rewriter.rewritten()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_opaque() {
                // Nothing left to rewrite: read straight into the caller's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "this connection was closed for a bad header block",
                )));
            }
            let mut raw = ReadBuf::new(&mut this.read_buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            let read = raw.filled();
            if read.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Err(error) = this.rewriter.feed(read, &mut this.out) {
                tracing::warn!(%error, "closing a Unix connection");
                this.failed = true;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DATA: u8 = 0x0;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;

    /// Literal with incremental indexing, literal without indexing (RFC 7541 §6.2).
    const INDEXING: u8 = 0x40;
    const WITHOUT: u8 = 0x00;

    /// grpcurl's `:authority` for `/tmp/interop/c2.sock`, as it sent it: literal with
    /// incremental indexing, name from the static table (1), Huffman-coded value.
    const GRPCURL_AUTHORITY: &[u8] = &[
        0x41, 0x8e, 0x61, 0x34, 0xd6, 0xc1, 0xaa, 0x49, 0x6c, 0x3d, 0x6c, 0x10, 0x4b, 0xa0, 0xe4,
        0xeb,
    ];
    /// RFC 7541 C.4.1: `:authority: www.example.com`, Huffman-coded, indexed name.
    const EXAMPLE_AUTHORITY: &[u8] = &[
        0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
    ];

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A field as a literal with a new name, raw strings, under `kind`'s first byte.
    fn literal(kind: u8, name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![kind];
        for string in [name.as_bytes(), value.as_bytes()] {
            encode_integer(&mut out, 0, 7, string.len());
            out.extend_from_slice(string);
        }
        out
    }

    /// An indexed field (RFC 7541 §6.1).
    fn indexed(index: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_integer(&mut out, 0x80, 7, index);
        out
    }

    /// A request's fields as grpcio sends them, with `authority` in the middle.
    fn grpcio_block(authority: &str) -> Vec<u8> {
        [
            indexed(3), // :method POST
            indexed(6), // :scheme http
            literal(INDEXING, ":path", "/arbiter.supervisor.v1.Supervisor/Ping"),
            literal(INDEXING, ":authority", authority),
            literal(INDEXING, "content-type", "application/grpc"),
            literal(INDEXING, "te", "trailers"),
        ]
        .concat()
    }

    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    }

    fn rewrite_in(chunks: impl IntoIterator<Item = Vec<u8>>) -> (Vec<u8>, Rewriter) {
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        for chunk in chunks {
            rewriter
                .feed(&chunk, &mut out)
                .expect("the rewriter accepts the stream");
        }
        (out, rewriter)
    }

    fn rewrite(input: &[u8]) -> Vec<u8> {
        rewrite_in([input.to_vec()]).0
    }

    /// A frame as the server reads it; a header block decoded (one decoder for the whole
    /// connection, as the server has), with its HEADERS frame's flags and priority.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Headers {
            stream: u32,
            end_stream: bool,
            priority: Option<[u8; 5]>,
            fields: Vec<(String, String)>,
        },
        Other {
            kind: u8,
            flags: u8,
            stream: u32,
            payload: Vec<u8>,
        },
    }

    /// What a server makes of `bytes`; also checks the frames this module writes keep to
    /// the smallest maximum frame size.
    fn server_view(bytes: &[u8]) -> Vec<Seen> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut seen = Vec::new();
        /// A block being read: its stream, END_STREAM, priority, and fragments so far.
        type Open = (u32, bool, Option<[u8; 5]>, Vec<u8>);
        let mut open: Option<Open> = None;
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
            rest = &rest[FRAME_HEADER_LEN + len..];
            if kind == HEADERS || kind == CONTINUATION {
                assert!(len <= MAX_FRAME, "a header frame of {len} bytes");
                let (fragment, priority) = fragment_of(kind, flags, payload).expect("fits");
                match open.as_mut() {
                    None => {
                        assert_eq!(kind, HEADERS);
                        open = Some((stream, flags & END_STREAM != 0, priority, fragment.to_vec()))
                    }
                    Some((s, _, _, block)) => {
                        assert_eq!((kind, stream), (CONTINUATION, *s));
                        block.extend_from_slice(fragment);
                    }
                }
                if flags & END_HEADERS != 0 {
                    let (stream, end_stream, priority, block) = open.take().expect("open");
                    let fields = decoder
                        .decode(&block)
                        .expect("the server can decode the block")
                        .into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect();
                    seen.push(Seen::Headers {
                        stream,
                        end_stream,
                        priority,
                        fields,
                    });
                }
            } else {
                assert!(open.is_none(), "a frame inside a header block");
                seen.push(Seen::Other {
                    kind,
                    flags,
                    stream,
                    payload: payload.to_vec(),
                });
            }
        }
        assert!(open.is_none(), "an unfinished header block");
        seen
    }

    fn fields(seen: &Seen) -> Vec<(&str, &str)> {
        match seen {
            Seen::Headers { fields, .. } => fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            Seen::Other { kind, .. } => panic!("frame type {kind}, not a header block"),
        }
    }

    fn authority(seen: &Seen) -> &str {
        fields(seen)
            .into_iter()
            .find(|(n, _)| *n == ":authority")
            .map(|(_, v)| v)
            .expect("an :authority")
    }

    #[test]
    fn a_socket_path_sent_as_a_literal_becomes_localhost() {
        let data = frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let input = stream(&[
            frame(HEADERS, END_HEADERS, 1, &grpcio_block("tmp%2Fx.sock")),
            data.clone(),
        ]);
        let (out, rewriter) = rewrite_in([input]);
        assert_eq!(rewriter.rewritten(), Some("tmp%2Fx.sock"));
        let seen = server_view(&out);
        assert_eq!(
            fields(&seen[1]),
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/arbiter.supervisor.v1.Supervisor/Ping"),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        );
        assert_eq!(
            seen[0],
            Seen::Other {
                kind: SETTINGS,
                flags: 0,
                stream: 0,
                payload: vec![0, 4, 0, 0, 0xff, 0xff]
            }
        );
        assert!(out.ends_with(&data), "DATA goes on byte for byte");
    }

    #[test]
    fn a_huffman_coded_socket_path_becomes_localhost() {
        let block = [indexed(3), indexed(6), GRPCURL_AUTHORITY.to_vec()].concat();
        let client = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(
            client[2],
            (b":authority".to_vec(), b"/tmp/interop/c2.sock".to_vec())
        );

        let out = rewrite(&stream(&[frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block,
        )]));
        let seen = server_view(&out);
        assert_eq!(
            fields(&seen[1]),
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "localhost")
            ]
        );
        assert!(matches!(
            seen[1],
            Seen::Headers {
                end_stream: true,
                stream: 1,
                ..
            }
        ));
    }

    #[test]
    fn an_authority_from_the_dynamic_table_is_rewritten_in_every_request() {
        let first = [
            indexed(3),
            literal(INDEXING, ":authority", "/run/a.sock"),
            literal(INDEXING, "x-request", "1"),
        ]
        .concat();
        // The newest entry is 62: x-request, then :authority at 63.
        let second = [indexed(3), indexed(63), indexed(62)].concat();
        let out = rewrite(&stream(&[
            frame(HEADERS, END_HEADERS, 1, &first),
            frame(HEADERS, END_HEADERS, 3, &second),
        ]));
        let seen = server_view(&out);
        for request in &seen[1..] {
            assert_eq!(
                fields(request),
                [
                    (":method", "POST"),
                    (":authority", "localhost"),
                    ("x-request", "1")
                ]
            );
        }
    }

    #[test]
    fn after_the_first_rewrite_every_block_is_reencoded_against_the_clients_table() {
        let first = [
            indexed(3),
            literal(INDEXING, ":authority", "/run/a.sock"),
            literal(INDEXING, "x-a", "1"),
        ]
        .concat();
        // Valid, but it must be re-encoded: the server's table has none of the first
        // block's entries, and this block refers to them.
        let second = [
            indexed(3),
            literal(INDEXING, ":authority", "localhost:50051"),
            literal(INDEXING, "x-b", "2"),
            indexed(64), // x-a (the client's table: x-b 62, localhost:50051 63, x-a 64)
        ]
        .concat();
        let third = [
            indexed(3),
            indexed(65), // /run/a.sock
            indexed(62), // x-b
        ]
        .concat();
        // A size update (emptying the client's table) is not for the server's table.
        let fourth = [vec![0x20], indexed(3), literal(WITHOUT, ":authority", "/x")].concat();
        let input = stream(&[
            frame(HEADERS, END_HEADERS, 1, &first),
            frame(HEADERS, END_HEADERS, 3, &second),
            frame(HEADERS, END_HEADERS, 5, &third),
            frame(HEADERS, END_HEADERS, 7, &fourth),
        ]);
        let out = rewrite(&input);
        let seen = server_view(&out);
        assert_eq!(
            fields(&seen[1]),
            [
                (":method", "POST"),
                (":authority", "localhost"),
                ("x-a", "1")
            ]
        );
        assert_eq!(
            fields(&seen[2]),
            [
                (":method", "POST"),
                (":authority", "localhost:50051"),
                ("x-b", "2"),
                ("x-a", "1")
            ]
        );
        assert_eq!(
            fields(&seen[3]),
            [
                (":method", "POST"),
                (":authority", "localhost"),
                ("x-b", "2")
            ]
        );
        let mut expected = Vec::new();
        encode_never_indexed(&mut expected, b":method", b"POST");
        encode_never_indexed(&mut expected, b":authority", b"localhost");
        let expected = frame(HEADERS, END_HEADERS, 7, &expected);
        assert!(
            out.ends_with(&expected),
            "re-encoded, the size update dropped"
        );
        // The size update emptied the client's table: 62 is past its end now.
        let fifth = frame(HEADERS, END_HEADERS, 9, &indexed(62));
        let result = Rewriter::new().feed(&[input, fifth].concat(), &mut Vec::new());
        assert!(matches!(result, Err(RewriteError::Hpack(_))), "{result:?}");
    }

    #[test]
    fn a_connection_whose_first_authority_is_valid_is_not_parsed_further() {
        let input = stream(&[
            frame(HEADERS, END_HEADERS, 1, &grpcio_block("localhost")),
            frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]),
            // Not rewritten: h2 resets this stream, as it did before this module.
            frame(HEADERS, END_HEADERS, 3, &grpcio_block("tmp%2Fx.sock")),
        ]);
        let (out, rewriter) = rewrite_in([input.clone()]);
        assert_eq!(out, input);
        assert!(rewriter.is_opaque());
        assert_eq!(rewriter.rewritten(), None);
    }

    #[test]
    fn continuation_frames_are_followed_and_a_large_block_is_split() {
        let big = "x".repeat(40_000);
        let block = [
            indexed(3),
            literal(WITHOUT, ":authority", "/run/c.sock"),
            literal(WITHOUT, "x-big", &big),
            literal(WITHOUT, "x-after", "yes"),
        ]
        .concat();
        // Split in three, the cuts falling inside literals.
        let (a, rest) = block.split_at(13_000);
        let (b, c) = rest.split_at(14_000);
        let input = stream(&[
            frame(HEADERS, 0, 1, a),
            frame(CONTINUATION, 0, 1, b),
            frame(CONTINUATION, END_HEADERS, 1, c),
            frame(PING, 0, 0, &[1; 8]),
        ]);
        let out = rewrite(&input);
        let seen = server_view(&out);
        assert_eq!(
            fields(&seen[1]),
            [
                (":method", "POST"),
                (":authority", "localhost"),
                ("x-big", big.as_str()),
                ("x-after", "yes")
            ]
        );
        assert!(matches!(seen[2], Seen::Other { kind: PING, .. }));
        let continuations = out.windows(5).filter(|w| w[3] == CONTINUATION).count();
        assert!(continuations >= 2, "40 kB go out in at least three frames");
    }

    #[test]
    fn padding_is_dropped_and_priority_and_end_stream_are_kept() {
        let block = [indexed(3), literal(WITHOUT, ":authority", "run%2Fd.sock")].concat();
        let priority = [0x80, 0, 0, 0, 15];
        let mut payload = vec![7];
        payload.extend_from_slice(&priority);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0; 7]);
        let flags = PADDED | PRIORITY | END_STREAM | END_HEADERS;
        let out = rewrite(&stream(&[frame(HEADERS, flags, 1, &payload)]));
        assert_eq!(
            server_view(&out)[1],
            Seen::Headers {
                stream: 1,
                end_stream: true,
                priority: Some(priority),
                fields: vec![
                    (":method".into(), "POST".into()),
                    (":authority".into(), "localhost".into())
                ],
            }
        );
        let headers = &out[PREFACE.len() + 15..];
        assert_eq!(headers[4], PRIORITY | END_STREAM | END_HEADERS, "no PADDED");

        // With a valid authority the padded frame goes on as it came.
        let block = [indexed(3), literal(WITHOUT, ":authority", "localhost")].concat();
        let mut payload = vec![3];
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0; 3]);
        let input = stream(&[frame(HEADERS, PADDED | END_HEADERS, 1, &payload)]);
        assert_eq!(rewrite(&input), input);
    }

    #[test]
    fn valid_authorities_and_other_frames_pass_byte_for_byte() {
        let mut frames = Vec::new();
        for (i, authority) in ["localhost", "127.0.0.1:50051", "[::1]:8080", "arbiter"]
            .into_iter()
            .enumerate()
        {
            let stream_id = 2 * i as u32 + 1;
            frames.push(frame(
                HEADERS,
                END_HEADERS,
                stream_id,
                &grpcio_block(authority),
            ));
            frames.push(frame(DATA, END_STREAM, stream_id, &[0, 0, 0, 0, 2, 8, 1]));
        }
        let example = [
            indexed(2),
            indexed(6),
            indexed(4),
            EXAMPLE_AUTHORITY.to_vec(),
        ]
        .concat();
        frames.push(frame(HEADERS, END_HEADERS | END_STREAM, 9, &example));
        frames.push(frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]));
        frames.push(frame(PING, 0, 0, &[7; 8]));
        frames.push(frame(0xfa, 0xff, 3, b"an extension frame"));
        frames.push(frame(SETTINGS, 1, 0, &[]));
        let input = stream(&frames);
        let (out, rewriter) = rewrite_in([input.clone()]);
        assert_eq!(out, input);
        assert_eq!(rewriter.rewritten(), None);
        let seen = server_view(&out);
        let decoded = seen.iter().filter(|s| matches!(s, Seen::Headers { .. }));
        let authorities: Vec<&str> = decoded.map(authority).collect();
        assert_eq!(
            authorities,
            [
                "localhost",
                "127.0.0.1:50051",
                "[::1]:8080",
                "arbiter",
                "www.example.com"
            ]
        );
    }

    /// A stream with every case in it: rewrites, the table, CONTINUATION, padding, DATA.
    /// The client's table after its second block: te 62, content-type 63, localhost 64,
    /// :path 65, te 66, content-type 67, tmp%2Fe.sock 68.
    fn everything() -> Vec<u8> {
        let block = grpcio_block("localhost");
        let (a, b) = block.split_at(20);
        let a = [&[2], a, &[0, 0]].concat();
        stream(&[
            frame(HEADERS, END_HEADERS, 1, &grpcio_block("tmp%2Fe.sock")),
            frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 1, 9]),
            frame(HEADERS, PADDED, 3, &a),
            frame(CONTINUATION, END_HEADERS, 3, b),
            frame(DATA, 0, 3, &[1; 300]),
            frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                5,
                &[indexed(3), indexed(68)].concat(),
            ),
            frame(PING, 0, 0, &[3; 8]),
        ])
    }

    #[test]
    fn reads_split_anywhere_give_the_same_bytes() {
        let input = everything();
        let whole = rewrite(&input);
        let seen = server_view(&whole);
        assert_eq!(authority(&seen[1]), "localhost");
        assert_eq!(authority(&seen[3]), "localhost");
        assert_eq!(
            authority(&seen[5]),
            "localhost",
            "68 is the rewritten authority"
        );
        for cut in 0..input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(
                rewrite_in([a.to_vec(), b.to_vec()]).0,
                whole,
                "cut at {cut}"
            );
        }
        let bytes = input.iter().map(|b| vec![*b]);
        assert_eq!(rewrite_in(bytes).0, whole, "a byte at a time");
    }

    #[test]
    fn a_stream_it_cannot_follow_is_passed_on_as_it_came() {
        let block = grpcio_block("tmp%2Fx.sock");
        let mut bad_padding = vec![200];
        bad_padding.extend_from_slice(&block);
        let cases = [
            b"GET / HTTP/1.1\r\nHost: /tmp/x.sock\r\n\r\n".to_vec(),
            stream(&[frame(HEADERS, PADDED | END_HEADERS, 1, &bad_padding)]),
            stream(&[frame(HEADERS, PRIORITY | END_HEADERS, 1, &[1, 2])]),
            stream(&[frame(HEADERS, 0, 1, &block), frame(DATA, 0, 1, b"x")]),
            stream(&[
                frame(HEADERS, 0, 1, &block),
                frame(CONTINUATION, END_HEADERS, 3, b""),
            ]),
            stream(&[frame(
                HEADERS,
                END_HEADERS,
                1,
                &[indexed(3), indexed(70)].concat(),
            )]),
            stream(&[frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x7f])]), // size 16384
        ];
        for input in cases {
            let mut garbage_after = input.clone();
            garbage_after.extend(frame(HEADERS, END_HEADERS, 5, &block));
            assert_eq!(rewrite(&garbage_after), garbage_after, "{input:?}");
        }
    }

    #[test]
    fn after_a_rewrite_a_block_it_cannot_pass_on_closes_the_connection() {
        let first = frame(HEADERS, END_HEADERS, 1, &grpcio_block("tmp%2Fx.sock"));
        let undecodable = frame(HEADERS, END_HEADERS, 3, &indexed(99));
        let mut rewriter = Rewriter::new();
        let result = rewriter.feed(&stream(&[first.clone(), undecodable]), &mut Vec::new());
        assert!(matches!(result, Err(RewriteError::Hpack(_))), "{result:?}");

        // One byte that expands to a 4,000-byte entry, 300 times.
        let entry = literal(INDEXING, "x-bomb", &"b".repeat(3_900));
        let bomb = [entry, vec![0xbe; 300]].concat();
        let mut rewriter = Rewriter::new();
        let input = stream(&[first, frame(HEADERS, END_HEADERS, 3, &bomb)]);
        let result = rewriter.feed(&input, &mut Vec::new());
        assert!(matches!(result, Err(RewriteError::TooLarge)), "{result:?}");
    }

    #[test]
    fn a_block_over_the_limit_is_passed_on_before_a_rewrite_and_refused_after() {
        let chunk = vec![0; MAX_FRAME];
        let mut frames = vec![frame(HEADERS, 0, 1, &chunk)];
        frames.extend((0..MAX_BLOCK / MAX_FRAME).map(|_| frame(CONTINUATION, 0, 1, &chunk)));
        let input = stream(&frames);
        assert_eq!(rewrite(&input), input);

        let first = frame(HEADERS, END_HEADERS, 1, &grpcio_block("tmp%2Fx.sock"));
        let mut all = vec![first];
        all.extend(frames.iter().map(|f| {
            let mut f = f.clone();
            f[8] = 3;
            f
        }));
        let result = Rewriter::new().feed(&stream(&all), &mut Vec::new());
        assert!(matches!(result, Err(RewriteError::TooLarge)), "{result:?}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            with_preface in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let input = if with_preface { [PREFACE, &bytes].concat() } else { bytes };
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut rewriter = Rewriter::new();
            let mut out = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([input.len()]) {
                if rewriter.feed(&input[start..cut], &mut out).is_err() {
                    break;
                }
                start = cut;
            }
        }

        #[test]
        fn a_valid_stream_cut_short_or_followed_by_garbage_never_panics(
            keep in any::<prop::sample::Index>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let valid = everything();
            let kept = &valid[..keep.index(valid.len() + 1)];
            let input = [kept, &garbage].concat();
            let mut out = Vec::new();
            let _ = Rewriter::new().feed(&input, &mut out);
        }

        #[test]
        fn any_read_boundaries_give_the_same_bytes(
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let input = everything();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([input.len()]) {
                chunks.push(input[start..cut].to_vec());
                start = cut;
            }
            prop_assert_eq!(rewrite_in(chunks).0, rewrite(&input));
        }
    }

    #[tokio::test]
    async fn the_wrapper_rewrites_what_it_reads_and_keeps_the_peers_credentials() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tonic::transport::server::Connected;

        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        let mut server = AuthorityFix::new(server);
        let credentials = server.connect_info().peer_cred.expect("peer credentials");
        assert_eq!(credentials.uid(), nix::unistd::getuid().as_raw());
        assert_eq!(credentials.pid(), Some(std::process::id() as i32));

        let input = everything();
        let writer = tokio::spawn({
            let input = input.clone();
            async move {
                let mut client = client;
                for piece in input.chunks(7) {
                    client.write_all(piece).await.unwrap();
                    client.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut read = Vec::new();
        let limit = std::time::Duration::from_secs(10);
        tokio::time::timeout(limit, server.read_to_end(&mut read))
            .await
            .expect("the writer finishes")
            .unwrap();
        writer.await.unwrap();
        assert_eq!(read, rewrite(&input));
        assert_eq!(server.rewritten(), Some("tmp%2Fe.sock"));
    }

    #[tokio::test]
    async fn the_wrapper_fails_reads_once_the_rewriter_refuses_the_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
        let mut server = AuthorityFix::new(server);
        let first = frame(HEADERS, END_HEADERS, 1, &grpcio_block("tmp%2Fx.sock"));
        let undecodable = frame(HEADERS, END_HEADERS, 3, &indexed(99));
        client
            .write_all(&stream(&[first, undecodable]))
            .await
            .unwrap();
        drop(client);
        let mut read = Vec::new();
        let error = server.read_to_end(&mut read).await.expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("cannot be decoded"), "{error}");
    }
}
