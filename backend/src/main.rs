//! The Edgewise test backend: an HTTP origin with a name, a request counter, echo, chosen
//! statuses and delays, RFC 9110 validators with 304 answers, and a runtime fault switch.
//!
//! Usage: `edgewise-backend --name api-v1 --listen 127.0.0.1:0` prints
//! `listening on <addr>` once ready. `edgewise-backend --check http://HOST:PORT/PATH` is a
//! health probe for containers without a shell: it exits 0 when the URL answers 200.
//! `--serve-dir DIR` also serves the files of DIR under `/dist/<name>` (the compose
//! cluster's artifact server, from which the Envoys load their modules remotely).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use serde_json::{json, Value};

/// The fault switch: what share of counted requests fail, and how.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    Off,
    /// Fail exactly `ratio` of requests (spread evenly) with `status`.
    Fail {
        ratio: f64,
        status: u16,
    },
    /// Accept requests but never answer them.
    Hang,
}

struct Backend {
    name: String,
    requests: AtomicU64,
    fault: Mutex<Fault>,
    faulted: AtomicU64,
    /// `--serve-dir`: files served under `/dist/<name>`.
    serve_dir: Option<std::path::PathBuf>,
}

type Shared = Arc<Backend>;

fn main() {
    let mut name = "backend".to_string();
    let mut listen = "127.0.0.1:8000".to_string();
    let mut serve_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next().unwrap_or(name),
            "--listen" => listen = args.next().unwrap_or(listen),
            "--serve-dir" => serve_dir = args.next().map(std::path::PathBuf::from),
            "--check" => {
                let url = args.next().unwrap_or_default();
                std::process::exit(match check(&url) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("check {url}: {e}");
                        1
                    }
                });
            }
            "--help" | "-h" => {
                println!("edgewise-backend [--name NAME] [--listen ADDR:PORT] [--serve-dir DIR] | --check http://HOST:PORT/PATH");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(name, listen, serve_dir)) {
        eprintln!("backend failed: {e}");
        std::process::exit(1);
    }
}

async fn serve(
    name: String,
    listen: String,
    serve_dir: Option<std::path::PathBuf>,
) -> std::io::Result<()> {
    let state = Arc::new(Backend {
        name,
        serve_dir,
        requests: AtomicU64::new(0),
        fault: Mutex::new(Fault::Off),
        faulted: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("listening on {addr}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let app = Router::new().fallback(handle).with_state(state);
    // Containers stop their first process with SIGTERM; a terminal sends SIGINT.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// One HTTP/1.1 GET with a 2 s budget; Ok when the status is 200.
fn check(url: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or("the URL must start with http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the host has no address")?;
    let budget = Duration::from_secs(2);
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, budget).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(budget))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[9..12] == b"200" {
        Ok(())
    } else {
        Err(format!("status {}", String::from_utf8_lossy(&head[9..12])))
    }
}

fn respond(
    backend: &Backend,
    status: u16,
    headers: &[(&str, String)],
    body: impl Into<Body>,
) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&backend.name) {
        map.insert("x-backend-name", v);
    }
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    response
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A file of `--serve-dir` by its plain name (no directories, so nothing outside it).
async fn serve_file(backend: &Backend, name: &str) -> Response<Body> {
    let Some(dir) = &backend.serve_dir else {
        return respond(backend, 404, &[], "not found\n");
    };
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        return respond(backend, 404, &[], "not found\n");
    }
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => respond(
            backend,
            200,
            &[("content-type", "application/octet-stream".into())],
            bytes,
        ),
        Err(_) => respond(backend, 404, &[], "not found\n"),
    }
}

