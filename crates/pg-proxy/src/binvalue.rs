//! PostgreSQL binary-format values, as far as masking needs them: which built-in types can carry
//! text, how to reach every textual leaf of an array, record, range or tsvector, and how to write
//! the value back with fresh lengths once a leaf is masked.
//!
//! Promise: a value of a type listed here is either walked completely (every leaf that can hold
//! data is handed to the caller as text) or reported as undecodable; nothing is skipped silently.
//! Malformed input is an error, never a panic. The masking plan itself stays protocol-agnostic
//! (gatehouse-masking sees text); this module is the only place that knows the wire layouts.

use std::collections::HashMap;

/// How a type's binary value is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeForm {
    /// The binary value is the text itself (text, varchar, bpchar, name, "char", unknown, json,
    /// xml, enums, citext, domains over these).
    Text,
    /// jsonb: a version byte, then the JSON text.
    Jsonb,
    /// bytea: the bytes themselves (checked as text, written back as bytes).
    Bytea,
    /// A big-endian signed integer of this many bytes (int2, int4, int8, money).
    Int(u8),
    /// oid (unsigned 4 bytes).
    Oid,
    /// numeric: base-10000 digits.
    Numeric,
    /// float4 / float8.
    Float(u8),
    /// tsvector: lexemes (text) with positions.
    TsVector,
    /// Any array (the element type is in the value).
    Array,
    /// A record or composite (each field's type is in the value).
    Record,
    /// A range of the given subtype.
    Range(u32),
    /// A multirange of ranges of the given subtype.
    Multirange(u32),
    /// hstore (an extension's type, known by its send function): key/value text pairs.
    Hstore,
    /// Fixed-layout values that cannot hold text a detector could find or a masked column's
    /// characters: bool, date and time types, intervals, uuid, network addresses, geometric types,
    /// bit strings, tid/xid and similar. Passed as they are.
    Inert,
    /// A type the gateway cannot read (an extension's own binary format).
    Unknown,
}

/// The form of a built-in type, if it is one the gateway knows by OID.
pub fn builtin_form(oid: u32) -> Option<TypeForm> {
    Some(match oid {
        25 | 1043 | 1042 | 19 | 18 | 705 | 114 | 142 => TypeForm::Text,
        3802 => TypeForm::Jsonb,
        17 => TypeForm::Bytea,
        21 => TypeForm::Int(2),
        23 => TypeForm::Int(4),
        20 | 790 => TypeForm::Int(8),
        26 | 28 | 29 | 24 | 2202 | 2203 | 2204 | 2205 | 2206 | 3734 | 3769 | 4089 | 4096 | 4191 => {
            TypeForm::Oid
        }
        1700 => TypeForm::Numeric,
        700 => TypeForm::Float(4),
        701 => TypeForm::Float(8),
        3614 => TypeForm::TsVector,
        2249 => TypeForm::Record,
        3904 => TypeForm::Range(23),
        3926 => TypeForm::Range(20),
        3906 => TypeForm::Range(1700),
        3908 => TypeForm::Range(1114),
        3910 => TypeForm::Range(1184),
        3912 => TypeForm::Range(1082),
        4451 => TypeForm::Multirange(23),
        4536 => TypeForm::Multirange(20),
        4532 => TypeForm::Multirange(1700),
        4533 => TypeForm::Multirange(1114),
        4534 => TypeForm::Multirange(1184),
        4535 => TypeForm::Multirange(1082),
        // bool, date, time, timestamp(tz), interval, timetz, uuid, inet, cidr, macaddr(8),
        // point, lseg, path, box, polygon, line, circle, bit, varbit, tid, xid, xid8, cid,
        // pg_lsn, void.
        16 | 1082 | 1083 | 1114 | 1184 | 1186 | 1266 | 2950 | 869 | 650 | 829 | 774 | 600 | 601
        | 602 | 603 | 604 | 628 | 718 | 1560 | 1562 | 27 | 5069 | 3220 | 2278 => TypeForm::Inert,
        // Arrays of built-in types (the element type is read from the value).
        1000..=1028
        | 1040
        | 1041
        | 1115
        | 1182
        | 1183
        | 1185
        | 1187
        | 1231
        | 1263
        | 1270
        | 1561
        | 1563
        | 2201
        | 2207..=2211
        | 2949
        | 2951
        | 3221
        | 3643
        | 3645
        | 3807
        | 3905
        | 3907
        | 3909
        | 3911
        | 3913
        | 3927
        | 143
        | 199
        | 629
        | 651
        | 719
        | 775
        | 791
        | 1034
        | 3735
        | 3770
        | 4090
        | 4097
        | 4192
        | 271
        | 5039
        // Arrays of the built-in multiranges.
        | 6150..=6153
        | 6155
        | 6157 => TypeForm::Array,
        _ => return None,
    })
}

