//! `healthcheck`: the container health probe. Exits 0 if the service answers, 1 otherwise.
//!
//! Made for container health checks: the images are built `FROM scratch`, so there is no
//! shell, curl or kcat inside them. Self-contained (std only, no broker code), so it keeps
//! working while the broker changes. Two modes, each bounded by a 3 s deadline (resolve,
//! connect, write, read):
//!
//! * `healthcheck [HOST:PORT]` (default 127.0.0.1:9092): a Kafka listener must answer
//!   ApiVersions v0 with error_code 0. Used for brokers.
//! * `healthcheck --http HOST:PORT [PATH]` (PATH default `/metrics`): an HTTP/1.1 server must
//!   answer `GET PATH` with a 2xx status. Used for softswitches (`/metrics`) and ring
//!   controllers (`/ring`, which is 503 until the ring's first epoch is installed).
//!
//! Kafka request frame (all big-endian): i32 length, then header v1 — api_key i16 = 18
//! (ApiVersions), api_version i16 = 0, correlation_id i32, client_id as i16 length + bytes —
//! and an empty v0 body. Response: i32 length, correlation_id i32 (header v0), error_code i16,
//! then the api_keys array, which is only counted here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const DEFAULT_ADDR: &str = "127.0.0.1:9092";
const TIMEOUT: Duration = Duration::from_secs(3);
const API_VERSIONS: i16 = 18;
const CLIENT_ID: &str = "healthcheck";
/// A v0 ApiVersions response lists a few dozen APIs at 6 bytes each; anything this large is
/// not a Kafka broker answering us.
const MAX_RESPONSE: usize = 1 << 20;
const DEFAULT_HTTP_PATH: &str = "/metrics";
/// An HTTP status line longer than this is not one.
const MAX_STATUS_LINE: usize = 1024;

/// What to probe, from the command line.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Kafka { addr: String },
    Http { addr: String, path: String },
}

fn usage() {
    eprintln!("usage: healthcheck [HOST:PORT]               (default {DEFAULT_ADDR})");
    eprintln!("         exits 0 if the Kafka listener answers ApiVersions v0 with error_code 0");
    eprintln!("       healthcheck --http HOST:PORT [PATH]   (default PATH {DEFAULT_HTTP_PATH})");
    eprintln!("         exits 0 if GET PATH is answered with a 2xx status");
}

fn parse_args(args: &[String]) -> Option<Probe> {
    match args {
        [] => Some(Probe::Kafka {
            addr: DEFAULT_ADDR.to_string(),
        }),
        [flag, ..] if flag == "-h" || flag == "--help" => None,
        [flag, addr] if flag == "--http" => Some(Probe::Http {
            addr: addr.clone(),
            path: DEFAULT_HTTP_PATH.to_string(),
        }),
        [flag, addr, path] if flag == "--http" && path.starts_with('/') => Some(Probe::Http {
            addr: addr.clone(),
            path: path.clone(),
        }),
        [addr] if !addr.starts_with('-') => Some(Probe::Kafka { addr: addr.clone() }),
        _ => None,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(probe) = parse_args(&args) else {
        usage();
        return ExitCode::from(1);
    };
    let target = match &probe {
        Probe::Kafka { addr } => addr.clone(),
        Probe::Http { addr, path } => format!("http://{addr}{path}"),
    };

    // The check runs on its own thread so the deadline also covers name resolution, which
    // has no timeout of its own. Returning from main ends the process, and a stuck thread
    // with it.
    let deadline = Instant::now() + TIMEOUT;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let result = match &probe {
            Probe::Kafka { addr } => check(addr, deadline)
                .map(|api_count| format!("ok (ApiVersions v0, {api_count} APIs)")),
            Probe::Http { addr, path } => {
                check_http(addr, path, deadline).map(|status| format!("ok (HTTP {status})"))
            }
        };
        // The receiver is gone only if main already timed out; nothing left to report to.
        let _ = tx.send(result);
    });

    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(what)) => {
            println!("healthcheck: {target}: {what}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("healthcheck: {target}: {e}");
            ExitCode::from(1)
        }
        Err(_) => {
            let secs = TIMEOUT.as_secs();
            eprintln!("healthcheck: {target}: no answer within {secs} s");
            ExitCode::from(1)
        }
    }
}

