use super::*;

const LIMITS: Limits = Limits {
    max_frame: 1 << 20,
    max_message: 4 << 20,
    rsv1_allowed: false,
};

/// Builds one frame as a peer would send it.
fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len() + if mask.is_some() { 4 } else { 0 };
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
    out
}

const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

#[derive(Debug, PartialEq)]
enum Event {
    Data(usize),
    Control(Opcode, Vec<u8>),
    Error(ProtocolError),
}

/// Scans `stream` fed in chunks of `chunk` bytes, the way the relay does
/// (incomplete fronts are kept and retried with more bytes), merging
/// adjacent data spans.
fn scan_all(scanner: &mut FrameScanner, stream: &[u8], chunk: usize) -> Vec<Event> {
    let mut events = Vec::new();
    let mut held: Vec<u8> = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        held.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            match scanner.scan(&held[pos..]) {
                Scan::Data(n) => {
                    assert!(n > 0 && pos + n <= held.len());
                    if let Some(Event::Data(m)) = events.last_mut() {
                        *m += n;
                    } else {
                        events.push(Event::Data(n));
                    }
                    pos += n;
                }
                Scan::Control(c) => {
                    let (p, n) = c.unmasked();
                    events.push(Event::Control(c.opcode, p[..n].to_vec()));
                    pos += c.raw.len();
                }
                Scan::Incomplete => break,
                Scan::Error(e) => {
                    events.push(Event::Error(e));
                    return events;
                }
            }
        }
        held.drain(..pos);
    }
    events
}

fn client() -> FrameScanner {
    FrameScanner::new(Direction::ClientToServer, LIMITS)
}

fn server() -> FrameScanner {
    FrameScanner::new(Direction::ServerToClient, LIMITS)
}

#[test]
fn a_single_text_message_is_forwarded_whole() {
    let bytes = frame(true, 0, 1, b"hello", MASK);
    let mut s = client();
    assert_eq!(
        scan_all(&mut s, &bytes, 1024),
        vec![Event::Data(bytes.len())]
    );
    assert_eq!(s.take_messages(), 1);
    assert!(s.at_message_boundary());
}

#[test]
fn every_split_point_gives_the_same_result() {
    let mut stream = frame(false, 0, 1, b"frag", MASK);
    stream.extend(frame(true, 0, 9, b"ping!", MASK));
    stream.extend(frame(true, 0, 0, &[7u8; 300], MASK));
    stream.extend(frame(true, 0, 2, &[9u8; 70_000], MASK));
    let whole = scan_all(&mut client(), &stream, stream.len());
    for chunk in [1, 2, 3, 7, 13, 64, 1000] {
        let mut s = client();
        let events = scan_all(&mut s, &stream, chunk);
        let data: usize = events
            .iter()
            .map(|e| if let Event::Data(n) = e { *n } else { 0 })
            .sum();
        let controls: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Control(..)))
            .collect();
        assert_eq!(data, stream.len() - frame(true, 0, 9, b"ping!", MASK).len());
        assert_eq!(
            controls,
            vec![&Event::Control(Opcode::Ping, b"ping!".to_vec())]
        );
        assert_eq!(s.take_messages(), 2, "chunk {chunk}");
    }
    assert_eq!(whole.len(), 3);
}

#[test]
fn control_frames_between_fragments_keep_the_message_open() {
    let mut s = server();
    let first = frame(false, 0, 1, b"hel", None);
    assert_eq!(s.scan(&first), Scan::Data(first.len()));
    assert!(s.at_frame_boundary());
    assert!(!s.at_message_boundary(), "a fragmented message is open");
    let ping = frame(true, 0, 9, b"x", None);
    assert!(matches!(s.scan(&ping), Scan::Control(c) if c.opcode == Opcode::Ping));
    let last = frame(true, 0, 0, b"lo", None);
    assert_eq!(s.scan(&last), Scan::Data(last.len()));
    assert!(s.at_message_boundary());
    assert_eq!(s.take_messages(), 1);
}

#[test]
fn sixteen_and_sixty_four_bit_lengths() {
    for len in [125usize, 126, 65_535, 65_536, 1 << 20] {
        let bytes = frame(true, 0, 2, &vec![0u8; len], None);
        let mut s = server();
        assert_eq!(
            scan_all(&mut s, &bytes, 4096),
            vec![Event::Data(bytes.len())],
            "{len}"
        );
        assert_eq!(s.take_messages(), 1);
    }
}

#[test]
fn partial_payload_is_passed_as_it_arrives() {
    let bytes = frame(true, 0, 2, &[5u8; 1000], None);
    let mut s = server();
    assert_eq!(s.scan(&bytes[..100]), Scan::Data(100));
    assert!(!s.at_frame_boundary());
    assert_eq!(s.scan(&bytes[100..]), Scan::Data(bytes.len() - 100));
    assert!(s.at_message_boundary());
}