/// The form of a type from its binary send function's name (for types outside the built-in
/// list: domains, enums, composites, arrays of those, extension types).
pub fn form_from_send(send: &str, range_subtype: u32) -> TypeForm {
    match send {
        "textsend" | "varcharsend" | "bpcharsend" | "namesend" | "charsend" | "enum_send"
        | "json_send" | "xml_send" | "unknownsend" | "citextsend" => TypeForm::Text,
        "jsonb_send" => TypeForm::Jsonb,
        "byteasend" => TypeForm::Bytea,
        "int2send" => TypeForm::Int(2),
        "int4send" => TypeForm::Int(4),
        "int8send" | "cash_send" => TypeForm::Int(8),
        "oidsend" => TypeForm::Oid,
        "numeric_send" => TypeForm::Numeric,
        "float4send" => TypeForm::Float(4),
        "float8send" => TypeForm::Float(8),
        "tsvectorsend" => TypeForm::TsVector,
        "array_send" => TypeForm::Array,
        "record_send" => TypeForm::Record,
        "range_send" if range_subtype != 0 => TypeForm::Range(range_subtype),
        "multirange_send" if range_subtype != 0 => TypeForm::Multirange(range_subtype),
        "hstore_send" => TypeForm::Hstore,
        "boolsend" | "date_send" | "time_send" | "timestamp_send" | "timestamptz_send"
        | "interval_send" | "timetz_send" | "uuid_send" | "inet_send" | "cidr_send"
        | "macaddr_send" | "macaddr8_send" => TypeForm::Inert,
        _ => TypeForm::Unknown,
    }
}

/// Type forms known beyond the built-ins (from the catalog), by OID.
pub type TypeForms = HashMap<u32, TypeForm>;

/// The form of `oid`: built-in, else from `extra`, else unknown.
pub fn form_of(oid: u32, extra: &TypeForms) -> TypeForm {
    builtin_form(oid)
        .or_else(|| extra.get(&oid).copied())
        .unwrap_or(TypeForm::Unknown)
}

/// Why a value could not be walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// The bytes do not match the type's layout.
    Malformed,
    /// A type the gateway cannot read (by OID).
    Unknown(u32),
}

/// What the caller does with one textual leaf.
#[derive(Debug)]
pub enum Leaf {
    /// Leave it.
    Keep,
    /// Write these bytes instead (a textual leaf only).
    Replace(Vec<u8>),
    /// The value cannot be passed (a non-textual leaf matched): the whole value must go.
    Drop,
}

/// What walking a whole value gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Walked {
    /// No leaf changed.
    Unchanged,
    /// Some leaf changed: the re-encoded value.
    Rewritten(Vec<u8>),
    /// A leaf must go and cannot be rewritten in place.
    Drop,
}

/// The kind of leaf handed to the visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// Text that may be replaced by other text.
    Text,
    /// The decimal rendering of a number: it can only be kept or dropped.
    Number,
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WalkError> {
        if n > self.buf.len() {
            return Err(WalkError::Malformed);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WalkError> {
        self.take(N)?.try_into().map_err(|_| WalkError::Malformed)
    }
    fn i32(&mut self) -> Result<i32, WalkError> {
        self.array().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, WalkError> {
        self.array().map(u32::from_be_bytes)
    }
    fn u16(&mut self) -> Result<u16, WalkError> {
        self.array().map(u16::from_be_bytes)
    }
    fn i16(&mut self) -> Result<i16, WalkError> {
        self.array().map(i16::from_be_bytes)
    }
    /// A length-prefixed value (-1: NULL).
    fn value(&mut self) -> Result<Option<&'a [u8]>, WalkError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| WalkError::Malformed)?;
        self.take(n).map(Some)
    }
}

fn put_value(out: &mut Vec<u8>, v: Option<&[u8]>) -> Result<(), WalkError> {
    match v {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(b) => {
            let len = i32::try_from(b.len()).map_err(|_| WalkError::Malformed)?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(b);
        }
    }
    Ok(())
}

/// One element of a container: its original bytes (None: NULL) and its rewrite, if any.
type Part<'a> = (Option<&'a [u8]>, Option<Vec<u8>>);

