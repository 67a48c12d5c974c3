//! Message bodies the proxy reads (bounds-checked, over framed bytes) and the messages it writes
//! (encoded with pgwire's codecs).

use bytes::{Bytes, BytesMut};
use pgwire::messages::Message;

use crate::frame::{BodyReader, FrameError};

/// Encodes a pgwire message into `out`. Gateway-built messages are small; a failure here means a
/// message over pgwire's own limit, which is reported instead of sent.
pub(crate) fn put<M: Message>(msg: &M, out: &mut BytesMut) -> Result<(), crate::PgProxyError> {
    msg.encode(out)
        .map_err(|e| crate::PgProxyError::Gateway(format!("encoding a message: {e}")))
}

/// Fields of an ErrorResponse or NoticeResponse, in wire order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// (field code, value) pairs.
    pub fields: Vec<(u8, String)>,
}

impl ErrorFields {
    /// Parses an ErrorResponse/NoticeResponse body.
    pub fn parse(body: Bytes) -> Result<Self, FrameError> {
        Self::parse_in(body, crate::encoding::Codec::Utf8)
    }

    /// A fresh error with severity, SQLSTATE and message.
    pub fn new(severity: &str, code: &str, message: impl Into<String>) -> Self {
        Self {
            fields: vec![
                (b'S', severity.to_string()),
                (b'V', severity.to_string()),
                (b'C', code.to_string()),
                (b'M', message.into()),
            ],
        }
    }

    /// Adds a field (builder style).
    pub fn with(mut self, code: u8, value: impl Into<String>) -> Self {
        self.fields.push((code, value.into()));
        self
    }

    /// The value of field `code`.
    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// The SQLSTATE (`C` field).
    pub fn code(&self) -> Option<&str> {
        self.get(b'C')
    }

    /// Parses an ErrorResponse/NoticeResponse body whose text is in `codec`'s encoding (invalid
    /// sequences replaced).
    pub(crate) fn parse_in(body: Bytes, codec: crate::encoding::Codec) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body, "ErrorResponse");
        let mut fields = Vec::new();
        loop {
            let code = r.u8()?;
            if code == 0 {
                break;
            }
            let value = r.cstr()?;
            fields.push((code, codec.decode_lossy(&value).into_owned()));
        }
        Ok(Self { fields })
    }

    /// Encodes as ErrorResponse (`E`) or NoticeResponse (`N`) with text in `codec`'s encoding.
    pub(crate) fn encode_in(
        &self,
        tag: u8,
        out: &mut BytesMut,
        codec: crate::encoding::Codec,
    ) -> Result<(), crate::PgProxyError> {
        if codec.is_utf8() {
            return self.encode(tag, out);
        }
        let mut body = Vec::new();
        for (code, value) in &self.fields {
            body.push(*code);
            // A NUL would end the field early: PostgreSQL's own text never holds one.
            body.extend(codec.encode(value).iter().filter(|b| **b != 0));
            body.push(0);
        }
        body.push(0);
        crate::frame::encode_frame(tag, &body, out);
        Ok(())
    }

    /// Encodes as ErrorResponse (`E`) or NoticeResponse (`N`).
    pub fn encode(&self, tag: u8, out: &mut BytesMut) -> Result<(), crate::PgProxyError> {
        if tag == b'N' {
            put(
                &pgwire::messages::response::NoticeResponse::new(self.fields.clone()),
                out,
            )
        } else {
            put(
                &pgwire::messages::response::ErrorResponse::new(self.fields.clone()),
                out,
            )
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDesc {
    /// Output name.
    pub name: String,
    /// Source table OID (0 when the column is an expression).
    pub table_oid: u32,
    /// Source attribute number (0 when the column is an expression).
    pub attnum: i16,
    /// Type OID.
    pub type_oid: u32,
    /// 0 text, 1 binary (0 in a statement Describe: formats are not known yet).
    pub format: i16,
}

impl ColumnDesc {
    /// Whether the column is a stored (or view) column passed through as it is, which the
    /// catalog traces; `false` for an expression and for a whole-row reference (`SELECT t FROM
    /// t`: the table's OID with attribute number 0), whose origin the statement's lineage
    /// gives.
    pub fn is_catalog_column(&self) -> bool {
        self.table_oid != 0 && self.attnum != 0
    }
}

/// Parses a RowDescription body.
pub fn parse_row_description(body: Bytes) -> Result<Vec<ColumnDesc>, FrameError> {
    let mut r = BodyReader::new(body, "RowDescription");
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| FrameError::Malformed("RowDescription"))?;
    // Each column needs at least 19 bytes: reject counts the body cannot hold before allocating.
    if n.saturating_mul(19) > r.remaining() {
        return Err(FrameError::Malformed("RowDescription"));
    }
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let name = String::from_utf8_lossy(&r.cstr()?).into_owned();
        let table_oid = r.u32()?;
        let attnum = r.i16()?;
        let type_oid = r.u32()?;
        let _size = r.i16()?;
        let _modifier = r.i32()?;
        let format = r.i16()?;
        cols.push(ColumnDesc {
            name,
            table_oid,
            attnum,
            type_oid,
            format,
        });
    }
    r.finish()?;
    Ok(cols)
}

