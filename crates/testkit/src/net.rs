//! Loopback listeners bound before use: a test binds, passes the listener in, and reads its port.
//! Never "pick a free port and bind it later" — parallel tests race on that.

use std::net::{SocketAddr, TcpListener};

/// A std listener on `127.0.0.1:0`.
pub fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A tokio listener on `127.0.0.1:0`.
pub async fn bind_loopback_tokio() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// The address a std listener is bound to.
pub fn addr_of(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("listener address")
}

/// For servers that must bind their own port (PostgreSQL, node): a port that was free a moment
/// ago. Callers must retry on "address in use"; prefer a bound listener wherever the server can
/// take one.
pub fn ephemeral_port_hint() -> u16 {
    addr_of(&bind_loopback()).port()
}
