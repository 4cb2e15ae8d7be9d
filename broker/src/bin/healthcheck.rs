//! `healthcheck`: exits 0 if a Kafka listener answers ApiVersions v0 without error, 1 otherwise.
//!
//! Made for container health checks: the broker image is built `FROM scratch`, so there is no
//! shell, curl or kcat inside it. Usage: `healthcheck [HOST:PORT]` (default 127.0.0.1:9092).
//! The whole check (resolve, connect, write, read) is bounded by a 3 s deadline.
//!
//! Request frame (all big-endian): i32 length, then header v1 — api_key i16 = 18
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

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| DEFAULT_ADDR.to_string());
    if addr == "-h" || addr == "--help" || args.next().is_some() {
        eprintln!("usage: healthcheck [HOST:PORT]   (default {DEFAULT_ADDR})");
        eprintln!("exits 0 if the Kafka listener answers ApiVersions v0 with error_code 0");
        return ExitCode::from(1);
    }

    // The check runs on its own thread so the deadline also covers name resolution, which
    // has no timeout of its own. Returning from main ends the process, and a stuck thread
    // with it.
    let deadline = Instant::now() + TIMEOUT;
    let (tx, rx) = mpsc::channel();
    let worker_addr = addr.clone();
    thread::spawn(move || {
        // The receiver is gone only if main already timed out; nothing left to report to.
        let _ = tx.send(check(&worker_addr, deadline));
    });

    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(api_count)) => {
            println!("healthcheck: {addr}: ok (ApiVersions v0, {api_count} APIs)");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("healthcheck: {addr}: {e}");
            ExitCode::from(1)
        }
        Err(_) => {
            let secs = TIMEOUT.as_secs();
            eprintln!("healthcheck: {addr}: no answer within {secs} s");
            ExitCode::from(1)
        }
    }
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
    fn correlation_id_is_non_negative() {
        assert!(correlation_id() >= 0);
    }
}