/// A container rewritten: its `header` as it was, then each part (the rewrite where there is
/// one) with a fresh length.
fn rewritten(header: &[u8], parts: &[Part<'_>]) -> Result<Walked, WalkError> {
    let mut out = Vec::with_capacity(header.len() + parts.len() * 8 + 64);
    out.extend_from_slice(header);
    for (orig, new) in parts {
        put_value(&mut out, new.as_deref().or(*orig))?;
    }
    Ok(Walked::Rewritten(out))
}

/// Nesting limit for arrays of records of arrays…
const MAX_DEPTH: usize = 16;

/// Walks a binary value of type form `form`, handing every leaf that can carry data to `visit`
/// (as text: the text itself, or a number's decimal rendering), and re-encodes the value when a
/// textual leaf is replaced.
pub fn walk(
    form: TypeForm,
    value: &[u8],
    types: &TypeForms,
    visit: &mut dyn FnMut(LeafKind, &[u8]) -> Leaf,
) -> Result<Walked, WalkError> {
    walk_at(form, 0, value, types, visit, 0)
}

fn walk_at(
    form: TypeForm,
    oid: u32,
    value: &[u8],
    types: &TypeForms,
    visit: &mut dyn FnMut(LeafKind, &[u8]) -> Leaf,
    depth: usize,
) -> Result<Walked, WalkError> {
    if depth > MAX_DEPTH {
        return Err(WalkError::Malformed);
    }
    match form {
        TypeForm::Inert => Ok(Walked::Unchanged),
        TypeForm::Unknown => Err(WalkError::Unknown(oid)),
        TypeForm::Text | TypeForm::Bytea => Ok(match visit(LeafKind::Text, value) {
            Leaf::Keep => Walked::Unchanged,
            Leaf::Replace(b) => Walked::Rewritten(b),
            Leaf::Drop => Walked::Drop,
        }),
        TypeForm::Jsonb => {
            let Some((version, text)) = value.split_first() else {
                return Err(WalkError::Malformed);
            };
            Ok(match visit(LeafKind::Text, text) {
                Leaf::Keep => Walked::Unchanged,
                Leaf::Replace(b) => {
                    let mut out = Vec::with_capacity(b.len() + 1);
                    out.push(*version);
                    out.extend_from_slice(&b);
                    Walked::Rewritten(out)
                }
                Leaf::Drop => Walked::Drop,
            })
        }
        TypeForm::Int(_) | TypeForm::Oid | TypeForm::Numeric | TypeForm::Float(_) => {
            let text = render_number(form, value)?;
            Ok(match visit(LeafKind::Number, text.as_bytes()) {
                Leaf::Keep => Walked::Unchanged,
                Leaf::Replace(_) | Leaf::Drop => Walked::Drop,
            })
        }
        TypeForm::TsVector => walk_tsvector(value, visit),
        TypeForm::Array => walk_array(value, types, visit, depth),
        TypeForm::Record => walk_record(value, types, visit, depth),
        TypeForm::Range(sub) => walk_range(sub, value, types, visit, depth),
        TypeForm::Multirange(sub) => walk_multirange(sub, value, types, visit, depth),
        TypeForm::Hstore => walk_hstore(value, visit),
    }
}

/// Decimal text of a numeric binary value (sign, digits, scale), as PostgreSQL prints it.
fn render_number(form: TypeForm, v: &[u8]) -> Result<String, WalkError> {
    let bad = || WalkError::Malformed;
    Ok(match form {
        TypeForm::Int(2) => i16::from_be_bytes(v.try_into().map_err(|_| bad())?).to_string(),
        TypeForm::Int(4) => i32::from_be_bytes(v.try_into().map_err(|_| bad())?).to_string(),
        TypeForm::Int(8) => i64::from_be_bytes(v.try_into().map_err(|_| bad())?).to_string(),
        TypeForm::Oid => u32::from_be_bytes(v.try_into().map_err(|_| bad())?).to_string(),
        TypeForm::Float(4) => f32::from_be_bytes(v.try_into().map_err(|_| bad())?).to_string(),
        TypeForm::Float(8) => f64::from_be_bytes(v.try_into().map_err(|_| bad())?).to_string(),
        TypeForm::Numeric => render_numeric(v)?,
        _ => return Err(bad()),
    })
}

fn render_numeric(v: &[u8]) -> Result<String, WalkError> {
    let mut c = Cursor { buf: v };
    let ndigits = usize::from(c.u16()?);
    let weight = i32::from(c.i16()?);
    let sign = c.u16()?;
    let dscale = usize::from(c.u16()?);
    let mut digits = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        let d = c.u16()?;
        if d >= 10000 {
            return Err(WalkError::Malformed);
        }
        digits.push(d);
    }
    if !c.buf.is_empty() {
        return Err(WalkError::Malformed);
    }
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err(WalkError::Malformed),
    }
    if weight.unsigned_abs() > 10_000 || dscale > 20_000 {
        return Err(WalkError::Malformed);
    }
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // Integer part: groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for g in 0..=weight {
            let d = usize::try_from(g)
                .ok()
                .and_then(|g| digits.get(g))
                .copied()
                .unwrap_or(0);
            if g == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut g = weight + 1;
        while frac.len() < dscale {
            let d = if g < 0 {
                0
            } else {
                usize::try_from(g)
                    .ok()
                    .and_then(|g| digits.get(g))
                    .copied()
                    .unwrap_or(0)
            };
            frac.push_str(&format!("{d:04}"));
            g += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Ok(out)
}

