//! A raw wire client for tests that pipeline: it writes any messages in one write and reads the
//! answers as (tag, body) pairs.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::TOKEN;

pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &b)
}

/// A Bind with text parameters.
pub fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, statement);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}

pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}

pub fn describe_portal(portal: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    cstr(&mut b, portal);
    msg(b'D', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 0x0003_0000u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// One backend message.
#[derive(Debug, Clone)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    /// An ErrorResponse's SQLSTATE.
    pub fn code(&self) -> Option<String> {
        self.field(b'C')
    }

    pub fn field(&self, code: u8) -> Option<String> {
        if self.tag != b'E' && self.tag != b'N' {
            return None;
        }
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                return None;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// A CommandComplete's tag.
    pub fn tag_text(&self) -> Option<String> {
        (self.tag == b'C').then(|| {
            let end = self
                .body
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(self.body.len());
            String::from_utf8_lossy(&self.body[..end]).into_owned()
        })
    }
}

pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// What the gateway sent after the password, up to the first ReadyForQuery.
    pub startup: Vec<Message>,
}

impl RawClient {
    /// A logged-in raw session (ReadyForQuery seen).
    pub async fn connect(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream
            .write_all(&startup_packet(&[("user", "agent"), ("database", "app")]))
            .await
            .unwrap();
        let mut c = Self {
            stream,
            buf: Vec::new(),
            startup: Vec::new(),
        };
        let m = c.next().await.expect("authentication request");
        assert_eq!(m.tag, b'R');
        let mut pw = TOKEN.as_bytes().to_vec();
        pw.push(0);
        c.stream.write_all(&msg(b'p', &pw)).await.unwrap();
        c.startup = c.until_ready().await;
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message, or `None` when the gateway closed the connection.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..len + 1].to_vec();
                    self.buf.drain(..len + 1);
                    return Some(Message { tag, body });
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                .await
                .expect("the gateway answers within 30 s")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Every message up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let m = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed before ReadyForQuery; got {out:?}"));
            let ready = m.tag == b'Z';
            out.push(m);
            if ready {
                return out;
            }
        }
    }

    /// Everything up to the `n`-th ReadyForQuery.
    pub async fn until_ready_n(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.extend(self.until_ready().await);
        }
        out
    }
}

/// The SQLSTATEs of the errors among `messages`.
pub fn errors(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.tag == b'E')
        .filter_map(Message::code)
        .collect()
}

/// The command tags among `messages`.
pub fn tags(messages: &[Message]) -> Vec<String> {
    messages.iter().filter_map(Message::tag_text).collect()
}
