//! `FrameScanner`: follows the frame structure of one direction of a
//! WebSocket byte stream so that the relay can forward frames as they are
//! (client frames stay masked, compressed frames stay compressed) and still
//! know where frames and messages begin and end.
//!
//! The scanner never copies or rewrites payload. It reads each frame header
//! (2 to 14 bytes) once, checks it against RFC 6455 and the size limits, and
//! then only counts payload bytes. Control frames (at most 125 bytes of
//! payload) are returned whole, so that the relay can look inside pings,
//! pongs and closes. Text payload is not checked for UTF-8: the endpoints do
//! that, and the gateway stays transparent.

use std::fmt;

/// Which side produced the bytes: client frames must be masked, server
/// frames must not be (RFC 6455 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Bytes sent by the client, on their way to the backend.
    ClientToServer,
    /// Bytes sent by the backend, on their way to the client.
    ServerToClient,
}

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented message.
    Continuation,
    /// First frame of a text message.
    Text,
    /// First frame of a binary message.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The opcode's 4 bits.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Size limits and negotiated extensions for one direction.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest frame payload, in bytes.
    pub max_frame: u64,
    /// Largest message (all fragments), in bytes. With permessage-deflate
    /// this is the compressed size: the gateway never inflates.
    pub max_message: u64,
    /// permessage-deflate was negotiated: RSV1 may mark a message's first
    /// frame as compressed.
    pub rsv1_allowed: bool,
}

/// Why a stream broke the protocol. Each maps to a close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// RSV2 or RSV3 set, or RSV1 without permessage-deflate or on a frame
    /// that cannot carry it.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    ReservedOpcode(u8),
    /// A control frame without FIN.
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    ControlTooLong,
    /// A continuation frame with no message to continue.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is open.
    ExpectedContinuation,
    /// A client frame without a mask.
    Unmasked,
    /// A server frame with a mask.
    Masked,
    /// A 64-bit length with its most significant bit set.
    BadLength,
    /// A frame larger than the frame limit.
    FrameTooBig,
    /// A message larger than the message limit.
    MessageTooBig,
}

impl ProtocolError {
    /// The close code that reports it: 1009 for sizes, 1002 otherwise.
    pub fn close_code(self) -> u16 {
        match self {
            Self::FrameTooBig | Self::MessageTooBig => 1009,
            _ => 1002,
        }
    }

    /// A short label for metrics and close reasons.
    pub fn label(self) -> &'static str {
        match self {
            Self::ReservedBits => "reserved_bits",
            Self::ReservedOpcode(_) => "reserved_opcode",
            Self::FragmentedControl => "fragmented_control",
            Self::ControlTooLong => "control_too_long",
            Self::UnexpectedContinuation => "unexpected_continuation",
            Self::ExpectedContinuation => "expected_continuation",
            Self::Unmasked => "unmasked_client_frame",
            Self::Masked => "masked_server_frame",
            Self::BadLength => "bad_length",
            Self::FrameTooBig => "frame_too_big",
            Self::MessageTooBig => "message_too_big",
        }
    }
}

/// In words, for close reasons: "reserved opcode 7", "frame too big".
impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedOpcode(op) => write!(f, "reserved opcode {op}"),
            _ => {
                for (i, word) in self.label().split('_').enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    f.write_str(word)?;
                }
                Ok(())
            }
        }
    }
}

/// A whole control frame at the front of the scanned bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlFrame<'a> {
    /// Close, ping or pong.
    pub opcode: Opcode,
    /// The whole frame as it was on the wire (header and payload).
    pub raw: &'a [u8],
    /// The payload as it was on the wire (still masked for client frames).
    pub payload: &'a [u8],
    /// The masking key, for client frames.
    pub mask: Option<[u8; 4]>,
}

impl ControlFrame<'_> {
    /// The payload with the mask removed (at most 125 bytes).
    pub fn unmasked(&self) -> ([u8; 125], usize) {
        let mut out = [0u8; 125];
        let n = self.payload.len().min(125);
        out[..n].copy_from_slice(&self.payload[..n]);
        if let Some(mask) = self.mask {
            apply_mask(&mut out[..n], mask);
        }
        (out, n)
    }

    /// For a close frame: its status code, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        let (payload, n) = self.unmasked();
        (n >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
    }
}

/// What the front of the bytes handed to [`FrameScanner::scan`] is.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    /// This many bytes belong to data frames (headers and payload): forward
    /// them unchanged.
    Data(usize),
    /// A whole control frame.
    Control(ControlFrame<'a>),
    /// An incomplete header or control frame: keep the bytes and scan them
    /// again with more.
    Incomplete,
    /// The stream broke the protocol; nothing at the front may be forwarded.
    Error(ProtocolError),
}

/// The scanning state of one direction of one connection: 32 bytes.
#[derive(Clone, Debug)]
pub struct FrameScanner {
    direction: Direction,
    limits: Limits,
    /// Payload bytes of the current data frame not yet passed.
    payload_remaining: u64,
    /// Bytes of the open message so far (all its frames' payloads).
    message_len: u64,
    /// A text or binary message has started and its final frame has not.
    in_message: bool,
    /// The current data frame is the message's last (FIN).
    frame_fin: bool,
    /// Messages completed since the last [`FrameScanner::take_messages`].
    messages: u32,
}

