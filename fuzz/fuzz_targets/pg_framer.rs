#![no_main]
//! The PostgreSQL frontend framer and every message-body reader the proxy uses, on arbitrary
//! bytes: nothing may panic, and every frame handed out must respect the length limit.

use bytes::BytesMut;
use gatehouse_pg::frame::{decode_frame, decode_startup};
use gatehouse_pg::wire;

const MAX: usize = 64 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // Startup phase first (untyped packets), then typed messages, as a session reads them.
    loop {
        match decode_startup(&mut buf) {
            Ok(Some(gatehouse_pg::frame::StartupPacket::Startup { .. })) => break,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    let mut seen = 0usize;
    while let Ok(Some(frame)) = decode_frame(&mut buf, MAX) {
        assert!(frame.body.len() + 4 <= MAX, "frame over the limit");
        let body = frame.body.clone();
        let _ = match frame.tag {
            b'Q' => wire::parse_query(body).map(|_| ()),
            b'P' => wire::parse_parse(body).map(|_| ()),
            b'B' => wire::parse_bind(body).map(|b| {
                let _ = b.params_as_text();
            }),
            b'D' => wire::parse_target(body, "Describe").map(|_| ()),
            b'C' => wire::parse_target(body, "Close").map(|_| ()),
            b'E' => wire::parse_execute(body).map(|_| ()),
            // Backend bodies go through the same readers when the proxy reads upstream.
            b'T' => wire::parse_row_description(body).map(|_| ()),
            b'd' => wire::parse_data_row(&body).map(|_| ()),
            b'N' => wire::ErrorFields::parse(body).map(|_| ()),
            b'S' => wire::parse_parameter_status(body).map(|_| ()),
            _ => Ok(()),
        };
        seen += 1;
        if seen > 10_000 {
            break;
        }
    }
});
