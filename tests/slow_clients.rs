//! Slow and hostile clients: a client trickling its headers byte by byte (slowloris)
//! or its body is cut off by the read timeouts while normal clients are served; an
//! idle keep-alive connection is closed; oversized bodies are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes); the bytes read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn gateway() -> Gateway {
    Gateway::start(|c| {
        c.limits.header_read_timeout_secs = 1;
        c.limits.body_read_timeout_secs = 1;
        c.limits.max_body_bytes = 4096;
    })
    .await
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_while_others_are_served() {
    let gw = gateway().await;
    let addr = gw.addr;
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let started = Instant::now();
        for byte in request.iter() {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        (
            started.elapsed(),
            read_until_closed(&mut stream, Duration::from_secs(5)).await,
        )
    });
    // Meanwhile, normal clients are served.
    for _ in 0..10 {
        assert_eq!(gw.raw("GET", "/healthz", None, &[], b"").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (took, answer) = slow.await.unwrap();
    // The whole request would take ~9 s at one byte per 100 ms; the 1 s header
    // timeout ends it long before, and the server never answered it.
    assert!(took < Duration::from_secs(8), "cut off after {took:?}");
    let answer = answer.expect("the server closed the connection");
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "the trickled request was not served"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let gw = gateway().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the server closes the connection (it does not wait forever).
    let rest = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(rest.is_some(), "an idle connection is closed by the server");
}

#[tokio::test]
async fn a_trickled_or_oversized_body_is_refused() {
    let gw = gateway().await;
    // A body announced as 100 bytes of which only 10 ever arrive.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"usernam")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered and closed within the body timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("10001"), "{answer}");

    let big = vec![b'x'; 10_000];
    let resp = gw.raw("POST", "/api/auth/login", None, &[], &big).await;
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("请求体过大"), "{}", resp.text());
}