/// Splits a DataRow body into its values (`None` is SQL NULL), zero-copy.
pub fn parse_data_row(body: &Bytes) -> Result<Vec<Option<Bytes>>, FrameError> {
    let mut r = BodyReader::new(body.clone(), "DataRow");
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| FrameError::Malformed("DataRow"))?;
    if n.saturating_mul(4) > r.remaining() {
        return Err(FrameError::Malformed("DataRow"));
    }
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(r.value()?);
    }
    r.finish()?;
    Ok(values)
}

/// Appends a DataRow message with `values` to `out` (lengths computed afresh).
pub fn encode_data_row(values: &[Option<&[u8]>], out: &mut BytesMut) {
    let body_len: usize = 2 + values
        .iter()
        .map(|v| 4 + v.map_or(0, <[u8]>::len))
        .sum::<usize>();
    out.reserve(1 + 4 + body_len);
    out.extend_from_slice(b"D");
    out.extend_from_slice(
        &u32::try_from(body_len + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(
        &u16::try_from(values.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for v in values {
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
}

/// A Parse message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsg {
    /// Prepared statement name (empty: unnamed).
    pub name: String,
    /// Statement text.
    pub query: Bytes,
    /// Parameter type OIDs.
    pub type_oids: Vec<u32>,
}

/// Parses a Parse body.
pub fn parse_parse(body: Bytes) -> Result<ParseMsg, FrameError> {
    let mut r = BodyReader::new(body, "Parse");
    let name = String::from_utf8_lossy(&r.cstr()?).into_owned();
    let query = r.cstr()?;
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| FrameError::Malformed("Parse"))?;
    let mut type_oids = Vec::with_capacity(n.min(r.remaining() / 4));
    for _ in 0..n {
        type_oids.push(r.u32()?);
    }
    r.finish()?;
    Ok(ParseMsg {
        name,
        query,
        type_oids,
    })
}

/// A Bind message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMsg {
    /// Destination portal (empty: unnamed).
    pub portal: String,
    /// Source prepared statement.
    pub statement: String,
    /// Parameter format codes (0 or 1 entries apply to all).
    pub param_formats: Vec<i16>,
    /// Parameter values.
    pub params: Vec<Option<Bytes>>,
    /// Result column format codes (0 or 1 entries apply to all).
    pub result_formats: Vec<i16>,
}

impl BindMsg {
    /// Parameters in text form for policy and approvals; binary ones as `\x` hex.
    pub fn params_as_text(&self) -> Vec<Option<String>> {
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.as_ref().map(|v| {
                    let fmt = match self.param_formats.len() {
                        0 => 0,
                        1 => self.param_formats.first().copied().unwrap_or(0),
                        _ => self.param_formats.get(i).copied().unwrap_or(0),
                    };
                    match (fmt, std::str::from_utf8(v)) {
                        (0, Ok(s)) => s.to_string(),
                        _ => {
                            let mut s = String::from("\\x");
                            for b in v.iter() {
                                s.push_str(&format!("{b:02x}"));
                            }
                            s
                        }
                    }
                })
            })
            .collect()
    }

    /// The format of result column `i`.
    pub fn result_format(&self, i: usize) -> i16 {
        format_for(&self.result_formats, i)
    }
}

/// Format code of column `i` under a Bind-style format list.
pub fn format_for(formats: &[i16], i: usize) -> i16 {
    match formats.len() {
        0 => 0,
        1 => formats.first().copied().unwrap_or(0),
        _ => formats.get(i).copied().unwrap_or(0),
    }
}

