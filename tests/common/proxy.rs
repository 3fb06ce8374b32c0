//! A registry's front, written for the tests, on loopback: it passes requests on to a real
//! registry and logs them, and can stand in a token server's way (Bearer auth), or break
//! things the way networks and registries do: a connection dropped mid-blob, 503 and 429
//! answers, blobs redirected to another port.
//!
//! One request per connection (`Connection: close`), so a dropped connection is one request's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// A request the proxy saw, and how it answered.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub status: u16,
}

impl Logged {
    pub fn is_blob(&self) -> bool {
        self.path.contains("/blobs/")
    }
}

/// What the proxy does to the requests for a blob, the first `times` of them.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answers with this status (and `Retry-After: 0` for 429).
    Status { status: u16, times: usize },
    /// Passes the first `after` bytes of the body on, then drops the connection.
    Cut { after: usize, times: usize },
    /// Passes the answer on with one byte of its body changed, at `at` (or the last).
    Tamper { at: usize, times: usize },
}

/// Bearer auth in front of the registry: `/token` gives a token for the right Basic
/// credentials (or to anyone, if `user` is `None`), or, POSTed, for the right refresh token
/// (an identity token); `/v2/` wants the token.
#[derive(Clone, Debug, Default)]
pub struct Bearer {
    pub user: Option<(String, String)>,
    pub refresh_token: Option<String>,
}

#[derive(Default)]
struct Plan {
    /// Each fault, and the end of the paths it hits.
    faults: Vec<(String, Fault)>,
    bearer: Option<Bearer>,
    /// Sends blob requests to this `HOST:PORT` instead (307).
    redirect_blobs: Option<String>,
}

