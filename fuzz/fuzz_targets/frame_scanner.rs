//! Fuzzes `FrameScanner` the way the relay drives it: bytes arrive in reads
//! of any size, an `Incomplete` front is carried over and scanned again with
//! the next read, and the stream stops at the first protocol error.
//!
//! Input: 4 configuration bytes, then the stream.
//! - byte 0: bit 0 picks the direction (0: client to server), bit 1 allows
//!   RSV1 (permessage-deflate);
//! - bytes 1 and 2: the frame and message limits (see [`limit`]), small most
//!   of the time so that the 1009 paths are reached;
//! - byte 3: the pattern of read sizes (0: the whole stream in one read).
//!
//! The stream is scanned twice, in one read and in the reads byte 3 asks
//! for, and both runs must agree.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_dataplane::frame::{Direction, FrameScanner, Limits, Opcode, ProtocolError, Scan};

/// The longest front the scanner may ask to carry: a control frame with a
/// masked 125-byte payload is 131 bytes, a data frame header at most 14.
/// Anything longer would let a peer grow the relay's carry buffer.
const MAX_CARRY: usize = 6 + 125;

/// What the relay sees, with runs of data merged so that the way the bytes
/// were cut into reads does not show.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// Data bytes to forward, and the messages they completed.
    Data { bytes: usize, messages: u64 },
    /// A whole control frame.
    Control {
        opcode: Opcode,
        raw: Vec<u8>,
        close_code: Option<u16>,
    },
    /// The stream broke the protocol; nothing follows.
    Error(ProtocolError),
}

/// One pass over the stream, with the relay's bookkeeping and the checks.
struct Run {
    direction: Direction,
    scanner: FrameScanner,
    /// The incomplete front kept for the next read.
    carry: Vec<u8>,
    events: Vec<Event>,
    data_bytes: usize,
    control_bytes: usize,
    /// Bytes never scanned because an error came first.
    rejected: usize,
    failed: bool,
    data_frames: u64,
    fin_data_frames: u64,
    /// Total of `take_messages()`.
    messages: u64,
    /// The last data frame begun had FIN (true before the first).
    last_fin: bool,
}

impl Run {
    fn new(direction: Direction, limits: Limits) -> Self {
        Self {
            direction,
            scanner: FrameScanner::new(direction, limits),
            carry: Vec::new(),
            events: Vec::new(),
            data_bytes: 0,
            control_bytes: 0,
            rejected: 0,
            failed: false,
            data_frames: 0,
            fin_data_frames: 0,
            messages: 0,
            last_fin: true,
        }
    }