/// Sends `GET path` and returns the status code if it is 2xx. The rest of the answer is
/// drained (bounded) so the server is not cut off mid-write, but not judged.
fn check_http(addr: &str, path: &str, deadline: Instant) -> Result<u16, String> {
    let targets: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut stream = connect(&targets, deadline)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {CLIENT_ID}\r\nConnection: close\r\n\r\n");
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(|e| format!("cannot set write timeout: {e}"))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send request: {e}"))?;

    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    let mut total = 0usize;
    let mut status = None;
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| format!("cannot set read timeout: {e}"))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            // Once the status line is in, a failing drain does not matter.
            Err(_) if status.is_some() => break,
            Err(e) => return Err(format!("cannot read response: {e}")),
        };
        if n == 0 {
            break;
        }
        total += n;
        if status.is_none() {
            head.extend_from_slice(&chunk[..n]);
            if let Some(end) = head.iter().position(|&b| b == b'\n') {
                status = Some(parse_status_line(&head[..end])?);
            } else if head.len() > MAX_STATUS_LINE {
                return Err("no HTTP status line in the first bytes".to_string());
            }
        }
        if total > MAX_RESPONSE {
            break;
        }
    }
    let status = match status {
        Some(s) => s,
        // A status line without a newline before EOF.
        None => parse_status_line(&head)?,
    };
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("GET {path} answered HTTP {status}"))
    }
}

/// `HTTP/1.x NNN reason` → NNN.
fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("not an HTTP/1.x status line: {line:?}"));
    }
    code.parse::<u16>()
        .map_err(|_| format!("bad status code in {line:?}"))
}

/// Sends one ApiVersions v0 request and checks the answer; returns how many APIs it lists.
fn check(addr: &str, deadline: Instant) -> Result<usize, String> {
    let targets: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut stream = connect(&targets, deadline)?;

    let correlation_id = correlation_id();
    let request = request_frame(correlation_id)?;
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(|e| format!("cannot set write timeout: {e}"))?;
    stream
        .write_all(&request)
        .map_err(|e| format!("cannot send request: {e}"))?;

    stream
        .set_read_timeout(Some(remaining(deadline)?))
        .map_err(|e| format!("cannot set read timeout: {e}"))?;
    let mut len_buf = [0u8; 4];
    stream
        .read_exact(&mut len_buf)
        .map_err(|e| format!("cannot read response length: {e}"))?;
    let len = i32::from_be_bytes(len_buf);
    let len = usize::try_from(len)
        .ok()
        .filter(|n| (6..=MAX_RESPONSE).contains(n))
        .ok_or_else(|| format!("implausible response length {len}"))?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("cannot read {len}-byte response: {e}"))?;

    parse_response(&body, correlation_id)
}

fn connect(targets: &[SocketAddr], deadline: Instant) -> Result<TcpStream, String> {
    let mut last_error = String::from("address resolved to nothing");
    for target in targets {
        match TcpStream::connect_timeout(target, remaining(deadline)?) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = format!("cannot connect to {target}: {e}"),
        }
    }
    Err(last_error)
}

/// Time left before the deadline, or an error once it has passed (a zero timeout would mean
/// "block forever" to the socket calls).
fn remaining(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("timed out after {} s", TIMEOUT.as_secs()))
}

/// A correlation id that differs between runs, so a stray answer cannot pass as ours.
fn correlation_id() -> i32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = std::process::id() ^ nanos;
    i32::from_be_bytes(mixed.to_be_bytes()) & i32::MAX
}