/// A proxy in front of `upstream`, stopped on drop.
pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: Arc<Mutex<Vec<Logged>>>,
    plan: Arc<Mutex<Plan>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let proxy = Proxy {
            addr: addr.clone(),
            log: Arc::default(),
            plan: Arc::default(),
            stop: Arc::default(),
        };
        let (log, plan, stop) = (proxy.log.clone(), proxy.plan.clone(), proxy.stop.clone());
        let upstream = upstream.to_owned();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (log, plan, upstream, addr) =
                    (log.clone(), plan.clone(), upstream.clone(), addr.clone());
                thread::spawn(move || {
                    let _ = serve(client, &upstream, &addr, &plan, &log);
                });
            }
        });
        proxy
    }

    /// Adds a fault for the requests to come for the blob `digest`.
    pub fn fault(&self, digest: &str, fault: Fault) {
        self.fault_at(&format!("/blobs/{digest}"), fault);
    }

    /// Adds a fault for the requests to come whose path ends with `suffix`.
    pub fn fault_at(&self, suffix: &str, fault: Fault) {
        let mut plan = self.plan.lock().unwrap();
        plan.faults.push((suffix.to_owned(), fault));
    }

    /// Puts Bearer auth in front of the registry.
    pub fn bearer(&self, bearer: Bearer) {
        self.plan.lock().unwrap().bearer = Some(bearer);
    }

    /// Redirects blob requests to `to` (`HOST:PORT`).
    pub fn redirect_blobs(&self, to: &str) {
        self.plan.lock().unwrap().redirect_blobs = Some(to.to_owned());
    }

    /// `docker://ADDR/NAME`.
    pub fn image(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr)
    }

    /// The requests so far, and forgets them.
    pub fn take_log(&self) -> Vec<Logged> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// A request: its head, and its body (`Content-Length` bytes).
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    }
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<Head> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once(':') {
            headers.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let mut head = Head {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let length: u64 = head
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    reader
        .take(length.min(1 << 20))
        .read_to_end(&mut head.body)?;
    Ok(head)
}

fn respond(client: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut text = format!(
        "HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        text += &format!("{name}: {value}\r\n");
    }
    text += "\r\n";
    let _ = client.write_all(text.as_bytes());
    let _ = client.write_all(body);
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    addr: &str,
    plan: &Mutex<Plan>,
    log: &Mutex<Vec<Logged>>,
) -> std::io::Result<()> {
    let head = read_head(&mut BufReader::new(client.try_clone()?))?;
    let mut logged = Logged {
        method: head.method.clone(),
        path: head.path.clone(),
        authorization: head.header("authorization"),
        range: head.header("range"),
        status: 0,
    };
    let status = answer(&mut client, &head, upstream, addr, plan)?;
    logged.status = status;
    log.lock().unwrap().push(logged);
    Ok(())
}

/// Answers one request; returns the status sent.
fn answer(
    client: &mut TcpStream,
    head: &Head,
    upstream: &str,
    addr: &str,
    plan: &Mutex<Plan>,
) -> std::io::Result<u16> {
    let (bearer, redirect, fault) = {
        let mut plan = plan.lock().unwrap();
        let fault = take_fault(&mut plan.faults, &head.path);
        (plan.bearer.clone(), plan.redirect_blobs.clone(), fault)
    };
    if let Some(bearer) = &bearer {
        if head.method == "POST" && head.path.starts_with("/token") {
            // An OAuth2 refresh token traded for an access token: the form is the body.
            let form = String::from_utf8_lossy(&head.body).into_owned();
            let wanted = bearer
                .refresh_token
                .as_deref()
                .map(|t| format!("refresh_token={t}"));
            if wanted.is_none_or(|wanted| !form.split('&').any(|pair| pair == wanted))
                || !form.contains("grant_type=refresh_token")
            {
                respond(
                    client,
                    401,
                    &[],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad refresh token"}]}"#,
                );
                return Ok(401);
            }
            respond(client, 200, &[], br#"{"access_token":"test-token"}"#);
            return Ok(200);
        }
        if head.path.starts_with("/token") {
            let wanted = bearer.user.as_ref().map(|(user, password)| {
                format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
            });
            if wanted.is_some() && head.header("authorization") != wanted {
                respond(
                    client,
                    401,
                    &[],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                );
                return Ok(401);
            }
            respond(client, 200, &[], br#"{"token":"test-token"}"#);
            return Ok(200);
        }
        if head.header("authorization").as_deref() != Some("Bearer test-token") {
            let challenge = format!(
                r#"Bearer realm="http://{addr}/token",service="strata-test",scope="repository:x:pull""#
            );
            respond(
                client,
                401,
                &[("WWW-Authenticate", challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
            return Ok(401);
        }
    }
    if let Some(to) = redirect
        && head.path.contains("/blobs/")
    {
        respond(
            client,
            307,
            &[("Location", format!("http://{to}{}", head.path))],
            b"",
        );
        return Ok(307);
    }
    if let Some(Fault::Status { status, .. }) = fault {
        let retry_after = if status == 429 {
            vec![("Retry-After", "0".to_owned())]
        } else {
            vec![]
        };
        respond(client, status, &retry_after, b"");
        return Ok(status);
    }
    forward(client, head, upstream, fault)
}

/// The first fault for `path` with times left, used once.
fn take_fault(faults: &mut [(String, Fault)], path: &str) -> Option<Fault> {
    let (_, fault) = faults.iter_mut().find(|(suffix, fault)| {
        let mut fault = fault.clone();
        path.ends_with(suffix.as_str()) && *times(&mut fault) > 0
    })?;
    *times(fault) -= 1;
    Some(fault.clone())
}

fn times(fault: &mut Fault) -> &mut usize {
    match fault {
        Fault::Status { times, .. } | Fault::Cut { times, .. } | Fault::Tamper { times, .. } => {
            times
        }
    }
}

/// Passes the request to `upstream` without credentials, and its answer back, cut or
/// tampered with if `fault` says.
fn forward(
    client: &mut TcpStream,
    head: &Head,
    upstream: &str,
    fault: Option<Fault>,
) -> std::io::Result<u16> {
    let mut server = TcpStream::connect(upstream)?;
    let mut request = format!("{} {} HTTP/1.1\r\n", head.method, head.path);
    for (name, value) in &head.headers {
        if !["connection", "authorization", "host"].contains(&name.to_ascii_lowercase().as_str()) {
            request += &format!("{name}: {value}\r\n");
        }
    }
    request += &format!("Host: {upstream}\r\nConnection: close\r\n\r\n");
    server.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(server);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let mut head_text = status_line.clone();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let end = line.trim().is_empty();
        if !line.to_ascii_lowercase().starts_with("connection:") {
            head_text += &line;
        }
        if end {
            break;
        }
    }
    // The blank line is in `head_text`; say that the connection closes before it.
    let head_text = head_text.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    client.write_all(head_text.as_bytes())?;
    match fault {
        Some(Fault::Cut { after, .. }) => {
            let mut part = vec![0; after];
            let n = read_up_to(&mut reader, &mut part)?;
            client.write_all(&part[..n])?;
            client.flush()?;
            client.shutdown(Shutdown::Both)?;
        }
        Some(Fault::Tamper { at, .. }) => {
            let mut body = Vec::new();
            reader.read_to_end(&mut body)?;
            if let Some(last) = body.len().checked_sub(1) {
                body[at.min(last)] ^= 0x01;
            }
            client.write_all(&body)?;
        }
        _ => {
            std::io::copy(&mut reader, client)?;
        }
    }
    Ok(status)
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