    /// One read: the carry, then `read`, scanned as the relay's `pump` does.
    fn feed(&mut self, read: &[u8]) {
        if self.failed {
            self.rejected += read.len();
            return;
        }
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(read);
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let at_frame_boundary = self.scanner.at_frame_boundary();
            match self.scanner.scan(rest) {
                Scan::Data(n) => {
                    assert!(
                        0 < n && n <= rest.len(),
                        "Data({n}) with {} bytes left",
                        rest.len()
                    );
                    if at_frame_boundary {
                        assert!(n >= 2, "Data({n}) holds no whole frame header");
                        self.data_frames += 1;
                        self.last_fin = rest[0] & 0x80 != 0;
                        if self.last_fin {
                            self.fin_data_frames += 1;
                        }
                    }
                    let messages = u64::from(self.scanner.take_messages());
                    self.messages += messages;
                    self.check_message_count();
                    self.data_bytes += n;
                    pos += n;
                    match self.events.last_mut() {
                        Some(Event::Data { bytes, messages: m }) => {
                            *bytes += n;
                            *m += messages;
                        }
                        _ => self.events.push(Event::Data { bytes: n, messages }),
                    }
                }
                Scan::Control(frame) => {
                    let raw = frame.raw;
                    assert!(at_frame_boundary, "control frame inside a data frame");
                    assert!(frame.opcode.is_control(), "{:?} as control", frame.opcode);
                    assert!(
                        std::ptr::eq(raw.as_ptr(), rest.as_ptr()) && raw.len() <= rest.len(),
                        "control frame's raw bytes are not the front of the input"
                    );
                    assert!(frame.payload.len() <= 125, "control payload > 125");
                    let header = raw.len().checked_sub(frame.payload.len());
                    assert!(
                        header.is_some_and(|h| std::ptr::eq(
                            frame.payload.as_ptr(),
                            raw[h..].as_ptr()
                        )),
                        "control payload is not the end of raw"
                    );
                    let masked = self.direction == Direction::ClientToServer;
                    assert_eq!(frame.mask.is_some(), masked, "mask in the wrong direction");
                    assert_eq!(
                        header,
                        Some(if masked { 6 } else { 2 }),
                        "control header length"
                    );
                    assert_eq!(frame.unmasked().1, frame.payload.len());
                    self.events.push(Event::Control {
                        opcode: frame.opcode,
                        raw: raw.to_vec(),
                        close_code: frame.close_code(),
                    });
                    self.control_bytes += raw.len();
                    pos += raw.len();
                    assert_eq!(
                        self.scanner.take_messages(),
                        0,
                        "a control frame ended a message"
                    );
                }
                Scan::Incomplete => {
                    assert!(at_frame_boundary, "Incomplete inside a data frame");
                    assert!(
                        rest.len() < MAX_CARRY,
                        "Incomplete with {} bytes: the carry can grow without bound",
                        rest.len()
                    );
                    self.carry = rest.to_vec();
                    return;
                }
                Scan::Error(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1009), "{e:?}");
                    assert!(!e.label().is_empty());
                    self.events.push(Event::Error(e));
                    self.rejected += rest.len();
                    self.failed = true;
                    return;
                }
            }
        }
    }

    /// Messages end only with data frames that have FIN; between frames,
    /// every such frame has ended its message.
    fn check_message_count(&self) {
        assert!(
            self.messages <= self.fin_data_frames && self.fin_data_frames <= self.data_frames,
            "{} messages from {} data frames ({} with FIN)",
            self.messages,
            self.data_frames,
            self.fin_data_frames
        );
        if self.scanner.at_frame_boundary() {
            assert_eq!(
                self.messages, self.fin_data_frames,
                "a finished FIN frame did not end its message"
            );
            assert_eq!(
                self.scanner.at_message_boundary(),
                self.last_fin,
                "message boundary disagrees with the last frame's FIN"
            );
        }
    }

    /// Every byte was forwarded, is carried, or came after an error.
    fn check_totals(&self, len: usize) {
        assert_eq!(
            self.data_bytes + self.control_bytes + self.carry.len() + self.rejected,
            len,
            "data {} + control {} + carry {} + rejected {} != input",
            self.data_bytes,
            self.control_bytes,
            self.carry.len(),
            self.rejected
        );
        assert!(self.carry.is_empty() || !self.failed);
    }
}

/// A limit from one byte: 0 to 127 as is, otherwise one of the sizes that
/// sit on the length encodings' edges, or a realistic one.
fn limit(b: u8) -> u64 {
    const EDGES: [u64; 10] = [
        125,
        126,
        65_535,
        65_536,
        1 << 20,
        16 << 20,
        (1 << 32) + 1,
        (1 << 63) - 1,
        1 << 63,
        u64::MAX,
    ];
    if b < 0x80 {
        u64::from(b)
    } else {
        EDGES[usize::from(b & 0x7F) % EDGES.len()]
    }
}

/// The read sizes for pattern `seed`: between 1 and 1 + seed % 32 bytes,
/// varying from read to read.
fn reads(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![stream];
    }
    let span = 1 + usize::from(seed % 32);
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = usize::from(seed);
    while !rest.is_empty() {
        i = i.wrapping_mul(31).wrapping_add(7);
        let size = (1 + i % span).min(rest.len());
        let (read, tail) = rest.split_at(size);
        out.push(read);
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((config, stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    let direction = if config[0] & 1 == 0 {
        Direction::ClientToServer
    } else {
        Direction::ServerToClient
    };
    let limits = Limits {
        max_frame: limit(config[1]),
        max_message: limit(config[2]),
        rsv1_allowed: config[0] & 2 != 0,
    };

    let mut whole = Run::new(direction, limits);
    whole.feed(stream);
    whole.check_totals(stream.len());

    let mut pieces = Run::new(direction, limits);
    for read in reads(stream, config[3]) {
        pieces.feed(read);
    }
    pieces.check_totals(stream.len());

    assert_eq!(whole.events, pieces.events, "one read and many disagree");
    assert_eq!(whole.carry, pieces.carry);
});
