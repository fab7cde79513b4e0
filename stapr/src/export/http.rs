//! The smallest HTTP/1.x server a scraper needs: GET or HEAD of `/` and `/metrics`, one
//! request per connection. Requests are parsed here (pure); `read_head` and `answer` do
//! the socket work for the exporter's per-connection tasks.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Content type of the text exposition format.
pub const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const INDEX: &str = "<html><head><title>stapr exporter</title></head><body>\n\
<h1>stapr exporter</h1>\n\
<p>Per-process network, disk and open-file counters from eBPF probes.</p>\n\
<p><a href=\"/metrics\">Metrics</a></p>\n\
</body></html>\n";

/// Largest request head read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8192;
/// A client that has not sent its request by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// After refusing an oversized request, what the client still sends is read and thrown
/// away this long at most, so the refusal reaches it instead of a reset.
const LINGER: Duration = Duration::from_secs(2);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Index,
    Metrics,
    NotFound,
    BadMethod,
    BadRequest,
    /// The request line alone is longer than the exporter reads.
    UriTooLong,
    /// The request head is longer than the exporter reads.
    HeadTooLarge,
}

/// What a client sent before the exporter answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The request head, up to its blank line.
    Whole(String),
    /// More than [`MAX_HEAD`] bytes: the request line ended within them, or not.
    TooLarge { line_ended: bool },
}

/// The route and whether the body is wanted (not for HEAD), from the request head.
pub fn route(head: &str) -> (Route, bool) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, true);
    };
    if !version.starts_with("HTTP/1.") {
        return (Route::BadRequest, true);
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return (Route::BadMethod, true),
    };
    let path = target.split('?').next().unwrap_or("");
    let r = match path {
        "/" => Route::Index,
        "/metrics" => Route::Metrics,
        _ => Route::NotFound,
    };
    (r, body)
}

/// The whole response for `route`; `metrics` is the exposition text.
pub fn response(route: Route, body: bool, metrics: &str) -> Vec<u8> {
    let (status, kind, text) = match route {
        Route::Index => ("200 OK", "text/html; charset=utf-8", INDEX),
        Route::Metrics => ("200 OK", METRICS_TYPE, metrics),
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics\n",
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n",
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n",
        ),
        Route::UriTooLong => (
            "414 URI Too Long",
            "text/plain; charset=utf-8",
            "request line too long\n",
        ),
        Route::HeadTooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "request head too large\n",
        ),
    };
    let allow = if route == Route::BadMethod {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        text.len()
    )
    .into_bytes();
    if body {
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// Reads the request head from `stream` (up to the blank line, [`MAX_HEAD`] bytes at
/// most); None when the client sent nothing whole within [`READ_TIMEOUT`] or went away.
pub async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Some(());
            }
            if buf.len() > MAX_HEAD {
                return Some(());
            }
        }
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.ok()??;
    if buf.len() > MAX_HEAD {
        let line_ended = buf[..MAX_HEAD].contains(&b'\n');
        return Some(Head::TooLarge { line_ended });
    }
    Some(Head::Whole(String::from_utf8_lossy(&buf).into_owned()))
}

/// Answers one request on `stream`; `metrics` is rendered when the scrape asks for it.
pub async fn answer(mut stream: TcpStream, head: Head, metrics: String) {
    let (r, body) = match &head {
        Head::Whole(text) => route(text),
        Head::TooLarge { line_ended: false } => (Route::UriTooLong, true),
        Head::TooLarge { line_ended: true } => (Route::HeadTooLarge, true),
    };
    let bytes = response(r, body, &metrics);
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    })
    .await;
    if matches!(head, Head::TooLarge { .. }) {
        // Closing with unread input would reset the connection, and the client would
        // see the reset, not the refusal: read what it still sends, for a while.
        let _ = tokio::time::timeout(LINGER, async {
            let mut sink = [0u8; 16 << 10];
            while let Ok(1..) = stream.read(&mut sink).await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let get = |p: &str| route(&format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(get("/metrics"), (Route::Metrics, true));
        assert_eq!(get("/metrics?x=1"), (Route::Metrics, true));
        assert_eq!(get("/"), (Route::Index, true));
        assert_eq!(get("/nope"), (Route::NotFound, true));
        assert_eq!(
            route("HEAD /metrics HTTP/1.0\r\n\r\n"),
            (Route::Metrics, false)
        );
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n"),
            (Route::BadMethod, true)
        );
        assert_eq!(route("garbage\r\n\r\n"), (Route::BadRequest, true));
        assert_eq!(route(""), (Route::BadRequest, true));
    }

    #[test]
    fn response_golden() {
        let r = String::from_utf8(response(Route::Metrics, true, "a 1\n")).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        );
        let head = String::from_utf8(response(Route::Metrics, false, "a 1\n")).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 4"));
        let index = String::from_utf8(response(Route::Index, true, "")).unwrap();
        assert!(index.contains("<a href=\"/metrics\">"));
        let bad = String::from_utf8(response(Route::BadMethod, true, "")).unwrap();
        assert!(bad.starts_with("HTTP/1.1 405") && bad.contains("Allow: GET, HEAD"));
        let long = String::from_utf8(response(Route::UriTooLong, true, "")).unwrap();
        assert!(long.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{long}");
        let large = String::from_utf8(response(Route::HeadTooLarge, true, "")).unwrap();
        assert!(large.starts_with("HTTP/1.1 431 "), "{large}");
    }
}
