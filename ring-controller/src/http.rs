//! Admin endpoint: a tiny HTTP/1.1 responder (one request per connection, bounded request
//! head, timeouts). `GET /ring`, `GET /metrics`, `POST /resize?switches=...`,
//! `GET /members`, `POST /members?add=ID=HOST:PORT`, `POST /members?remove=ID`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::controller::{parse_switch_specs, AdminError, AdminHandle, Metrics};
use crate::replica::{MembershipError, Replica};

/// How long `POST /members?add=` waits for the new replica to catch up with the log.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Request heads larger than this are refused: the admin API has no bodies.
const MAX_HEAD: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AdminState {
    pub replica: Replica,
    pub metrics: Arc<Metrics>,
    pub admin: AdminHandle,
}

pub async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, state).await {
                tracing::debug!(error = %e, "admin connection");
            }
        });
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn handle(mut stream: TcpStream, state: AdminState) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) | Err(_) => {
            return respond(&mut stream, 400, "text/plain", "bad request\n").await;
        }
        Ok(Err(e)) => return Err(e),
    };
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/ring") => match state.replica.state().config {
            Some(cfg) => {
                let body = serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n";
                respond(&mut stream, 200, "application/json", &body).await
            }
            None => respond(&mut stream, 503, "text/plain", "no ring installed yet\n").await,
        },
        ("GET", "/metrics") => {
            let body = render_metrics(&state);
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        ("POST", "/resize") => {
            let list = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("switches="))
                .map(percent_decode)
                .unwrap_or_default();
            let result = match parse_switch_specs(&list) {
                Ok(specs) => state.admin.resize(specs).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(roster) => {
                    let body = serde_json::to_string(&roster).unwrap_or_default() + "\n";
                    respond(&mut stream, 200, "application/json", &body).await
                }
                Err(e @ AdminError::NotLeader(_)) => {
                    respond(&mut stream, 421, "text/plain", &format!("{e}\n")).await
                }
                Err(e @ (AdminError::Store(_) | AdminError::Stopped)) => {
                    respond(&mut stream, 503, "text/plain", &format!("{e}\n")).await
                }
                Err(e) => respond(&mut stream, 400, "text/plain", &format!("{e}\n")).await,
            }
        }
        ("GET", "/members") => {
            let body = members_json(&state.replica);
            respond(&mut stream, 200, "application/json", &body).await
        }
        ("POST", "/members") => {
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(k))
                    .map(percent_decode)
            };
            let result = match (param("add="), param("remove=")) {
                (Some(add), None) => match parse_member(&add) {
                    Ok((id, addr)) => state.replica.add_member(id, addr, CATCH_UP).await,
                    Err(e) => {
                        return respond(&mut stream, 400, "text/plain", &format!("{e}\n")).await
                    }
                },
                (None, Some(remove)) => match remove.trim().parse::<u64>() {
                    Ok(id) => state.replica.remove_member(id).await,
                    Err(e) => {
                        let msg = format!("remove={remove}: {e}\n");
                        return respond(&mut stream, 400, "text/plain", &msg).await;
                    }
                },
                _ => {
                    let msg = "give exactly one of add=ID=HOST:PORT or remove=ID\n";
                    return respond(&mut stream, 400, "text/plain", msg).await;
                }
            };
            match result {
                Ok(_) => {
                    let body = members_json(&state.replica);
                    respond(&mut stream, 200, "application/json", &body).await
                }
                Err(e @ MembershipError::NotLeader(_)) => {
                    respond(&mut stream, 421, "text/plain", &format!("{e}\n")).await
                }
                Err(e @ (MembershipError::NotAMember(_) | MembershipError::LastVoter)) => {
                    respond(&mut stream, 400, "text/plain", &format!("{e}\n")).await
                }
                Err(e) => respond(&mut stream, 503, "text/plain", &format!("{e}\n")).await,
            }
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

/// `ID=HOST:PORT` of a replica's Raft listener.
fn parse_member(s: &str) -> Result<(u64, std::net::SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("add={s}: expected ID=HOST:PORT"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("add={s}: replica id: {e}"))?;
    let addr = addr
        .trim()
        .parse()
        .map_err(|e| format!("add={s}: address: {e}"))?;
    Ok((id, addr))
}

fn members_json(replica: &Replica) -> String {
    let body = serde_json::json!({
        "leader": replica.leader(),
        "voters": replica.voters(),
        "nodes": replica.nodes(),
    });
    body.to_string() + "\n"
}

/// Only what a switch list can contain needs decoding (`,` `=` `:`).
fn percent_decode(s: &str) -> String {
    s.replace("%2C", ",")
        .replace("%2c", ",")
        .replace("%3D", "=")
        .replace("%3d", "=")
        .replace("%3A", ":")
        .replace("%3a", ":")
}

fn render_metrics(state: &AdminState) -> String {
    let m = &state.metrics;
    let stored = u64::from(state.replica.state().epoch());
    let is_leader = u64::from(state.replica.is_leader());
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    put(
        "ring_controller_epoch",
        "gauge",
        "Epoch of the stored ring configuration on this replica.",
        stored.max(m.epoch.load(Ordering::Relaxed)),
    );
    put(
        "ring_controller_reconfigurations_total",
        "counter",
        "Epochs stored by this replica's controller.",
        m.reconfigurations.load(Ordering::Relaxed),
    );
    put(
        "ring_controller_seals_total",
        "counter",
        "Seal rounds started by this replica's controller.",
        m.seals.load(Ordering::Relaxed),
    );
    put(
        "ring_controller_install_conflicts_total",
        "counter",
        "Conditional writes lost to another controller.",
        m.install_conflicts.load(Ordering::Relaxed),
    );
    put(
        "ring_controller_is_leader",
        "gauge",
        "1 if this replica is the Raft leader (and runs the controller loop).",
        is_leader,
    );
    out
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        421 => "Misdirected Request",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_specs_parse() {
        assert_eq!(
            parse_member("4=127.0.0.1:7714"),
            Ok((4, "127.0.0.1:7714".parse().expect("addr")))
        );
        assert!(parse_member("4").is_err());
        assert!(parse_member("x=127.0.0.1:1").is_err());
        assert!(parse_member("4=nowhere").is_err());
        assert_eq!(percent_decode("4%3D127.0.0.1%3A1"), "4=127.0.0.1:1");
    }
}