impl FrameScanner {
    /// A scanner at the start of a stream.
    pub fn new(direction: Direction, limits: Limits) -> Self {
        Self {
            direction,
            limits,
            payload_remaining: 0,
            message_len: 0,
            in_message: false,
            frame_fin: false,
            messages: 0,
        }
    }

    /// Between two frames: a control frame may be sent here.
    pub fn at_frame_boundary(&self) -> bool {
        self.payload_remaining == 0
    }

    /// Between two messages: a close frame here cuts no message in two.
    pub fn at_message_boundary(&self) -> bool {
        self.payload_remaining == 0 && !self.in_message
    }

    /// Messages whose last byte was scanned since the previous call.
    pub fn take_messages(&mut self) -> u32 {
        std::mem::take(&mut self.messages)
    }

    /// Looks at the front of `buf`; the caller advances past
    /// `Data(n)` bytes or a control frame's `raw` bytes and calls again.
    pub fn scan<'a>(&mut self, buf: &'a [u8]) -> Scan<'a> {
        if buf.is_empty() {
            return Scan::Incomplete;
        }
        if self.payload_remaining > 0 {
            let n = self.payload_remaining.min(buf.len() as u64);
            self.payload_remaining -= n;
            self.finish_frame_if_done();
            return Scan::Data(n as usize);
        }
        let header = match self.parse_header(buf) {
            Ok(Some(h)) => h,
            Ok(None) => return Scan::Incomplete,
            Err(e) => return Scan::Error(e),
        };
        if header.opcode.is_control() {
            let total = header.len + header.payload_len as usize;
            if buf.len() < total {
                return Scan::Incomplete;
            }
            return Scan::Control(ControlFrame {
                opcode: header.opcode,
                raw: &buf[..total],
                payload: &buf[header.len..total],
                mask: header.mask,
            });
        }
        self.in_message = true;
        self.message_len += header.payload_len;
        self.frame_fin = header.fin;
        let in_buf = (buf.len() - header.len) as u64;
        let now = header.payload_len.min(in_buf);
        self.payload_remaining = header.payload_len - now;
        self.finish_frame_if_done();
        Scan::Data(header.len + now as usize)
    }

    fn finish_frame_if_done(&mut self) {
        if self.payload_remaining == 0 && self.in_message && self.frame_fin {
            self.in_message = false;
            self.frame_fin = false;
            self.message_len = 0;
            self.messages += 1;
        }
    }

    fn parse_header(&self, buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
        let b0 = buf[0];
        let fin = b0 & 0x80 != 0;
        let rsv = b0 & 0x70;
        let opcode =
            Opcode::from_bits(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
        let starts_message = matches!(opcode, Opcode::Text | Opcode::Binary);
        if rsv & 0x30 != 0 || (rsv & 0x40 != 0 && !(self.limits.rsv1_allowed && starts_message)) {
            return Err(ProtocolError::ReservedBits);
        }
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        match opcode {
            Opcode::Continuation if !self.in_message => {
                return Err(ProtocolError::UnexpectedContinuation);
            }
            Opcode::Text | Opcode::Binary if self.in_message => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        match (self.direction, masked) {
            (Direction::ClientToServer, false) => return Err(ProtocolError::Unmasked),
            (Direction::ServerToClient, true) => return Err(ProtocolError::Masked),
            _ => {}
        }
        let len7 = b1 & 0x7F;
        if opcode.is_control() && len7 > 125 {
            return Err(ProtocolError::ControlTooLong);
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let len = 2 + ext + if masked { 4 } else { 0 };
        if buf.len() < len {
            return Ok(None);
        }
        let payload_len = match ext {
            2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(ProtocolError::BadLength);
                }
                n
            }
            _ => u64::from(len7),
        };
        if payload_len > self.limits.max_frame {
            return Err(ProtocolError::FrameTooBig);
        }
        if !opcode.is_control() && self.message_len + payload_len > self.limits.max_message {
            return Err(ProtocolError::MessageTooBig);
        }
        let mask = masked.then(|| {
            let m = &buf[2 + ext..2 + ext + 4];
            [m[0], m[1], m[2], m[3]]
        });
        Ok(Some(Header {
            fin,
            opcode,
            len,
            payload_len,
            mask,
        }))
    }
}

struct Header {
    fin: bool,
    opcode: Opcode,
    /// Header length in bytes, mask included.
    len: usize,
    payload_len: u64,
    mask: Option<[u8; 4]>,
}

/// XORs `data` with the masking key (RFC 6455 §5.3), in place.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Encodes a control frame the gateway sends itself: unmasked towards the
/// client, masked (with `mask`) towards the backend. `payload` is at most
/// 125 bytes.
pub fn encode_control(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let payload = &payload[..payload.len().min(125)];
    out.push(0x80 | opcode.bits());
    let len = payload.len() as u8;
    match mask {
        None => {
            out.push(len);
            out.extend_from_slice(payload);
        }
        Some(mask) => {
            out.push(0x80 | len);
            out.extend_from_slice(&mask);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], mask);
        }
    }
}

/// Encodes a close frame with a status code and a reason (cut to fit the
/// 125-byte limit at a character boundary).
pub fn encode_close(code: u16, reason: &str, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode_control(Opcode::Close, &payload[..2 + end], mask, out);
}

#[cfg(test)]
mod tests;