fn request_frame(correlation_id: i32) -> Result<Vec<u8>, String> {
    let Ok(client_id_len) = i16::try_from(CLIENT_ID.len()) else {
        return Err("client id too long".to_string());
    };
    let mut payload = Vec::with_capacity(10 + CLIENT_ID.len());
    payload.extend_from_slice(&API_VERSIONS.to_be_bytes());
    payload.extend_from_slice(&0i16.to_be_bytes()); // api_version
    payload.extend_from_slice(&correlation_id.to_be_bytes());
    payload.extend_from_slice(&client_id_len.to_be_bytes());
    payload.extend_from_slice(CLIENT_ID.as_bytes());
    // ApiVersions v0 has an empty body.
    let len = i32::try_from(payload.len()).map_err(|_| "request too long".to_string())?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Checks correlation id and error code; returns the length of the api_keys array.
fn parse_response(body: &[u8], correlation_id: i32) -> Result<usize, String> {
    let got = read_i32(body, 0).ok_or("response shorter than its header")?;
    if got != correlation_id {
        return Err(format!(
            "correlation id {got} in the response, expected {correlation_id}"
        ));
    }
    let error_code = read_i16(body, 4).ok_or("response has no error code")?;
    if error_code != 0 {
        return Err(format!("ApiVersions returned error code {error_code}"));
    }
    // The array is informational; a missing or odd one does not fail the check.
    let api_count = read_i32(body, 6).and_then(|n| usize::try_from(n).ok());
    Ok(api_count.unwrap_or(0))
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes(bytes.try_into().ok()?))
}

fn read_i16(buf: &[u8], at: usize) -> Option<i16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(i16::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_is_apiversions_v0() {
        let frame = request_frame(0x0102_0304).expect("frame");
        let mut expected = vec![0, 0, 0, 21, 0, 18, 0, 0, 1, 2, 3, 4, 0, 11];
        expected.extend_from_slice(b"healthcheck");
        assert_eq!(frame, expected);
    }

    #[test]
    fn response_checks() {
        // correlation 7, error 0, one API (18: v0..v4).
        let ok = [0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0, 18, 0, 0, 0, 4];
        assert_eq!(parse_response(&ok, 7), Ok(1));
        assert!(parse_response(&ok, 8).is_err());
        // UNSUPPORTED_VERSION (35).
        let err = [0, 0, 0, 7, 0, 35, 0, 0, 0, 0];
        assert!(parse_response(&err, 7).is_err());
        assert!(parse_response(&[0, 0, 0, 7, 0], 7).is_err());
        // No array: still healthy.
        assert_eq!(parse_response(&[0, 0, 0, 7, 0, 0], 7), Ok(0));
    }

    #[test]
    fn args() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let kafka = |a: &str| {
            Some(Probe::Kafka {
                addr: a.to_string(),
            })
        };
        let http = |a: &str, p: &str| {
            Some(Probe::Http {
                addr: a.to_string(),
                path: p.to_string(),
            })
        };
        assert_eq!(parse_args(&v(&[])), kafka(DEFAULT_ADDR));
        assert_eq!(parse_args(&v(&["10.0.0.1:9092"])), kafka("10.0.0.1:9092"));
        assert_eq!(parse_args(&v(&["--http", "h:1"])), http("h:1", "/metrics"));
        assert_eq!(
            parse_args(&v(&["--http", "h:1", "/ring"])),
            http("h:1", "/ring")
        );
        assert_eq!(parse_args(&v(&["--http", "h:1", "ring"])), None);
        assert_eq!(parse_args(&v(&["--http"])), None);
        assert_eq!(parse_args(&v(&["--help"])), None);
        assert_eq!(parse_args(&v(&["--bogus"])), None);
        assert_eq!(parse_args(&v(&["a:1", "b:2"])), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Ok(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Ok(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), Ok(204));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK").is_err());
        assert!(parse_status_line(b"").is_err());
    }

    /// A one-shot HTTP server on loopback answering `answer` to whatever it gets.
    fn serve_once(answer: &'static [u8]) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            }
        });
        addr
    }

    #[test]
    fn http_probe() {
        let deadline = || Instant::now() + TIMEOUT;
        let ok = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
        assert_eq!(check_http(&ok, "/metrics", deadline()), Ok(200));
        let unavailable = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert!(check_http(&unavailable, "/ring", deadline()).is_err());
        let garbage = serve_once(b"\x00\x00\x00\x02ab");
        assert!(check_http(&garbage, "/metrics", deadline()).is_err());
        let silent = serve_once(b"");
        assert!(check_http(&silent, "/metrics", deadline()).is_err());
    }

    #[test]
    fn correlation_id_is_non_negative() {
        assert!(correlation_id() >= 0);
    }
}