/// Parses a Bind body.
pub fn parse_bind(body: Bytes) -> Result<BindMsg, FrameError> {
    let mut r = BodyReader::new(body, "Bind");
    let portal = String::from_utf8_lossy(&r.cstr()?).into_owned();
    let statement = String::from_utf8_lossy(&r.cstr()?).into_owned();
    let nf = usize::try_from(r.i16()?).map_err(|_| FrameError::Malformed("Bind"))?;
    let mut param_formats = Vec::with_capacity(nf.min(r.remaining() / 2));
    for _ in 0..nf {
        param_formats.push(r.i16()?);
    }
    let np = usize::try_from(r.i16()?).map_err(|_| FrameError::Malformed("Bind"))?;
    let mut params = Vec::with_capacity(np.min(r.remaining() / 4));
    for _ in 0..np {
        params.push(r.value()?);
    }
    let nr = usize::try_from(r.i16()?).map_err(|_| FrameError::Malformed("Bind"))?;
    let mut result_formats = Vec::with_capacity(nr.min(r.remaining() / 2));
    for _ in 0..nr {
        result_formats.push(r.i16()?);
    }
    r.finish()?;
    Ok(BindMsg {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

/// Parses a Describe or Close body: (`S` or `P`, name).
pub fn parse_target(body: Bytes, what: &'static str) -> Result<(u8, String), FrameError> {
    let mut r = BodyReader::new(body, what);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(FrameError::Malformed(what));
    }
    let name = String::from_utf8_lossy(&r.cstr()?).into_owned();
    r.finish()?;
    Ok((kind, name))
}

/// Parses an Execute body: (portal, max rows).
pub fn parse_execute(body: Bytes) -> Result<(String, i32), FrameError> {
    let mut r = BodyReader::new(body, "Execute");
    let portal = String::from_utf8_lossy(&r.cstr()?).into_owned();
    let max = r.i32()?;
    r.finish()?;
    Ok((portal, max))
}

/// Parses a Query body: the SQL text bytes (without the NUL).
pub fn parse_query(body: Bytes) -> Result<Bytes, FrameError> {
    let mut r = BodyReader::new(body, "Query");
    let q = r.cstr()?;
    r.finish()?;
    Ok(q)
}

/// Parses a ParameterStatus body.
pub fn parse_parameter_status(body: Bytes) -> Result<(String, String), FrameError> {
    let mut r = BodyReader::new(body, "ParameterStatus");
    let k = String::from_utf8_lossy(&r.cstr()?).into_owned();
    let v = String::from_utf8_lossy(&r.cstr()?).into_owned();
    r.finish()?;
    Ok((k, v))
}

/// Appends a Parse message.
pub fn encode_parse(
    name: &str,
    query: &str,
    type_oids: &[u32],
    out: &mut BytesMut,
) -> Result<(), crate::PgProxyError> {
    put(
        &pgwire::messages::extendedquery::Parse::new(
            Some(name.to_string()),
            query.to_string(),
            type_oids.to_vec(),
        ),
        out,
    )
}

/// Appends a Query message.
pub fn encode_query(query: &str, out: &mut BytesMut) -> Result<(), crate::PgProxyError> {
    put(
        &pgwire::messages::simplequery::Query::new(query.to_string()),
        out,
    )
}

/// Appends a Describe message.
pub fn encode_describe(
    kind: u8,
    name: &str,
    out: &mut BytesMut,
) -> Result<(), crate::PgProxyError> {
    put(
        &pgwire::messages::extendedquery::Describe::new(kind, Some(name.to_string())),
        out,
    )
}

/// Appends a Bind of statement `statement` into the unnamed portal, without parameters.
pub fn encode_bare_bind(
    portal: &str,
    statement: &str,
    out: &mut BytesMut,
) -> Result<(), crate::PgProxyError> {
    put(
        &pgwire::messages::extendedquery::Bind::new(
            Some(portal.to_string()),
            Some(statement.to_string()),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ),
        out,
    )
}

/// Appends a ReadyForQuery with status byte `status`.
pub fn encode_ready(status: u8, out: &mut BytesMut) {
    crate::frame::encode_frame(b'Z', &[status], out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_roundtrip_and_truncation_is_malformed() {
        let e = ErrorFields::new("ERROR", "42501", "no").with(b'D', "detail");
        let mut out = BytesMut::new();
        e.encode(b'E', &mut out).unwrap();
        let body = Bytes::copy_from_slice(&out[5..]);
        assert_eq!(ErrorFields::parse(body.clone()).unwrap(), e);
        // Missing final NUL: pgwire would panic here; we report it.
        let short = body.slice(..body.len() - 1);
        assert!(ErrorFields::parse(short).is_err());
        assert!(ErrorFields::parse(Bytes::new()).is_err());
    }

    #[test]
    fn data_row_roundtrip_and_hostile_counts() {
        let mut out = BytesMut::new();
        encode_data_row(&[Some(b"ab"), None, Some(b"")], &mut out);
        let body = Bytes::copy_from_slice(&out[5..]);
        let vals = parse_data_row(&body).unwrap();
        assert_eq!(
            vals,
            vec![Some(Bytes::from_static(b"ab")), None, Some(Bytes::new())]
        );
        assert!(parse_data_row(&Bytes::from_static(&[0x7f, 0xff])).is_err());
        assert!(parse_data_row(&Bytes::from_static(&[0, 1, 0, 0, 0, 9, 1])).is_err());
        assert!(parse_data_row(&Bytes::from_static(&[0])).is_err());
        assert!(parse_data_row(&Bytes::from_static(&[0, 1, 0xff, 0xff, 0xff, 0xf0])).is_err());
    }

    #[test]
    fn row_description_rejects_counts_the_body_cannot_hold() {
        assert!(parse_row_description(Bytes::from_static(&[0x7f, 0xff, 0])).is_err());
        assert!(parse_row_description(Bytes::from_static(&[0xff, 0xff])).is_err());
    }

    #[test]
    fn bind_params_as_text() {
        let b = BindMsg {
            portal: String::new(),
            statement: "s".into(),
            param_formats: vec![0, 1],
            params: vec![
                Some(Bytes::from_static(b"42")),
                Some(Bytes::from_static(&[1, 255])),
                None,
            ],
            result_formats: vec![],
        };
        assert_eq!(
            b.params_as_text(),
            vec![Some("42".to_string()), Some("\\x01ff".to_string()), None]
        );
    }
}