async fn handle(State(backend): State<Shared>, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let body = to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();

    // Control endpoints are not counted as traffic.
    match (parts.method.clone(), path.as_str()) {
        (_, "/health") => return respond(&backend, 200, &[], "ok\n"),
        (Method::GET, p) if p.starts_with("/dist/") && backend.serve_dir.is_some() => {
            return serve_file(&backend, &p["/dist/".len()..]).await;
        }
        (_, "/stats") => {
            let stats = json!({ "name": backend.name, "requests": backend.requests.load(Ordering::SeqCst), "faulted": backend.faulted.load(Ordering::SeqCst) });
            return respond(
                &backend,
                200,
                &[("content-type", "application/json".into())],
                stats.to_string(),
            );
        }
        (Method::POST, "/admin/reset") => {
            backend.requests.store(0, Ordering::SeqCst);
            backend.faulted.store(0, Ordering::SeqCst);
            return respond(&backend, 200, &[], "reset\n");
        }
        (Method::POST, "/admin/fault") => return set_fault(&backend, &body),
        (Method::GET, "/admin/fault") => {
            let fault = format!(
                "{:?}\n",
                backend
                    .fault
                    .lock()
                    .map(|f| f.clone())
                    .unwrap_or(Fault::Off)
            );
            return respond(&backend, 200, &[], fault);
        }
        _ => {}
    }

    let n = backend.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let fault = backend
        .fault
        .lock()
        .map(|f| f.clone())
        .unwrap_or(Fault::Off);
    match fault {
        Fault::Off => {}
        Fault::Hang => {
            backend.faulted.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Fault::Fail { ratio, status } => {
            // Exactly `ratio` of requests fail, evenly spread: request n fails when
            // floor(n·ratio) moved past floor((n-1)·ratio).
            if (n as f64 * ratio).floor() > ((n - 1) as f64 * ratio).floor() {
                backend.faulted.fetch_add(1, Ordering::SeqCst);
                return respond(
                    &backend,
                    status,
                    &[("content-type", "text/plain".into())],
                    format!("injected fault {status}\n"),
                );
            }
        }
    }

    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["status", code, ..] => {
            let code: u16 = code.parse().unwrap_or(400);
            respond(
                &backend,
                code,
                &[("content-type", "text/plain".into())],
                format!("status {code}\n"),
            )
        }
        ["delay", ms, ..] => {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            respond(
                &backend,
                200,
                &[("content-type", "text/plain".into())],
                format!("delayed {ms}ms\n"),
            )
        }
        ["cache", ..] => {
            // `delay_ms=N` holds the answer, so concurrent requests overlap (coalescing tests).
            if let Some(ms) = query_param(&query, "delay_ms").and_then(|v| v.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            cacheable(&backend, &parts.headers, &path, &query)
        }
        _ => echo(
            &backend,
            &parts.method,
            &parts.uri.to_string(),
            &parts.headers,
            &body,
            n,
        ),
    }
}

fn echo(
    backend: &Backend,
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
    n: u64,
) -> Response<Body> {
    let mut seen = serde_json::Map::new();
    for (k, v) in headers {
        let value = Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
        match seen.get_mut(k.as_str()) {
            Some(Value::Array(list)) => list.push(value),
            Some(existing) => *existing = Value::Array(vec![existing.clone(), value]),
            None => {
                seen.insert(k.as_str().to_string(), value);
            }
        }
    }
    let reply = json!({
        "backend": backend.name,
        "request_number": n,
        "method": method.as_str(),
        "uri": uri,
        "headers": seen,
        "body": String::from_utf8_lossy(body),
    });
    respond(
        backend,
        200,
        &[("content-type", "application/json".into())],
        reply.to_string(),
    )
}

/// `/cache/...?cache_control=..&etag=..&last_modified=..&vary=..&body=..&size=..`: a response
/// with the chosen caching headers, and `304 Not Modified` to a matching conditional GET/HEAD.
/// Also `status=N` (the status instead of 200), `header=name:value` (repeatable, any field
/// as given) and `expires_in=N` (an `Expires` N seconds from now).
/// A session app's page: `personal=1` makes the body name the request's Cookie (or
/// "anonymous") and any X-Forwarded-Host it was given, as apps that build links from it do;
/// `cookie_on_304=1` adds `Set-Cookie: seen=<that cookie>` to a 304 (a session refresh).
/// `reflect=NAME`: the body is `<backend> NAME=<the last line of NAME>`.
fn cacheable(backend: &Backend, headers: &HeaderMap, path: &str, query: &str) -> Response<Body> {
    let extra: Vec<(String, String)> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "header")
        .filter_map(|(_, v)| {
            let field = percent_decode(v);
            let (name, value) = field.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    let expires = query_param(query, "expires_in")
        .and_then(|n| n.parse::<i64>().ok())
        .map(|n| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            response_cache::http_date::format(now + n)
        });
    let status = query_param(query, "status")
        .and_then(|n| n.parse::<u16>().ok())
        .filter(|n| (200..600).contains(n))
        .unwrap_or(200);
    let etag = query_param(query, "etag").map(|e| {
        if e.starts_with('"') || e.starts_with("W/") {
            e
        } else {
            format!("\"{e}\"")
        }
    });
    let last_modified = query_param(query, "last_modified");
    let mut out: Vec<(&str, String)> = vec![("content-type", "text/plain".into())];
    if let Some(cc) = query_param(query, "cache_control") {
        out.push(("cache-control", cc));
    }
    if let Some(e) = &etag {
        out.push(("etag", e.clone()));
    }
    if let Some(lm) = &last_modified {
        out.push(("last-modified", lm.clone()));
    }
    if let Some(vary) = query_param(query, "vary") {
        out.push(("vary", vary));
    }
    if let Some(expires) = expires {
        out.push(("expires", expires));
    }
    out.extend(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // RFC 9110 §13.1.2: If-None-Match uses weak comparison; §13.2.2: it takes precedence
    // over If-Modified-Since.
    let not_modified = match (header("if-none-match"), &etag) {
        (Some(inm), Some(tag)) => {
            let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
            inm.trim() == "*" || inm.split(',').any(|candidate| weak(candidate) == weak(tag))
        }
        (Some(_), None) => false,
        (None, _) => match (header("if-modified-since"), &last_modified) {
            (Some(ims), Some(lm)) => match (httpdate(&ims), httpdate(lm)) {
                (Some(since), Some(modified)) => modified <= since,
                _ => false,
            },
            _ => false,
        },
    };
    let cookie = header("cookie").unwrap_or_else(|| "anonymous".into());
    if not_modified {
        if query_param(query, "cookie_on_304").as_deref() == Some("1") {
            out.push(("set-cookie", format!("seen={cookie}")));
        }
        return respond(backend, 304, &out, Body::empty());
    }
    // `reflect=NAME`: the page is built from the request's NAME field as most frameworks
    // read a repeated field — the last line — and names this backend (cache poisoning tests).
    if let Some(name) = query_param(query, "reflect") {
        let last = headers
            .get_all(name.as_str())
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let page = format!("{} {name}={last}\n", backend.name);
        return respond(backend, status, &out, page);
    }
    if query_param(query, "personal").as_deref() == Some("1") {
        let via = header("x-forwarded-host")
            .map(|h| format!(" via {h}"))
            .unwrap_or_default();
        return respond(backend, status, &out, format!("page for {cookie}{via}\n"));
    }
    // `size=N`: a body of N bytes (at most 8 MiB), for memory-bound tests.
    let sized = query_param(query, "size")
        .and_then(|n| n.parse::<usize>().ok())
        .map(|n| "x".repeat(n.min(8 << 20)));
    let body = sized
        .or_else(|| query_param(query, "body"))
        .unwrap_or_else(|| format!("cacheable {path}\n"));
    // `trickle_ms=N`: the body goes out in 16 parts, N ms apart (a slow origin, so many
    // responses are part-way through at once).
    if let Some(ms) = query_param(query, "trickle_ms").and_then(|v| v.parse::<u64>().ok()) {
        return respond(backend, status, &out, trickled(body.into_bytes(), ms));
    }
    respond(backend, status, &out, body)
}

/// A body sent in 16 parts, the first at once and each next one `ms` later.
fn trickled(body: Vec<u8>, ms: u64) -> Body {
    let part = body.len().div_ceil(16).max(1);
    let parts: Vec<axum::body::Bytes> = body
        .chunks(part)
        .map(axum::body::Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::unfold((parts, 0usize), move |(parts, i)| async move {
        let part = parts.get(i)?.clone();
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Some((Ok::<_, std::convert::Infallible>(part), (parts, i + 1)))
    });
    Body::from_stream(stream)
}

/// An HTTP-date (RFC 9110 §5.6.7, all three formats) in seconds since the epoch.
fn httpdate(text: &str) -> Option<i64> {
    response_cache::http_date::parse(text.as_bytes())
}

fn set_fault(backend: &Backend, body: &[u8]) -> Response<Body> {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let fault = match parsed {
        Ok(v) => match v.get("mode").and_then(Value::as_str) {
            Some("off") => Some(Fault::Off),
            Some("hang") => Some(Fault::Hang),
            Some("fail") => {
                let ratio = v.get("ratio").and_then(Value::as_f64).unwrap_or(1.0);
                let status = v.get("status").and_then(Value::as_u64).unwrap_or(503) as u16;
                (0.0..=1.0)
                    .contains(&ratio)
                    .then_some(Fault::Fail { ratio, status })
            }
            _ => None,
        },
        Err(_) => None,
    };
    match fault {
        Some(fault) => {
            if let Ok(mut current) = backend.fault.lock() {
                *current = fault.clone();
            }
            respond(backend, 200, &[], format!("{fault:?}\n"))
        }
        None => respond(
            backend,
            400,
            &[],
            "expected {\"mode\":\"off\"}, {\"mode\":\"hang\"} or {\"mode\":\"fail\",\"ratio\":0..1,\"status\":503}\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_imf_fixdate() {
        assert_eq!(httpdate("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(
            httpdate("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(httpdate("garbage"), None);
    }

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            query_param("cache_control=max-age%3D60&etag=v1", "cache_control").as_deref(),
            Some("max-age=60")
        );
        assert_eq!(query_param("a=1", "b"), None);
    }
}