fn walk_array(
    value: &[u8],
    types: &TypeForms,
    visit: &mut dyn FnMut(LeafKind, &[u8]) -> Leaf,
    depth: usize,
) -> Result<Walked, WalkError> {
    let mut c = Cursor { buf: value };
    let ndim = c.i32()?;
    let _flags = c.i32()?;
    let elem = c.u32()?;
    if !(0..=6).contains(&ndim) {
        return Err(WalkError::Malformed);
    }
    let mut count: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let len = usize::try_from(c.i32()?).map_err(|_| WalkError::Malformed)?;
        let _lbound = c.i32()?;
        count = count.checked_mul(len).ok_or(WalkError::Malformed)?;
    }
    if count.saturating_mul(4) > c.buf.len() {
        return Err(WalkError::Malformed);
    }
    let header_len = value.len() - c.buf.len();
    let form = form_of(elem, types);
    let mut parts: Vec<Part<'_>> = Vec::with_capacity(count);
    let mut changed = false;
    for _ in 0..count {
        let v = c.value()?;
        let new = match v {
            None => None,
            Some(b) => match walk_at(form, elem, b, types, visit, depth + 1)? {
                Walked::Unchanged => None,
                Walked::Rewritten(n) => {
                    changed = true;
                    Some(n)
                }
                Walked::Drop => return Ok(Walked::Drop),
            },
        };
        parts.push((v, new));
    }
    if !c.buf.is_empty() {
        return Err(WalkError::Malformed);
    }
    if !changed {
        return Ok(Walked::Unchanged);
    }
    rewritten(value.get(..header_len).ok_or(WalkError::Malformed)?, &parts)
}

