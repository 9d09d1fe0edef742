//! One direction of the relay: the frames its source sent, scanned and
//! written on to its destination, with the bytes the destination has not
//! taken yet. Control frames are shown to the caller, which says which to
//! forward; data frames pass without a copy.

use std::{
    io,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use super::{close::Flow, settings::RelaySettings};
use crate::{
    frame::{ControlFrame, Direction, FrameScanner, Limits, Opcode, ProtocolError, Scan},
    io::Io,
};

/// One direction of the relay.
pub(super) struct Dir {
    pub(super) scanner: FrameScanner,
    /// An incomplete frame header or control frame, waiting for more bytes.
    pub(super) carry: Vec<u8>,
    /// Bytes the destination has not taken yet.
    pub(super) pending: Vec<u8>,
    /// When `pending` became non-empty.
    pub(super) pending_since: Option<Instant>,
    /// The source ended (or, for the client, broke the protocol): nothing
    /// more to read.
    pub(super) eof: bool,
    /// The source broke the protocol: its bytes can no longer be followed
    /// as frames, so it is not read again. Unlike `eof`, the source is
    /// still there and is sent a close frame.
    pub(super) broken: bool,
    /// The destination was half-closed.
    pub(super) shut: bool,
    /// Frames from the source are no longer forwarded (after the gateway
    /// sent its own close the other way).
    pub(super) discard: bool,
    /// Counts reads, to sample the latency histogram.
    pub(super) reads: u8,
}

impl Dir {
    pub(super) fn new(direction: Direction, settings: &RelaySettings, deflate: bool) -> Self {
        let limits = Limits {
            max_frame: settings.max_frame,
            max_message: settings.max_message,
            rsv1_allowed: deflate,
        };
        Self {
            scanner: FrameScanner::new(direction, limits),
            carry: Vec::new(),
            pending: Vec::new(),
            pending_since: None,
            eof: false,
            broken: false,
            shut: false,
            discard: false,
            reads: 0,
        }
    }

    /// Sends `bytes` on: straight to the socket if nothing is waiting,
    /// otherwise (or for what the socket does not take) into `pending`.
    pub(super) fn forward(
        &mut self,
        bytes: &[u8],
        sink: &mut Io,
        cx: &mut Context<'_>,
    ) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let written = if self.pending.is_empty() {
            match sink.poll_write(cx, bytes) {
                Poll::Ready(r) => r?,
                Poll::Pending => 0,
            }
        } else {
            0
        };
        if written < bytes.len() {
            if self.pending.is_empty() {
                self.pending_since = Some(Instant::now());
            }
            self.pending.extend_from_slice(&bytes[written..]);
        }
        Ok(())
    }

    /// Marks `n` pending bytes as written; frees the buffer once all are,
    /// and says how long they waited.
    pub(super) fn written(&mut self, n: usize) -> Option<Duration> {
        self.pending.drain(..n);
        let mut waited = None;
        if self.pending.is_empty() {
            waited = self.pending_since.map(|since| since.elapsed());
            self.pending = Vec::new();
            self.pending_since = None;
        }
        waited
    }

    pub(super) fn idle_out(&self) -> bool {
        self.pending.is_empty()
    }

    /// Its source may be read: it has not ended or broken the protocol.
    pub(super) fn readable(&self) -> bool {
        !self.eof && !self.broken
    }

    /// This direction as the close protocol sees it.
    pub(super) fn flow(&self) -> Flow {
        Flow {
            ended: self.eof,
            shut: self.shut,
            at_frame_boundary: self.scanner.at_frame_boundary(),
            at_message_boundary: self.scanner.at_message_boundary(),
            pending: !self.pending.is_empty(),
        }
    }
}

/// What the control frames of one read asked for.
#[derive(Default)]
pub(super) struct Seen {
    /// A close frame arrived: its code (or `None` without one).
    pub(super) close: Option<Option<u16>>,
    /// Data frames passed.
    pub(super) data: bool,
    /// Frames were passed on to the other side (data, or control frames
    /// that were forwarded).
    pub(super) passed: bool,
}

/// Scans `input` (carry first) and forwards it frame by frame; control
/// frames go through `decide`, which says whether to forward them.
pub(super) fn pump(
    dir: &mut Dir,
    input: &[u8],
    sink: &mut Io,
    cx: &mut Context<'_>,
    mut decide: impl FnMut(&ControlFrame<'_>) -> bool,
) -> io::Result<Result<Seen, ProtocolError>> {
    let mut seen = Seen::default();
    let (mut pos, mut from) = (0, 0);
    while pos < input.len() {
        match dir.scanner.scan(&input[pos..]) {
            Scan::Data(n) => {
                seen.data = true;
                seen.passed |= !dir.discard;
                if dir.discard {
                    from = pos + n;
                }
                pos += n;
            }
            Scan::Control(frame) => {
                let len = frame.raw.len();
                if frame.opcode == Opcode::Close {
                    seen.close = Some(frame.close_code());
                }
                let keep = decide(&frame) && !dir.discard;
                seen.passed |= keep;
                if !keep {
                    dir.forward(&input[from..pos], sink, cx)?;
                    from = pos + len;
                }
                pos += len;
            }
            Scan::Incomplete => {
                dir.carry.extend_from_slice(&input[pos..]);
                break;
            }
            Scan::Error(e) => {
                dir.forward(&input[from..pos], sink, cx)?;
                return Ok(Err(e));
            }
        }
    }
    let end = pos.min(input.len());
    dir.forward(&input[from..end], sink, cx)?;
    Ok(Ok(seen))
}