#[test]
fn an_incomplete_header_waits_for_more() {
    let bytes = frame(true, 0, 2, &[0u8; 300], MASK);
    let mut s = client();
    for cut in 0..8 {
        assert_eq!(s.scan(&bytes[..cut]), Scan::Incomplete, "cut at {cut}");
    }
}

#[test]
fn masking_is_enforced_per_direction() {
    assert_eq!(
        client().scan(&frame(true, 0, 1, b"x", None)),
        Scan::Error(ProtocolError::Unmasked)
    );
    assert_eq!(
        server().scan(&frame(true, 0, 1, b"x", MASK)),
        Scan::Error(ProtocolError::Masked)
    );
}

#[test]
fn reserved_opcodes_and_bits_are_errors() {
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        assert_eq!(
            server().scan(&frame(true, 0, op, b"", None)),
            Scan::Error(ProtocolError::ReservedOpcode(op))
        );
    }
    for rsv in 1u8..8 {
        assert_eq!(
            server().scan(&frame(true, rsv, 1, b"x", None)),
            Scan::Error(ProtocolError::ReservedBits),
            "rsv {rsv}"
        );
    }
}

#[test]
fn rsv1_marks_compressed_messages_when_deflate_was_negotiated() {
    let limits = Limits {
        rsv1_allowed: true,
        ..LIMITS
    };
    let mut s = FrameScanner::new(Direction::ServerToClient, limits);
    let first = frame(false, 4, 1, b"abc", None);
    assert_eq!(s.scan(&first), Scan::Data(first.len()));
    // Only the first frame of a message may carry RSV1.
    assert_eq!(
        s.scan(&frame(true, 4, 0, b"d", None)),
        Scan::Error(ProtocolError::ReservedBits)
    );
    let mut s = FrameScanner::new(Direction::ServerToClient, limits);
    assert_eq!(
        s.scan(&frame(true, 4, 9, b"", None)),
        Scan::Error(ProtocolError::ReservedBits),
        "control frames are never compressed"
    );
}

#[test]
fn fragmentation_errors() {
    assert_eq!(
        server().scan(&frame(true, 0, 0, b"x", None)),
        Scan::Error(ProtocolError::UnexpectedContinuation)
    );
    let mut s = server();
    let first = frame(false, 0, 1, b"x", None);
    assert_eq!(s.scan(&first), Scan::Data(first.len()));
    assert_eq!(
        s.scan(&frame(true, 0, 2, b"y", None)),
        Scan::Error(ProtocolError::ExpectedContinuation)
    );
    assert_eq!(
        server().scan(&frame(false, 0, 9, b"", None)),
        Scan::Error(ProtocolError::FragmentedControl)
    );
    assert_eq!(
        server().scan(&frame(true, 0, 9, &[0u8; 126], None)),
        Scan::Error(ProtocolError::ControlTooLong)
    );
}

#[test]
fn oversize_frames_and_messages_are_1009() {
    let limits = Limits {
        max_frame: 100,
        max_message: 150,
        rsv1_allowed: false,
    };
    let mut s = FrameScanner::new(Direction::ServerToClient, limits);
    let big = frame(true, 0, 2, &[0u8; 101], None);
    assert_eq!(s.scan(&big), Scan::Error(ProtocolError::FrameTooBig));
    assert_eq!(ProtocolError::FrameTooBig.close_code(), 1009);

    let mut s = FrameScanner::new(Direction::ServerToClient, limits);
    let a = frame(false, 0, 2, &[0u8; 100], None);
    assert_eq!(s.scan(&a), Scan::Data(a.len()));
    assert_eq!(
        s.scan(&frame(true, 0, 0, &[0u8; 51], None)),
        Scan::Error(ProtocolError::MessageTooBig)
    );
    // The limit is checked from the header alone: a 2^62-byte length is
    // refused before any payload arrives.
    let mut huge = vec![0x82, 127];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    assert_eq!(
        FrameScanner::new(Direction::ServerToClient, limits).scan(&huge),
        Scan::Error(ProtocolError::FrameTooBig)
    );
    let mut bad = vec![0x82, 127];
    bad.extend_from_slice(&(1u64 << 63).to_be_bytes());
    assert_eq!(server().scan(&bad), Scan::Error(ProtocolError::BadLength));
}

#[test]
fn close_frames_expose_their_code() {
    let mut out = Vec::new();
    encode_close(1001, "going away", MASK, &mut out);
    let mut s = client();
    match s.scan(&out) {
        Scan::Control(c) => {
            assert_eq!(c.opcode, Opcode::Close);
            assert_eq!(c.close_code(), Some(1001));
            let (p, n) = c.unmasked();
            assert_eq!(&p[2..n], b"going away");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[test]
fn close_reasons_are_cut_to_fit_at_a_character_boundary() {
    let reason = "é".repeat(100); // 200 bytes
    let mut out = Vec::new();
    encode_close(1012, &reason, None, &mut out);
    let mut s = server();
    let Scan::Control(c) = s.scan(&out) else {
        panic!("not a control frame")
    };
    assert!(c.payload.len() <= 125);
    assert!(std::str::from_utf8(&c.payload[2..]).is_ok());
}