fn walk_record(
    value: &[u8],
    types: &TypeForms,
    visit: &mut dyn FnMut(LeafKind, &[u8]) -> Leaf,
    depth: usize,
) -> Result<Walked, WalkError> {
    let mut c = Cursor { buf: value };
    let n = usize::try_from(c.i32()?).map_err(|_| WalkError::Malformed)?;
    if n.saturating_mul(8) > c.buf.len() {
        return Err(WalkError::Malformed);
    }
    let mut parts: Vec<(u32, Part<'_>)> = Vec::with_capacity(n);
    let mut changed = false;
    for _ in 0..n {
        let oid = c.u32()?;
        let v = c.value()?;
        let new = match v {
            None => None,
            Some(b) => match walk_at(form_of(oid, types), oid, b, types, visit, depth + 1)? {
                Walked::Unchanged => None,
                Walked::Rewritten(nb) => {
                    changed = true;
                    Some(nb)
                }
                Walked::Drop => return Ok(Walked::Drop),
            },
        };
        parts.push((oid, (v, new)));
    }
    if !c.buf.is_empty() {
        return Err(WalkError::Malformed);
    }
    if !changed {
        return Ok(Walked::Unchanged);
    }
    let mut out = Vec::with_capacity(value.len() + 64);
    let count = i32::try_from(n).map_err(|_| WalkError::Malformed)?;
    out.extend_from_slice(&count.to_be_bytes());
    for (oid, (orig, new)) in &parts {
        out.extend_from_slice(&oid.to_be_bytes());
        put_value(&mut out, new.as_deref().or(*orig))?;
    }
    Ok(Walked::Rewritten(out))
}

fn walk_range(
    sub: u32,
    value: &[u8],
    types: &TypeForms,
    visit: &mut dyn FnMut(LeafKind, &[u8]) -> Leaf,
    depth: usize,
) -> Result<Walked, WalkError> {
    let mut c = Cursor { buf: value };
    let flags = c.take(1)?.first().copied().unwrap_or(0);
    // RANGE_EMPTY 0x01, LB_INF 0x08, UB_INF 0x10.
    if flags & 0x01 != 0 {
        return Ok(Walked::Unchanged);
    }
    let form = form_of(sub, types);
    for present in [flags & 0x08 == 0, flags & 0x10 == 0] {
        if !present {
            continue;
        }
        let Some(b) = c.value()? else {
            return Err(WalkError::Malformed);
        };
        match walk_at(form, sub, b, types, visit, depth + 1)? {
            Walked::Unchanged => {}
            // A bound cannot be rewritten without breaking the range's order.
            Walked::Rewritten(_) | Walked::Drop => return Ok(Walked::Drop),
        }
    }
    if !c.buf.is_empty() {
        return Err(WalkError::Malformed);
    }
    Ok(Walked::Unchanged)
}

/// A multirange: the number of ranges, then each range with its length. A bound cannot be
/// rewritten (it would break the order), so a bound that must change drops the whole value.
fn walk_multirange(
    sub: u32,
    value: &[u8],
    types: &TypeForms,
    visit: &mut dyn FnMut(LeafKind, &[u8]) -> Leaf,
    depth: usize,
) -> Result<Walked, WalkError> {
    let mut c = Cursor { buf: value };
    let n = usize::try_from(c.i32()?).map_err(|_| WalkError::Malformed)?;
    if n.saturating_mul(4) > c.buf.len() {
        return Err(WalkError::Malformed);
    }
    for _ in 0..n {
        let Some(range) = c.value()? else {
            return Err(WalkError::Malformed);
        };
        match walk_range(sub, range, types, visit, depth + 1)? {
            Walked::Unchanged => {}
            Walked::Rewritten(_) | Walked::Drop => return Ok(Walked::Drop),
        }
    }
    if !c.buf.is_empty() {
        return Err(WalkError::Malformed);
    }
    Ok(Walked::Unchanged)
}

/// hstore (`hstore_send`): the number of pairs, then per pair a key (never NULL) and a value
/// (-1: NULL), each length-prefixed text. Keys and values are text leaves.
fn walk_hstore(
    value: &[u8],
    visit: &mut dyn FnMut(LeafKind, &[u8]) -> Leaf,
) -> Result<Walked, WalkError> {
    let mut c = Cursor { buf: value };
    let n = usize::try_from(c.i32()?).map_err(|_| WalkError::Malformed)?;
    if n.saturating_mul(8) > c.buf.len() {
        return Err(WalkError::Malformed);
    }
    let mut parts: Vec<Part<'_>> = Vec::with_capacity(n * 2);
    let mut changed = false;
    for _ in 0..n {
        let key = c.value()?.ok_or(WalkError::Malformed)?;
        let val = c.value()?;
        for v in [Some(key), val] {
            let new = match v {
                None => None,
                Some(b) => match visit(LeafKind::Text, b) {
                    Leaf::Keep => None,
                    Leaf::Replace(r) => {
                        changed = true;
                        Some(r)
                    }
                    Leaf::Drop => return Ok(Walked::Drop),
                },
            };
            parts.push((v, new));
        }
    }
    if !c.buf.is_empty() {
        return Err(WalkError::Malformed);
    }
    if !changed {
        return Ok(Walked::Unchanged);
    }
    let count = i32::try_from(n).map_err(|_| WalkError::Malformed)?;
    rewritten(&count.to_be_bytes(), &parts)
}

fn walk_tsvector(
    value: &[u8],
    visit: &mut dyn FnMut(LeafKind, &[u8]) -> Leaf,
) -> Result<Walked, WalkError> {
    let mut c = Cursor { buf: value };
    let n = usize::try_from(c.i32()?).map_err(|_| WalkError::Malformed)?;
    if n.saturating_mul(3) > c.buf.len() {
        return Err(WalkError::Malformed);
    }
    let mut lexemes: Vec<(Part<'_>, &[u8])> = Vec::with_capacity(n);
    let mut changed = false;
    for _ in 0..n {
        let end = memchr::memchr(0, c.buf).ok_or(WalkError::Malformed)?;
        let word = c.take(end)?;
        c.take(1)?;
        let npos = usize::from(c.u16()?);
        let positions = c.take(npos.saturating_mul(2))?;
        let new = match visit(LeafKind::Text, word) {
            Leaf::Keep => None,
            Leaf::Replace(mut b) => {
                // A lexeme is a C string: no NUL inside.
                b.retain(|&x| x != 0);
                changed = true;
                Some(b)
            }
            Leaf::Drop => return Ok(Walked::Drop),
        };
        lexemes.push(((Some(word), new), positions));
    }
    if !c.buf.is_empty() {
        return Err(WalkError::Malformed);
    }
    if !changed {
        return Ok(Walked::Unchanged);
    }
    let mut out = Vec::with_capacity(value.len() + 32);
    out.extend_from_slice(value.get(..4).ok_or(WalkError::Malformed)?);
    for ((word, new), positions) in &lexemes {
        out.extend_from_slice(new.as_deref().or(*word).unwrap_or_default());
        out.push(0);
        let npos = u16::try_from(positions.len() / 2).map_err(|_| WalkError::Malformed)?;
        out.extend_from_slice(&npos.to_be_bytes());
        out.extend_from_slice(positions);
    }
    Ok(Walked::Rewritten(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn text_array(items: &[Option<&str>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&25u32.to_be_bytes());
        v.extend_from_slice(&(items.len() as i32).to_be_bytes());
        v.extend_from_slice(&1i32.to_be_bytes());
        for i in items {
            put_value(&mut v, i.map(str::as_bytes)).unwrap();
        }
        v
    }

    fn star_at(kind: LeafKind, b: &[u8]) -> Leaf {
        if b.contains(&b'@') {
            match kind {
                LeafKind::Text => Leaf::Replace(b"[email]".to_vec()),
                LeafKind::Number => Leaf::Drop,
            }
        } else {
            Leaf::Keep
        }
    }

    #[test]
    fn a_masked_array_element_is_rewritten_with_its_new_length() {
        let v = text_array(&[Some("ann@example.com"), None, Some("ok")]);
        let out = walk(TypeForm::Array, &v, &TypeForms::new(), &mut star_at).unwrap();
        assert_eq!(
            out,
            Walked::Rewritten(text_array(&[Some("[email]"), None, Some("ok")]))
        );
        let clean = text_array(&[Some("x")]);
        assert_eq!(
            walk(TypeForm::Array, &clean, &TypeForms::new(), &mut star_at).unwrap(),
            Walked::Unchanged
        );
    }

    #[test]
    fn records_nest_and_unknown_types_are_reported() {
        let mut rec = Vec::new();
        rec.extend_from_slice(&2i32.to_be_bytes());
        rec.extend_from_slice(&1009u32.to_be_bytes());
        let inner = text_array(&[Some("a@b.c")]);
        put_value(&mut rec, Some(&inner)).unwrap();
        rec.extend_from_slice(&99999u32.to_be_bytes());
        put_value(&mut rec, Some(b"zz")).unwrap();
        assert_eq!(
            walk(TypeForm::Record, &rec, &TypeForms::new(), &mut star_at),
            Err(WalkError::Unknown(99999))
        );
        let mut known = TypeForms::new();
        known.insert(99999, TypeForm::Text);
        let Walked::Rewritten(out) = walk(TypeForm::Record, &rec, &known, &mut star_at).unwrap()
        else {
            panic!("expected a rewrite");
        };
        assert!(!out.windows(5).any(|w| w == b"a@b.c"));
    }

    #[test]
    fn numbers_render_as_postgres_prints_them() {
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3.
        let mut v = Vec::new();
        for x in [3u16, 1, 0, 3, 1, 2345, 6780] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(render_numeric(&v).unwrap(), "12345.678");
        let mut v = Vec::new();
        for x in [1u16, 0xffff, 0x4000, 4, 50] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(render_numeric(&v).unwrap(), "-0.0050");
        assert_eq!(
            render_number(TypeForm::Int(8), &4111111111111111i64.to_be_bytes()).unwrap(),
            "4111111111111111"
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [&b""[..], &[0, 0, 0, 1][..], &[0xff; 12][..]] {
            assert!(walk(TypeForm::Array, bad, &TypeForms::new(), &mut star_at).is_err());
            assert!(walk(TypeForm::Record, bad, &TypeForms::new(), &mut star_at).is_err());
            assert!(walk(TypeForm::TsVector, bad, &TypeForms::new(), &mut star_at).is_err());
        }
    }

    fn replace_secret(kind: LeafKind, b: &[u8]) -> Leaf {
        if kind == LeafKind::Text && b == b"secret" {
            Leaf::Replace(b"[x]".to_vec())
        } else if kind == LeafKind::Number && b == b"42" {
            Leaf::Drop
        } else {
            Leaf::Keep
        }
    }

    #[test]
    fn hstore_pairs_are_walked_and_rewritten_with_fresh_lengths() {
        let mut v = Vec::new();
        v.extend_from_slice(&2i32.to_be_bytes());
        put_value(&mut v, Some(b"k")).unwrap();
        put_value(&mut v, Some(b"secret")).unwrap();
        put_value(&mut v, Some(b"secret")).unwrap();
        put_value(&mut v, None).unwrap();
        let got = walk(TypeForm::Hstore, &v, &TypeForms::new(), &mut replace_secret).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&2i32.to_be_bytes());
        put_value(&mut want, Some(b"k")).unwrap();
        put_value(&mut want, Some(b"[x]")).unwrap();
        put_value(&mut want, Some(b"[x]")).unwrap();
        put_value(&mut want, None).unwrap();
        assert_eq!(got, Walked::Rewritten(want));
        // A NULL key, a short value and trailing bytes are malformed.
        let mut bad = 1i32.to_be_bytes().to_vec();
        put_value(&mut bad, None).unwrap();
        put_value(&mut bad, None).unwrap();
        assert!(
            walk(
                TypeForm::Hstore,
                &bad,
                &TypeForms::new(),
                &mut replace_secret
            )
            .is_err()
        );
        assert!(
            walk(
                TypeForm::Hstore,
                &v[..v.len() - 1],
                &TypeForms::new(),
                &mut replace_secret
            )
            .is_err()
        );
    }

    #[test]
    fn multirange_bounds_are_visited_and_a_bound_that_must_change_drops_the_value() {
        let range = |lo: i32, hi: i32| {
            let mut r = vec![0x02u8]; // LB_INC
            put_value(&mut r, Some(&lo.to_be_bytes())).unwrap();
            put_value(&mut r, Some(&hi.to_be_bytes())).unwrap();
            r
        };
        let multi = |ranges: &[Vec<u8>]| {
            let mut v = (ranges.len() as i32).to_be_bytes().to_vec();
            for r in ranges {
                put_value(&mut v, Some(r)).unwrap();
            }
            v
        };
        let form = builtin_form(4451).unwrap();
        assert_eq!(form, TypeForm::Multirange(23));
        let ok = multi(&[range(1, 3), range(5, 9)]);
        assert_eq!(
            walk(form, &ok, &TypeForms::new(), &mut replace_secret).unwrap(),
            Walked::Unchanged
        );
        let hit = multi(&[range(1, 3), range(42, 50)]);
        assert_eq!(
            walk(form, &hit, &TypeForms::new(), &mut replace_secret).unwrap(),
            Walked::Drop
        );
        let empty = multi(&[]);
        assert_eq!(
            walk(form, &empty, &TypeForms::new(), &mut replace_secret).unwrap(),
            Walked::Unchanged
        );
        assert!(
            walk(
                form,
                &ok[..ok.len() - 2],
                &TypeForms::new(),
                &mut replace_secret
            )
            .is_err()
        );
        assert_eq!(
            form_from_send("multirange_send", 1082),
            TypeForm::Multirange(1082)
        );
        assert_eq!(form_from_send("hstore_send", 0), TypeForm::Hstore);
    }
}
