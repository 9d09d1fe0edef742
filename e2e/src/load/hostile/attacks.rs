//! The attacks of `ringway-load hostile`, one function each: they open
//! their hostile connections against [`Env`]'s gateway and count how each
//! one ended ([`Ended`]).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
};

use super::{Ended, Env, Latest, SLACK, Tally};

/// Reads an HTTP status line; `None` when the connection ended (or broke)
/// before one, or `wait` passed.
pub(super) async fn read_status(stream: &mut TcpStream, wait: Duration) -> Option<u16> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 512];
    let deadline = tokio::time::Instant::now() + wait;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&byte[..n]),
            _ => break,
        }
        if head.len() > 16 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// How an upgraded connection ended: `close NNNN` for the first close
/// frame from the gateway, `cut` for an end without one, `open` when it
/// was still open after `wait`. Data frames before it are skipped.
async fn read_close(stream: &mut TcpStream, wait: Duration) -> String {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Frames from the server are unmasked.
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
                    10,
                ),
                126 | 127 => break,
                n => (u64::from(n), 2),
            };
            let Some(end) = usize::try_from(len)
                .ok()
                .and_then(|l| l.checked_add(header))
            else {
                return "bad frame".to_owned();
            };
            if opcode == 0x8 {
                if buf.len() < header + 2.min(end - header) {
                    break;
                }
                return match end - header {
                    0 => "close no code".to_owned(),
                    _ => format!(
                        "close {}",
                        u16::from_be_bytes([buf[header], buf[header + 1]])
                    ),
                };
            }
            if buf.len() < end {
                break;
            }
            buf.drain(..end);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return "cut".to_owned(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return "open".to_owned(),
        }
    }
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    header_len(&mut out, payload.len() as u64, true);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn header_len(out: &mut Vec<u8>, len: u64, masked: bool) {
    let m = u8::from(masked) << 7;
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Runs `n` copies of `attack` (at most `parallel` connecting at once),
/// each told its index; each returns how it ended and whether that is
/// right.
async fn many<F, Fut>(n: usize, parallel: usize, attack: F) -> Ended
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (String, bool, Duration)> + Send + 'static,
{
    let how = Arc::new(Tally::default());
    let wrong = Arc::new(Tally::default());
    let latest = Arc::new(Latest::default());
    let gate = Arc::new(Semaphore::new(parallel));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .expect("never closed");
        let fut = attack(i);
        let (how, wrong, latest) = (Arc::clone(&how), Arc::clone(&wrong), Arc::clone(&latest));
        tasks.spawn(async move {
            let (ended, right, took) = fut.await;
            drop(permit);
            latest.see(took);
            if !right {
                wrong.add(ended.clone());
            }
            how.add(ended);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ended::from_tallies(n, &how, &wrong, &latest)
}

pub(super) async fn slowloris(env: &Arc<Env>, n: usize, timeout: Duration) -> Ended {
    // All of them held at once: the permit is only for connecting.
    let opened = Arc::new(Semaphore::new(500));
    let mut ended = many(n, n, |i| {
        let env = Arc::clone(env);
        let opened = Arc::clone(&opened);
        async move {
            let started = Instant::now();
            let permit = opened.acquire().await.expect("never closed");
            let stream = env.connect(None).await;
            drop(permit);
            let Ok(mut stream) = stream else {
                return ("connect failed".to_owned(), false, started.elapsed());
            };
            let request = env.upgrade(&format!("slow{i}"));
            let (mut read, mut write) = stream.split();
            let trickle = async {
                for byte in request.as_bytes() {
                    if write.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                std::future::pending::<()>().await;
            };
            let answer = async {
                let mut head = Vec::new();
                let mut buf = [0u8; 256];
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                head
            };
            let head = tokio::select! {
                head = answer => head,
                () = trickle => Vec::new(),
                () = tokio::time::sleep(timeout + SLACK * 4) => return ("open".to_owned(), false, started.elapsed()),
            };
            let took = started.elapsed();
            let text = String::from_utf8_lossy(&head);
            let how = match text.strip_prefix("HTTP/1.1 ").and_then(|t| t.get(..3)) {
                Some(code) => format!("status {code}"),
                None => "cut".to_owned(),
            };
            let right = how == "status 408" && took <= timeout + SLACK;
            (how, right, took)
        }
    })
    .await;
    ended.within = Some(timeout + SLACK);
    ended
}

pub(super) async fn huge_frames(env: &Arc<Env>, n: usize) -> Ended {
    let mut ended = many(n, 200, |i| {
        let env = Arc::clone(env);
        async move {
            let mut stream = match env.upgraded(&format!("huge{i}"), None).await {
                Ok(s) => s,
                Err(e) => return (e, false, Duration::ZERO),
            };
            let started = Instant::now();
            let len: u64 = if i % 2 == 0 { 1 << 62 } else { 16 << 20 };
            let mut head = vec![0x82];
            header_len(&mut head, len, true);
            head.extend_from_slice(&[1, 2, 3, 4]);
            let _ = stream.write_all(&head).await;
            let (mut read, mut write) = stream.split();
            let trickle = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if write.write_all(b"x").await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            };
            let mut rest = read_close_half(&mut read, Duration::from_secs(10));
            let how = tokio::select! {
                how = &mut rest => how,
                () = trickle => "cut".to_owned(),
            };
            let took = started.elapsed();
            let right = how == "close 1009" && took <= SLACK;
            (how, right, took)
        }
    })
    .await;
    ended.within = Some(SLACK);
    ended
}

/// [`read_close`] on the read half of a split stream.
fn read_close_half<'a>(
    read: &'a mut tokio::net::tcp::ReadHalf<'_>,
    wait: Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + 'a>> {
    Box::pin(async move {
        let mut first = [0u8; 2];
        match tokio::time::timeout(wait, read.read_exact(&mut first)).await {
            Err(_) => return "open".to_owned(),
            Ok(Err(_)) => return "cut".to_owned(),
            Ok(Ok(_)) => {}
        }
        if first[0] & 0x0f != 0x8 {
            return format!("opcode {}", first[0] & 0x0f);
        }
        let len = usize::from(first[1] & 0x7f);
        let mut payload = vec![0u8; len];
        if len < 2 || read.read_exact(&mut payload).await.is_err() {
            return "close no code".to_owned();
        }
        format!("close {}", u16::from_be_bytes([payload[0], payload[1]]))
    })
}

pub(super) async fn slow_consumers(env: &Arc<Env>, n: usize, timeout: Duration) -> Ended {
    let mut ended = many(n, n, |i| {
        let env = Arc::clone(env);
        async move {
            let mut stream = match env.upgraded(&format!("slowc{i}"), Some(4096)).await {
                Ok(s) => s,
                Err(e) => return (e, false, Duration::ZERO),
            };
            let started = Instant::now();
            // 512 KiB of echoes asked for, in 8 messages of 64 KiB.
            let message = frame(true, 0x2, &vec![0x5a; 64 * 1024]);
            for _ in 0..8 {
                if stream.write_all(&message).await.is_err() {
                    break;
                }
            }
            // Never read; the gateway cuts such a client with unread data
            // of its own still queued, which is a TCP reset: it shows as
            // the socket's pending error (SO_ERROR) without a read, at
            // the moment it came.
            let mut look = tokio::time::interval(Duration::from_millis(100));
            let must_end = timeout + SLACK;
            while started.elapsed() < must_end {
                look.tick().await;
                if let Ok(Some(_)) = stream.take_error() {
                    return ("cut".to_owned(), true, started.elapsed());
                }
            }
            // Not reset by now: what it reads says how it ended (late).
            let how = read_close(&mut stream, Duration::from_secs(2)).await;
            let took = started.elapsed();
            // A consumer that does not read cannot get a close frame
            // either: the gateway cuts it (or closes it, if it had room).
            let right = (how == "cut" || how.starts_with("close 10")) && took <= must_end;
            (how, right, took)
        }
    })
    .await;
    ended.within = Some(timeout + SLACK);
    ended
}

/// Bad upgrade requests and the status each must get.
fn malformed_requests(path: &str) -> Vec<(&'static str, String, u16)> {
    let good = |extra: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    let long = "a".repeat(64 * 1024);
    vec![
        ("not http", "HELLO\r\n\r\n".to_owned(), 400),
        (
            "bad header",
            format!("GET {path} HTTP/1.1\r\nHo st: x\r\n\r\n"),
            400,
        ),
        ("post", good("").replacen("GET", "POST", 1), 400),
        ("http/1.0", good("").replace("HTTP/1.1", "HTTP/1.0"), 400),
        ("no host", good("").replace("Host: h\r\n", ""), 400),
        (
            "no upgrade",
            good("").replace("Upgrade: websocket\r\n", ""),
            400,
        ),
        (
            "version 8",
            good("").replace("Version: 13", "Version: 8"),
            426,
        ),
        (
            "bad key",
            good("").replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            400,
        ),
        ("no route", good("").replacen(path, "/nowhere", 1), 404),
        (
            "too many headers",
            good(&(0..70).map(|i| format!("X-{i}: v\r\n")).collect::<String>()),
            431,
        ),
        ("64 KiB header", good(&format!("X-Big: {long}\r\n")), 431),
        (
            "64 KiB uri",
            good("").replacen(path, &format!("{path}{long}"), 1),
            431,
        ),
        (
            "content-length body",
            good("Content-Length: 5\r\n") + "hello",
            400,
        ),
        (
            "chunked body",
            good("Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (
            "length and chunked",
            good("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + "hello",
            400,
        ),
        (
            "two lengths",
            good("Content-Length: 5\r\nContent-Length: 5\r\n") + "hello",
            400,
        ),
    ]
}

pub(super) async fn malformed(env: &Arc<Env>) -> Ended {
    let cases = malformed_requests(&env.path);
    let repeat = 20;
    let cases = Arc::new(cases);
    many(cases.len() * repeat, 50, |i| {
        let env = Arc::clone(env);
        let cases = Arc::clone(&cases);
        async move {
            let (name, request, want) = &cases[i % cases.len()];
            let started = Instant::now();
            let Ok(mut stream) = env.connect(None).await else {
                return ("connect failed".to_owned(), false, started.elapsed());
            };
            // The whole request first, as most clients send it.
            let sent = stream.write_all(request.as_bytes()).await;
            let status = read_status(&mut stream, Duration::from_secs(5)).await;
            let took = started.elapsed();
            let how = match (status, &sent) {
                (Some(s), Ok(())) => format!("{name}: status {s}"),
                (Some(s), Err(_)) => format!("{name}: status {s} after a reset while sending"),
                (None, _) => format!("{name}: no answer"),
            };
            (how, status == Some(*want) && sent.is_ok(), took)
        }
    })
    .await
}

/// Frames that break RFC 6455 and the close code each must get.
fn violations() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut unmasked = vec![0x81, 5];
    unmasked.extend_from_slice(b"hello");
    vec![
        ("reserved opcode", frame(true, 0x3, b"x"), 1002),
        (
            "reserved bits",
            {
                let mut f = frame(true, 0x1, b"x");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("unmasked", unmasked, 1002),
        ("fragmented ping", frame(false, 0x9, b"x"), 1002),
        ("long ping", frame(true, 0x9, &[0; 126]), 1002),
        ("lone continuation", frame(true, 0x0, b"x"), 1002),
        (
            "interleaved message",
            {
                let mut f = frame(false, 0x1, b"a");
                f.extend(frame(true, 0x1, b"b"));
                f
            },
            1002,
        ),
        (
            "close code 999",
            frame(true, 0x8, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 5000",
            frame(true, 0x8, &5000u16.to_be_bytes()),
            1002,
        ),
        ("one-byte close", frame(true, 0x8, &[3]), 1002),
        ("invalid utf-8", frame(true, 0x1, &[0xff, 0xfe]), 1007),
        (
            "oversize frame",
            {
                let mut f = vec![0x82];
                header_len(&mut f, 2 << 20, true);
                f.extend_from_slice(&[1, 2, 3, 4]);
                f
            },
            1009,
        ),
    ]
}

pub(super) async fn frame_violations(env: &Arc<Env>) -> Ended {
    let cases = Arc::new(violations());
    let repeat = 20;
    let mut ended = many(cases.len() * repeat, 50, |i| {
        let env = Arc::clone(env);
        let cases = Arc::clone(&cases);
        async move {
            let (name, bytes, want) = &cases[i % cases.len()];
            let mut stream = match env.upgraded(&format!("bad{i}"), None).await {
                Ok(s) => s,
                Err(e) => return (format!("{name}: {e}"), false, Duration::ZERO),
            };
            let started = Instant::now();
            let _ = stream.write_all(bytes).await;
            let how = read_close(&mut stream, SLACK * 2).await;
            let took = started.elapsed();
            // The gateway does not check UTF-8 or close payloads: it passes
            // on what the backend does about them, and a backend may fail
            // the connection by dropping TCP (RFC 6455 7.1.7), as the echo
            // backend does. The client then sees that too (docs/closing.md).
            let passed_on = matches!(*name, "invalid utf-8" | "one-byte close") && how == "cut";
            let right = (how == format!("close {want}") || passed_on) && took <= SLACK;
            (format!("{name}: {how}"), right, took)
        }
    })
    .await;
    ended.within = Some(SLACK);
    ended
}

pub(super) async fn churn(env: &Arc<Env>, n: usize, per_second: u32) -> Ended {
    let started = Instant::now();
    let every = Duration::from_secs(1) / per_second;
    many(n, 256, |i| {
        let env = Arc::clone(env);
        let at = started + every * u32::try_from(i).unwrap_or(u32::MAX);
        async move {
            tokio::time::sleep_until(at.into()).await;
            let Ok(stream) = env.connect(None).await else {
                return ("connect failed".to_owned(), false, Duration::ZERO);
            };
            let reset = reset(stream);
            ("reset".to_owned(), reset.is_ok(), Duration::ZERO)
        }
    })
    .await
}

pub(super) async fn half_sent(env: &Arc<Env>, n: usize) -> Ended {
    let request = env.upgrade("half");
    let half = request.len() / 2;
    let held = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut ended = many(n, 200, |_| {
        let env = Arc::clone(env);
        let held = Arc::clone(&held);
        let part = request.as_bytes()[..half].to_vec();
        async move {
            let Ok(mut stream) = env.connect(None).await else {
                return ("connect failed".to_owned(), false, Duration::ZERO);
            };
            let _ = stream.write_all(&part).await;
            held.lock().expect("not poisoned").push(stream);
            ("reset".to_owned(), true, Duration::ZERO)
        }
    })
    .await;
    // Every one of them reset at once.
    let streams = std::mem::take(&mut *held.lock().expect("not poisoned"));
    for stream in streams {
        if reset(stream).is_err() {
            *ended.wrong.entry("no reset".to_owned()).or_default() += 1;
        }
    }
    ended
}

/// Closes `stream` with a reset instead of a FIN (SO_LINGER 0).
fn reset(stream: TcpStream) -> std::io::Result<()> {
    // Deprecated because a non-zero linger blocks the thread on drop; a
    // zero linger never waits.
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_and_sized() {
        let f = frame(true, 0x1, b"hi");
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1], 0x80 | 2);
        assert_eq!(f.len(), 2 + 4 + 2);
        let mut big = Vec::new();
        header_len(&mut big, 1 << 62, true);
        assert_eq!(big[0], 0x80 | 127);
        assert_eq!(big[1..9], (1u64 << 62).to_be_bytes());
    }

    #[test]
    fn every_malformed_request_expects_a_refusal() {
        for (name, request, status) in malformed_requests("/echo") {
            assert!((400..500).contains(&status), "{name}");
            assert!(!request.is_empty(), "{name}");
        }
    }
}
