//! Gatehouse's HTTP(S) reverse proxy: strips the caller's token, injects the target's credential,
//! decides each request on its canonical path, masks responses and records the exchange.

#![forbid(unsafe_code)]
