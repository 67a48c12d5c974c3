//! A corpus of leak attempts against masked columns, driven by psql (text), tokio-postgres
//! (binary results, as for every prepared statement) and a raw wire client (simple and extended
//! protocol, binary formats), all through a tap that keeps every byte the gateway sends. For
//! each family, no known PII value of the test data may reach any byte sent to a client or
//! written to the audit log or recordings — read forwards, backwards, with separators removed,
//! or hex/base64 decoded. One PostgreSQL cluster, one gateway, the real masking engine with the
//! quickstart's rules (`email`, `card_number`, `phone`) and default detectors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use gatehouse_pg::{PgProxy, PgProxyConfig, PgTarget, Secret, UpstreamAddress, UpstreamConfig};
use gatehouse_testkit::layers::{FnPolicy, StaticAuthenticator, TestPipeline};
use gatehouse_testkit::pg::PgCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{CANARY_PREFIX, TOKEN, agent};

const SETUP: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, email text UNIQUE, card_number text,
    phone text, note text);
INSERT INTO customers VALUES
 (1, 'Zebulon Quixote', 'zq.leaktest1@corp-example.org', '4111111111111111', '+1 202 555 0143',
  'paid with card 4012 8888 8888 1881 on friday'),
 (2, 'Yolanda Xerxes', 'yx.leaktest2@corp-example.org', '5555555555554444', '+1 202 555 0178',
  'reach me at wq.notetest3@corp-example.org');
CREATE VIEW v_customers AS SELECT id, email, reverse(card_number) AS rc FROM customers;
CREATE TYPE contact AS (who text, mail text);
CREATE FUNCTION customer_dump() RETURNS text LANGUAGE sql
    AS $$ SELECT string_agg(reverse(card_number) || translate(email, '@.', '  '), ',') FROM customers $$;
CREATE TABLE plain (id int, label text);
INSERT INTO plain VALUES (1, 'harmless');
CREATE VIEW v_cards AS SELECT id, card_number, card_number || 'x' AS cx, reverse(card_number) AS rc,
    upper(email) AS ue, email, phone FROM customers;
CREATE VIEW v_nested AS SELECT id, cx, rc AS rc2, card_number AS card FROM v_cards;
CREATE VIEW v_sub AS SELECT s.id, s.k FROM (SELECT id, reverse(card_number) AS k FROM customers) s;
CREATE VIEW v_union AS SELECT id, card_number AS u FROM customers
    UNION ALL SELECT id, reverse(card_number) FROM customers;
CREATE MATERIALIZED VIEW m_cards AS SELECT id, card_number, reverse(card_number) AS rc FROM customers;
CREATE VIEW v_activity AS SELECT pid, query AS q FROM pg_stat_activity;
CREATE VIEW v_notes AS SELECT id, note, reverse(note) AS rn FROM customers;
CREATE TABLE customer_gen (id int, note text, email text,
    rn text GENERATED ALWAYS AS (reverse(note)) STORED,
    re text GENERATED ALWAYS AS (reverse(email)) STORED);
INSERT INTO customer_gen (id, note, email) SELECT id, note, email FROM customers;
";

/// Every value that must never be seen: the masked columns, and the PII inside `note` that
/// only the detectors protect (read directly, in any format).
const PII: &[&str] = &[
    "zq.leaktest1@corp-example.org",
    "yx.leaktest2@corp-example.org",
    "4111111111111111",
    "5555555555554444",
    "+1 202 555 0143",
    "+1 202 555 0178",
    "4012 8888 8888 1881",
    "wq.notetest3@corp-example.org",
];

/// Outputs deriving from masked columns through expressions (text and binary alike).
const LINEAGE: &[&str] = &[
    "SELECT email AS e FROM customers",
    "SELECT public.customers.email FROM public.customers",
    "SELECT \"email\", \"card_number\" FROM \"customers\"",
    "SELECT c.email, c.phone FROM public.customers c",
    "SELECT card_number || 'x' FROM customers",
    "SELECT 'x' || card_number || 'y' FROM customers",
    "SELECT replace(email, '@', ' at ') FROM customers",
    "SELECT translate(email, 'abcdefghijklmnopqrstuvwxyz', 'bcdefghijklmnopqrstuvwxyza') FROM customers",
    "SELECT reverse(email), reverse(card_number), reverse(phone) FROM customers",
    "SELECT split_part(email, '@', 1), split_part(email, '@', 2) FROM customers",
    "SELECT encode(convert_to(email, 'UTF8'), 'hex') FROM customers",
    "SELECT encode(convert_to(email || card_number, 'UTF8'), 'base64') FROM customers",
    "SELECT encode(card_number::bytea, 'escape') FROM customers",
    "SELECT regexp_replace(email, '(.)', '\\1 ', 'g') FROM customers",
    "SELECT i, substr(email, i, 1) FROM customers, generate_series(1, 40) i ORDER BY id, i",
    "SELECT substr(card_number, i, 1) FROM customers, generate_series(1, 16) i ORDER BY id, i",
    // Windows whose last four characters (what a partial strategy keeps) tile the value.
    "SELECT substr('x' || email || 'yyyy', i, 5) FROM customers, generate_series(1, 33, 4) i ORDER BY id, i",
    "SELECT substr('x' || card_number || 'yyyy', i, 5) FROM customers, generate_series(1, 17, 4) i ORDER BY id, i",
    "SELECT substr('x' || phone || 'yyyy', i, 5) FROM customers, generate_series(1, 17, 4) i ORDER BY id, i",
    "SELECT array_agg(reverse(email)) FROM customers",
    "SELECT array_agg(substr(email, i, 1) ORDER BY i) FROM customers, generate_series(1, 40) i GROUP BY id",
    "SELECT string_agg(email, ',') FROM customers",
    "SELECT string_agg(reverse(card_number), ';') FROM customers",
    "SELECT upper(email), lower(phone) FROM customers",
    "SELECT initcap(email), btrim(card_number) FROM customers",
    "SELECT left(card_number, 8), right(card_number, 8) FROM customers",
    "SELECT lpad(card_number, 20, '0') FROM customers",
    "SELECT format('%s|%s', email, card_number) FROM customers",
    "SELECT concat(email, card_number), concat_ws('-', phone, 'x') FROM customers",
    "SELECT COALESCE(email, '') FROM customers",
    "SELECT CASE WHEN id > 0 THEN card_number END FROM customers",
    "SELECT (SELECT reverse(email) FROM customers c2 WHERE c2.id = c.id) FROM customers c",
    "WITH x AS (SELECT reverse(email) AS e FROM customers) SELECT e FROM x",
    "SELECT e FROM (SELECT reverse(card_number) e FROM customers) s",
    "SELECT name FROM customers UNION ALL SELECT reverse(email) FROM customers",
    "SELECT x FROM customers, LATERAL (SELECT reverse(email) x) l",
    "SELECT (SELECT string_agg(reverse(email), ',') FROM customers)",
    "VALUES ((SELECT reverse(email) FROM customers ORDER BY id LIMIT 1))",
    "SELECT to_json(email), to_jsonb(card_number) FROM customers",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT json_agg(email), jsonb_agg(phone) FROM customers",
    "SELECT jsonb_build_object('e', reverse(email)) FROM customers",
    "SELECT xmlelement(name x, email) FROM customers",
    "SELECT string_to_array(email, NULL) FROM customers",
    "SELECT regexp_split_to_table(email, '') FROM customers",
    "SELECT unnest(string_to_array(card_number, NULL)) FROM customers",
    "SELECT chr(ascii(substr(email, 1, 1))) FROM customers",
    "SELECT overlay(email placing '' from 1 for 0) FROM customers",
    "SELECT email::varchar, email::name, card_number::bpchar FROM customers",
    "SELECT quote_literal(email), quote_ident(card_number) FROM customers",
    "SELECT repeat(email, 1), textcat(card_number, '') FROM customers",
    "SELECT min(email), max(card_number) FROM customers",
    "SELECT DISTINCT lower(email) FROM customers",
    "SELECT customers FROM customers",
    "SELECT (c).email FROM customers c",
    "SELECT (c).* FROM customers c",
    "TABLE customers",
    "SELECT * FROM v_customers",
    "SELECT rc FROM v_customers",
    "SELECT md5(email) = md5(email), reverse(email) FROM customers",
    "UPDATE customers SET name = name RETURNING reverse(email), card_number",
    "SELECT email COLLATE \"C\" FROM customers",
    "SELECT ARRAY[email, card_number] FROM customers",
    "SELECT ROW(email, card_number) FROM customers",
    "SELECT ROW(reverse(email), phone)::contact FROM customers",
    "SELECT to_tsvector('simple', email) FROM customers",
    "SELECT convert_to(email, 'UTF8'), card_number::bytea FROM customers",
    "SELECT card_number::int8, card_number::numeric, card_number::float8 FROM customers",
    "SELECT numrange(card_number::numeric, card_number::numeric + 1) FROM customers",
    "SELECT ARRAY[ROW(email)] FROM customers",
    "SELECT array_agg(c) FROM customers c",
];

/// Values only the detectors protect (the `note` column has no rule): read directly, in every
/// binary shape, they must come back masked.
const DETECTORS: &[&str] = &[
    "SELECT note FROM customers",
    "SELECT ARRAY[note] FROM customers",
    "SELECT ROW(note, id) FROM customers",
    "SELECT ROW(note, 'x')::contact FROM customers",
    "SELECT to_tsvector('simple', note) FROM customers",
    "SELECT note::bytea FROM customers",
    "SELECT to_jsonb(note), to_json(note) FROM customers",
    "SELECT array_agg(note) FROM customers",
    "SELECT ARRAY[ARRAY[note]] FROM customers",
    "SELECT note::varchar(200) FROM customers",
];

/// Errors and notices: every field that can carry data.
const ERRORS: &[&str] = &[
    "SELECT CAST(email AS int) FROM customers",
    "SELECT CAST(reverse(email) AS int) FROM customers",
    "SELECT CAST(card_number AS int) FROM customers",
    "SELECT CAST(name AS int) FROM customers",
    "SELECT email::date FROM customers",
    "SELECT reverse(card_number)::uuid FROM customers",
    "SELECT reverse(email)::regclass FROM customers",
    "SELECT reverse(email)::json FROM customers",
    "SELECT xmlparse(document reverse(email)) FROM customers",
    "SELECT * FROM customers WHERE id = CAST(reverse(phone) AS int)",
    "INSERT INTO customers (id, email) SELECT id + 100, email FROM customers",
    "UPDATE customers SET email = (SELECT email FROM customers WHERE id = 1) WHERE id = 2",
    "DO $$ DECLARE e text; BEGIN SELECT string_agg(reverse(email), ',') INTO e FROM customers; \
     RAISE EXCEPTION '%', e; END $$",
    "DO $$ DECLARE e text; BEGIN SELECT string_agg(reverse(email), ',') INTO e FROM customers; \
     RAISE NOTICE 'n %', e; END $$",
    "DO $$ DECLARE e text; BEGIN SELECT string_agg(reverse(card_number), ',') INTO e FROM customers; \
     RAISE EXCEPTION 'x' USING DETAIL = e, HINT = e, SCHEMA = e, TABLE = e, COLUMN = e, \
     DATATYPE = e, CONSTRAINT = e; END $$",
    "DO $$ DECLARE e text; BEGIN SELECT string_agg(reverse(email), '') INTO e FROM customers; \
     EXECUTE 'SELECT 1 FROM ' || e; END $$",
    "DO $$ DECLARE e text; BEGIN SELECT string_agg(reverse(phone), '') INTO e FROM customers; \
     RAISE WARNING USING MESSAGE = e, ERRCODE = '22000'; END $$",
    "DO $$ DECLARE e text; BEGIN SELECT string_agg(reverse(email), ',') INTO e FROM customers; \
     EXECUTE format('SELECT %L::int', e); END $$",
    "SELECT CAST(customer_dump() AS int)",
    "PREPARE leakcast AS SELECT CAST(reverse(card_number) AS int) FROM customers; EXECUTE leakcast",
    "SELECT set_config('application_name', customer_dump(), false); SELECT CAST(current_setting('application_name') AS int)",
];

/// Notifications and settings the server reports back.
const SIDE_CHANNELS: &[&str] = &[
    "LISTEN leakchan; SELECT pg_notify('leakchan', string_agg(reverse(email), ',')) FROM customers",
    "LISTEN leakchan; SELECT pg_notify('leakchan', string_agg(email || card_number, ',')) FROM customers",
    "LISTEN leakchan; DO $$ BEGIN PERFORM pg_notify('leakchan', (SELECT string_agg(reverse(phone), '') FROM customers)); END $$",
    "SELECT set_config('application_name', string_agg(reverse(email) || reverse(card_number), ','), false) FROM customers",
    "SELECT set_config('application_name', (SELECT min(email) FROM customers), false)",
    "DO $$ BEGIN PERFORM set_config('application_name', (SELECT string_agg(reverse(phone), '') FROM customers), false); END $$",
];

/// Results whose columns the statement's own text does not trace: prepared statements run by
/// name, cursors, functions that run a query given as text.
const UNTRACED: &[&str] = &[
    "PREPARE leakp AS SELECT translate(email, '@.', '  '), reverse(card_number) FROM customers; EXECUTE leakp",
    "BEGIN; DECLARE leakc CURSOR FOR SELECT reverse(card_number), translate(email, '@.', '  ') FROM customers; FETCH ALL leakc; COMMIT",
    "SELECT query_to_xml('SELECT reverse(card_number) AS e, translate(email, ''@.'', ''  '') AS f FROM customers', true, false, '')",
    "BEGIN; DECLARE bc BINARY CURSOR FOR SELECT email, note, ARRAY[note], ROW(note, email), reverse(card_number) FROM customers; FETCH ALL bc; COMMIT",
    "SELECT customer_dump()",
    "SELECT * FROM customer_dump()",
    "SELECT set_config('application_name', (SELECT string_agg(reverse(card_number), ',') FROM customers), false); SELECT current_setting('application_name')",
];

/// Views whose columns are expressions over masked columns, under a partial strategy: the
/// view's expression columns are masked whole, not as if they were the card number itself.
const VIEWS: &[&str] = &[
    "SELECT cx, rc, ue FROM v_cards",
    "SELECT * FROM v_cards",
    "SELECT rc2, cx FROM v_nested",
    "SELECT k FROM v_sub",
    "SELECT u FROM v_union",
    "SELECT rc FROM m_cards",
    "SELECT string_agg(rc, ',') FROM v_cards",
    "SELECT v.rc || v.cx FROM v_cards v",
];

/// Large objects: data copied into one (from a masked column, transformed past the detectors)
/// and read back through any large-object function, the fastpath interface or server files.
const LARGE_OBJECTS: &[&str] = &[
    "SELECT lo_from_bytea(424242, convert_to((SELECT string_agg(reverse(email) || reverse(card_number), ',') FROM customers), 'UTF8'))",
    "SELECT lo_get(424242)",
    "SELECT lo_get(424242, 0, 1000)",
    "SELECT convert_from(lo_get(424242), 'UTF8')",
    "SELECT encode(lo_get(424242), 'escape')",
    "SELECT encode(lo_get(424242), 'base64')",
    "BEGIN; SELECT loread(lo_open(424242, 262144), 100000); COMMIT",
    "BEGIN; SELECT lo_lseek(lo_open(424242, 262144), 0, 0); COMMIT",
    "SELECT data FROM pg_largeobject",
    "SELECT lo_export(424242, '/tmp/gatehouse-leaks-lo')",
    "SELECT pg_read_file('/tmp/gatehouse-leaks-lo')",
    "SELECT pg_read_binary_file('/tmp/gatehouse-leaks-lo')",
    "SELECT lo_put(424242, 0, convert_to((SELECT min(reverse(phone)) FROM customers), 'UTF8')); SELECT lo_get(424242)",
];

/// Statements whose own text carries PII as literals: the audit log and the recordings keep
/// them masked (and nothing echoes them back raw).
const STATEMENT_TEXT: &[&str] = &[
    "SELECT id FROM customers WHERE email = 'zq.leaktest1@corp-example.org'",
    "SELECT id FROM customers WHERE card_number = '4111111111111111' OR phone = '+1 202 555 0143'",
    "SELECT id FROM customers WHERE email LIKE 'yx.leaktest2@corp-example.org%'",
    "INSERT INTO plain VALUES (7, 'wq.notetest3@corp-example.org') RETURNING id",
    "UPDATE plain SET label = 'yx.leaktest2@corp-example.org' WHERE id = 7",
    "DELETE FROM plain WHERE id = 7 OR label = '5555555555554444'",
    "SELECT 1 WHERE '4012 8888 8888 1881' IS NOT NULL",
    "SELECT count(*) FROM customers WHERE phone IN ('+1 202 555 0178', '+1 202 555 0143')",
    "SELECT CAST('zq.leaktest1@corp-example.org' AS int)",
    "PREPARE pq(text) AS SELECT id FROM customers WHERE email = $1; EXECUTE pq('zq.leaktest1@corp-example.org')",
    "DO $$ BEGIN PERFORM 1 WHERE 'yx.leaktest2@corp-example.org' <> ''; END $$",
    "SELECT id FROM customers WHERE card_number = E'4111111111111111' AND email = $q$zq.leaktest1@corp-example.org$q$",
];

/// What the tap saw from the gateway, per client connection.
type Captured = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A loopback relay in front of the gateway that keeps every byte sent to the client.
async fn tap(gateway_port: u16) -> (u16, Captured) {
    let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
    let port = listener.local_addr().unwrap().port();
    let captured: Captured = Arc::default();
    let all = captured.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", gateway_port)).await else {
                continue;
            };
            let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
            all.lock().unwrap().push(seen.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.split();
                let (mut ur, mut uw) = upstream.split();
                let up = tokio::io::copy(&mut cr, &mut uw);
                let down = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                };
                let _ = tokio::join!(up, down);
            });
        }
    });
    (port, captured)
}

/// The values carried by a backend message stream: each DataRow value, each result column
/// concatenated down its rows and each row concatenated across, so that a value spread one
/// character per row or per column is found whole.
fn data_values(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    // A single-byte answer to SSLRequest may precede the messages.
    if matches!(wire.first(), Some(b'N') | Some(b'S')) && wire.get(1) == Some(&b'R') {
        at = 1;
    }
    let mut columns: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let flush = |columns: &mut BTreeMap<usize, Vec<u8>>, out: &mut Vec<Vec<u8>>| {
        out.extend(std::mem::take(columns).into_values());
    };
    while at + 5 <= wire.len() {
        let tag = wire[at];
        let len = u32::from_be_bytes(wire[at + 1..at + 5].try_into().unwrap()) as usize;
        let Some(body) = wire.get(at + 5..at + 1 + len) else {
            break;
        };
        at += 1 + len;
        match tag {
            b'D' => {
                let mut row = Vec::new();
                let mut p = 2;
                let mut col = 0;
                while p + 4 <= body.len() {
                    let l = i32::from_be_bytes(body[p..p + 4].try_into().unwrap());
                    p += 4;
                    if l > 0 {
                        let v = &body[p..p + l as usize];
                        row.extend_from_slice(v);
                        columns.entry(col).or_default().extend_from_slice(v);
                        out.push(v.to_vec());
                        p += l as usize;
                    }
                    col += 1;
                }
                out.push(row);
            }
            b'C' | b'E' | b'Z' => flush(&mut columns, &mut out),
            _ => {}
        }
    }
    flush(&mut columns, &mut out);
    out
}

fn alnum_lower(b: &[u8]) -> Vec<u8> {
    b.iter()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase)
        .collect()
}

/// Runs of hex digits and of base64 characters, decoded (every alignment).
fn decodings(b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for run in b
        .split(|c| !c.is_ascii_hexdigit())
        .filter(|r| r.len() >= 16)
    {
        for start in 0..2 {
            let decoded: Vec<u8> = run[start..]
                .chunks_exact(2)
                .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
                .collect();
            out.push(decoded);
        }
    }
    let is_b64 = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_');
    let lenient = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let engines = [
        base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, lenient),
        base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient),
    ];
    for run in b.split(|c| !is_b64(c)).filter(|r| r.len() >= 12) {
        for start in 0..4 {
            let mut s: Vec<u8> = run[start..].to_vec();
            if s.len() % 4 == 1 {
                s.pop();
            }
            for engine in &engines {
                if let Ok(d) = engine.decode(&s) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// The PII values (and in which form) found in `haystack`.
fn leaks_in(haystack: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut views = vec![haystack.to_ascii_lowercase()];
    views.extend(
        decodings(haystack)
            .into_iter()
            .map(|d| d.to_ascii_lowercase()),
    );
    let alnum: Vec<Vec<u8>> = views.iter().map(|v| alnum_lower(v)).collect();
    for pii in PII {
        let plain = pii.to_ascii_lowercase().into_bytes();
        let rev: Vec<u8> = plain.iter().rev().copied().collect();
        let compact = alnum_lower(&plain);
        let compact_rev: Vec<u8> = compact.iter().rev().copied().collect();
        let hit = |hay: &[Vec<u8>], needle: &[u8]| {
            hay.iter()
                .any(|h| memchr::memmem::find(h, needle).is_some())
        };
        for (form, hay, needle) in [
            ("as is", &views, &plain),
            ("reversed", &views, &rev),
            ("without separators", &alnum, &compact),
            ("reversed without separators", &alnum, &compact_rev),
        ] {
            if hit(hay, needle) {
                found.push(format!("{pii} ({form})"));
            }
        }
    }
    found
}

/// Every leak in what the clients and the audit log received since `from` (per connection).
fn scan(captured: &Captured, from: usize, extra: &[u8]) -> Vec<String> {
    let conns = captured.lock().unwrap().clone();
    let mut found = Vec::new();
    for conn in conns.iter().skip(from) {
        let bytes = conn.lock().unwrap().clone();
        found.extend(leaks_in(&bytes));
        for v in data_values(&bytes) {
            found.extend(leaks_in(&v));
        }
    }
    found.extend(leaks_in(extra));
    found.sort();
    found.dedup();
    found
}

/// psql, text format, all statements in one session.
fn run_psql(port: u16, statements: &[&str]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut cmd = std::process::Command::new(gatehouse_testkit::pg::psql_path());
    cmd.args(["-X", "-A", "-v", "ON_ERROR_STOP=0", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", "agent", "-d", "app"])
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable")
        .env("PGPASSWORD", TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = gatehouse_testkit::process::ChildGuard::spawn_with_stdio("psql", cmd).unwrap();
    let mut script = String::new();
    for s in statements {
        script.push_str(s);
        script.push_str(";\n");
    }
    let mut sin = child.child_mut().stdin.take().unwrap();
    sin.write_all(script.as_bytes()).unwrap();
    drop(sin);
    let mut out = Vec::new();
    let mut stdout = child.child_mut().stdout.take().unwrap();
    let mut stderr = child.child_mut().stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut e = Vec::new();
        let _ = stderr.read_to_end(&mut e);
        e
    });
    let _ = stdout.read_to_end(&mut out);
    out.extend(reader.join().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.child_mut().try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "psql hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

/// tokio-postgres: every statement prepared, results in binary format; reconnects when the
/// gateway ends a session (a refused row).
async fn run_binary_driver(port: u16, statements: &[&str]) -> Vec<String> {
    let conn_str = format!(
        "host=127.0.0.1 port={port} user=agent dbname=app password={TOKEN} connect_timeout=10"
    );
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    };
    let mut client = connect().await;
    let mut outcomes = Vec::new();
    for s in statements {
        if client.is_closed() {
            client = connect().await;
        }
        let outcome = if s.contains(';') {
            match client.simple_query(s).await {
                Ok(m) => format!("{s}: {} messages", m.len()),
                Err(e) => format!("{s}: {e}"),
            }
        } else {
            match client.query(*s, &[]).await {
                Ok(rows) => format!("{s}: {} rows", rows.len()),
                Err(e) => format!("{s}: {e}"),
            }
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// A raw wire-protocol client: cleartext password, then simple queries or Parse/Bind/Execute
/// with every result column in binary format.
struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    async fn connect(port: u16) -> RawClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for (k, v) in [("user", "agent"), ("database", "app")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        stream.write_all(&msg).await.unwrap();
        let mut c = RawClient { stream };
        loop {
            let (tag, body) = c.read().await.expect("startup answer");
            match tag {
                b'R' if body.get(..4) == Some(&3u32.to_be_bytes()[..]) => {
                    let mut pw = TOKEN.as_bytes().to_vec();
                    pw.push(0);
                    c.send(b'p', &pw).await;
                }
                b'Z' => return c,
                b'E' => panic!("raw client login refused"),
                _ => {}
            }
        }
    }

    async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut msg = vec![tag];
        msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(body);
        self.stream.write_all(&msg).await.unwrap();
    }

    async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.stream.read_exact(&mut body).await.ok()?;
        Some((head[0], body))
    }

    /// Reads to ReadyForQuery; `false` when the session ended.
    async fn until_ready(&mut self) -> bool {
        loop {
            match self.read().await {
                Some((b'Z', _)) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    }

    async fn simple(&mut self, sql: &str) -> bool {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        self.send(b'Q', &q).await;
        self.until_ready().await
    }

    async fn extended_binary(&mut self, sql: &str) -> bool {
        let mut parse = vec![0u8];
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(&[0, 0, 0]);
        self.send(b'P', &parse).await;
        // Bind: unnamed portal and statement, no parameters, one result format: binary for all.
        self.send(b'B', &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1]).await;
        self.send(b'E', &[0, 0, 0, 0, 0]).await;
        self.send(b'S', &[]).await;
        self.until_ready().await
    }
}

impl RawClient {
    /// A fastpath FunctionCall with binary int4 arguments and a binary result: the value of
    /// the FunctionCallResponse (`None` for NULL, for an error or a closed session).
    async fn function_call(&mut self, oid: u32, args: &[i32]) -> Option<Vec<u8>> {
        let mut body = oid.to_be_bytes().to_vec();
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&(args.len() as u16).to_be_bytes());
        for a in args {
            body.extend_from_slice(&4i32.to_be_bytes());
            body.extend_from_slice(&a.to_be_bytes());
        }
        body.extend_from_slice(&1u16.to_be_bytes());
        self.send(b'F', &body).await;
        let mut value = None;
        loop {
            match self.read().await {
                Some((b'V', v)) => {
                    let len = i32::from_be_bytes(v.get(..4)?.try_into().ok()?);
                    if len >= 0 {
                        value = Some(v.get(4..)?.to_vec());
                    }
                }
                Some((b'Z', _)) => return value,
                Some(_) => {}
                None => return None,
            }
        }
    }
}

/// Reads large object 424242 through the fastpath interface (`lo_open`, then `loread`), as
/// libpq's large-object functions do.
async fn run_fastpath(port: u16) -> Vec<u8> {
    const LO_OPEN: u32 = 952;
    const LOREAD: u32 = 954;
    const INV_READ: i32 = 0x40000;
    let mut c = RawClient::connect(port).await;
    assert!(c.simple("BEGIN").await);
    let fd = c.function_call(LO_OPEN, &[424242, INV_READ]).await;
    let fd = fd
        .and_then(|v| Some(i32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
        .unwrap_or(0);
    let data = c.function_call(LOREAD, &[fd, 100_000]).await;
    let _ = c.simple("COMMIT").await;
    data.unwrap_or_default()
}

async fn run_raw(port: u16, statements: &[&str], binary: bool) {
    let mut c = RawClient::connect(port).await;
    for s in statements {
        let alive = if binary && !s.contains(';') {
            c.extended_binary(s).await
        } else {
            c.simple(s).await
        };
        if !alive {
            c = RawClient::connect(port).await;
        }
    }
    // Notifications arrive on their own: give them a moment, then read what came.
    let _ = tokio::time::timeout(Duration::from_millis(300), c.simple("SELECT 1")).await;
}

struct Gateway {
    port: u16,
    tp: TestPipeline,
    _task: tokio::task::JoinHandle<()>,
}

async fn gateway() -> Gateway {
    gateway_as(false).await
}

/// The gateway, connecting upstream as a superuser when `superuser`.
async fn gateway_as(superuser: bool) -> Gateway {
    gateway_masking(superuser, &["email", "card_number", "phone"]).await
}

/// The gateway with column rules (partial strategy) for `columns`.
async fn gateway_masking(superuser: bool, columns: &[&str]) -> Gateway {
    let rules: Vec<(&str, gatehouse_masking::Strategy)> = columns
        .iter()
        .map(|c| (*c, gatehouse_masking::Strategy::Partial))
        .collect();
    gateway_rules(superuser, &rules).await
}

/// The gateway with these column rules (pattern, strategy).
async fn gateway_rules(
    superuser: bool,
    columns: &[(&str, gatehouse_masking::Strategy)],
) -> Gateway {
    let cluster = PgCluster::shared();
    let role = format!("gh_leaks_{}", std::process::id());
    let password = format!("{CANARY_PREFIX}leaks-{}", std::process::id());
    cluster.create_role(&role, &password);
    let db = cluster.create_database("pgleaks");
    db.psql(&format!(
        "GRANT ALL ON SCHEMA public TO \"{role}\"; ALTER DATABASE \"{}\" OWNER TO \"{role}\"",
        db.name
    ))
    .unwrap();
    db.psql(&format!("SET ROLE \"{role}\"; {SETUP}")).unwrap();
    if superuser {
        db.psql(&format!("ALTER ROLE \"{role}\" SUPERUSER"))
            .unwrap();
    }
    // The quickstart's rules: bare column names, which must match the catalog's qualified
    // sources.
    let mut pii = gatehouse_masking::ProfileConfig::default();
    for (pattern, strategy) in columns {
        pii.columns.push(gatehouse_masking::ColumnRule {
            pattern: (*pattern).into(),
            strategy: Some(strategy.clone()),
        });
    }
    let mut masking = gatehouse_masking::MaskingConfig::default();
    masking.profiles.insert("pii".into(), pii);
    masking.default_profile = Some("pii".into());
    let masker = gatehouse_masking::MaskingEngine::new(&masking).unwrap();
    let auth = StaticAuthenticator::new().with_token(TOKEN, agent());
    let tp = TestPipeline::new(auth, FnPolicy::allow_all(), masker, &[password.as_str()]);
    let upstream = UpstreamConfig {
        address: UpstreamAddress::Tcp {
            host: "127.0.0.1".into(),
            port: cluster.port(),
        },
        user: role,
        database: db.name.clone(),
        password: Some(Secret::new(password)),
        tls: crate::common::upstream_tls(cluster),
        connect_timeout: Duration::from_secs(10),
    };
    let mut config = PgProxyConfig::new([PgTarget {
        target: gatehouse_core::Target::new("app", gatehouse_core::Protocol::Postgres),
        upstream,
    }]);
    config.allow_plaintext_password = true;
    // Served here so that its results' masking is what the corpus tests (it is off by default).
    config.allow_function_call = true;
    let proxy = PgProxy::new(config, tp.pipeline.clone());
    let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let _ = proxy.serve(listener).await;
        drop(db);
    });
    Gateway {
        port,
        tp,
        _task: task,
    }
}

/// The whole corpus, family by family; each family's leaks are reported by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pii_reaches_a_client_or_the_audit_log() {
    gatehouse_testkit::within(Duration::from_secs(240), async {
        let gw = gateway().await;
        let (port, captured) = tap(gw.port).await;
        // The scanner itself finds what it is meant to find.
        assert!(!leaks_in(b"gro.elpmaxe-proc@1tsetkael.qz").is_empty());
        assert!(!leaks_in(b"z\x00q.l-e-a-k-t-e-s-t-1@corp-example.org").is_empty());
        assert!(
            !leaks_in(
                b"7a712e6c65616b7465737431406"
                    .iter()
                    .chain(b"36f72702d6578616d706c652e6f7267")
                    .copied()
                    .collect::<Vec<u8>>()
                    .as_slice()
            )
            .is_empty()
        );
        assert!(!leaks_in(b"x enEubGVha3Rlc3QxQGNvcnAtZXhhbXBsZS5vcmc= y").is_empty());
        let mut attempts = 0usize;
        let mut report = Vec::new();
        let families: [(&str, &[&str], bool); 8] = [
            ("lineage", LINEAGE, true),
            ("statement text", STATEMENT_TEXT, true),
            ("views", VIEWS, true),
            ("large objects", LARGE_OBJECTS, true),
            ("detectors in binary values", DETECTORS, true),
            ("error and notice fields", ERRORS, false),
            ("notifications and parameter status", SIDE_CHANNELS, false),
            ("untraced", UNTRACED, false),
        ];
        for (family, statements, binary) in families {
            let from = captured.lock().unwrap().len();
            let p = port;
            let list: Vec<&'static str> = statements.to_vec();
            let psql_out = tokio::task::spawn_blocking(move || run_psql(p, &list))
                .await
                .unwrap();
            attempts += statements.len();
            let driver = run_binary_driver(port, statements).await;
            attempts += statements.len();
            run_raw(port, statements, false).await;
            attempts += statements.len();
            if binary {
                run_raw(port, statements, true).await;
                attempts += statements.len();
            }
            // What the clients printed, without the statements they echo themselves (psql's
            // `LINE 1:` context, the driver's outcome lines): those are the client's own text.
            let mut extra = Vec::new();
            if family != "statement text" {
                extra.extend_from_slice(&psql_out);
            }
            for (line, s) in driver.iter().zip(statements) {
                extra.extend_from_slice(line.strip_prefix(s).unwrap_or(line).as_bytes());
                extra.push(b'\n');
            }
            if std::env::var_os("LEAKS_DEBUG").is_some() {
                eprintln!("== {family}\n{}", String::from_utf8_lossy(&psql_out));
                for line in &driver {
                    eprintln!("{line}");
                }
            }
            let found = scan(&captured, from, &extra);
            if !found.is_empty() {
                report.push(format!("{family}: {found:?}"));
            }
        }
        // Bound parameter values (extended protocol; tokio-postgres sends them in binary).
        {
            let (client, conn) = tokio_postgres::connect(
                &format!(
                    "host=127.0.0.1 port={port} user=agent dbname=app password={TOKEN} connect_timeout=10"
                ),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            for (sql, value) in [
                ("SELECT id FROM customers WHERE email = $1", "zq.leaktest1@corp-example.org"),
                ("SELECT id FROM customers WHERE card_number = $1", "5555555555554444"),
                ("SELECT id FROM customers WHERE phone = $1::text", "+1 202 555 0178"),
                ("SELECT $1::text IS NULL", "wq.notetest3@corp-example.org"),
            ] {
                let rows = client.query(sql, &[&value]).await;
                assert!(rows.is_ok(), "{sql}: {rows:?}");
                attempts += 1;
            }
            let rows = client
                .query(
                    "SELECT id FROM customers WHERE email = $1",
                    &[&"yx.leaktest2@corp-example.org".to_string()],
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), 1, "the parameter reached PostgreSQL unmasked");
        }
        // Large objects through the fastpath interface: a raw FunctionCall client, and psql's
        // \lo_export (libpq's lo_open/loread) into a client-side file.
        let from = captured.lock().unwrap().len();
        let mut extra = run_fastpath(port).await;
        attempts += 1;
        let exported = std::env::temp_dir().join(format!("gh-leaks-lo-{}", std::process::id()));
        let _ = std::fs::remove_file(&exported);
        let script = format!("\\lo_export 424242 {}\nSELECT 1", exported.display());
        let psql_out = tokio::task::spawn_blocking(move || run_psql(port, &[script.as_str()]))
            .await
            .unwrap();
        attempts += 1;
        extra.extend_from_slice(&psql_out);
        if let Ok(file) = std::fs::read(&exported) {
            extra.extend_from_slice(&file);
        }
        let _ = std::fs::remove_file(&exported);
        let found = scan(&captured, from, &extra);
        if !found.is_empty() {
            report.push(format!("large objects through the fastpath: {found:?}"));
        }
        // The audit log and the session recordings (rows, statements, results) of every family.
        let found = leaks_in(gw.tp.recorder.dump().as_bytes());
        if !found.is_empty() {
            report.push(format!("audit log and recordings: {found:?}"));
        }
        assert!(attempts >= 100, "corpus too small: {attempts}");
        assert!(report.is_empty(), "leaks:\n{}", report.join("\n"));
        // The rules still let ordinary data through.
        let client = {
            let (c, conn) = tokio_postgres::connect(
                &format!(
                    "host=127.0.0.1 port={} user=agent dbname=app password={TOKEN}",
                    gw.port
                ),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            c
        };
        let row = client
            .query_one("SELECT label, ARRAY[label], id FROM plain", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "harmless");
        assert_eq!(row.get::<_, Vec<String>>(1), vec!["harmless".to_string()]);
        // Counting rows reveals no value; filtering on a masked column is the documented open
        // channel (the rows come back, their masked columns masked).
        let row = client
            .query_one(
                "SELECT count(*), max(id) FROM customers WHERE email LIKE 'zq%'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<i64>>(0), Some(1));
        assert_eq!(row.get::<_, Option<i32>>(1), Some(1));
        let err = client
            .simple_query("SELECT CAST(label AS int) FROM plain")
            .await
            .unwrap_err();
        assert!(
            err.as_db_error().unwrap().message().contains("harmless"),
            "errors about unmasked data keep their text: {err}"
        );
    })
    .await;
}

/// Runs `sql` in text (simple query) and binary (prepared) format; the first row's values as
/// text (binary values decoded by type: text, int8, bool).
async fn first_row(client: &tokio_postgres::Client, sql: &str) -> [Vec<Option<String>>; 2] {
    let text = match client.simple_query(sql).await {
        Ok(msgs) => msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).map(str::to_string))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .unwrap_or_default(),
        Err(e) => vec![Some(format!("error: {e}"))],
    };
    let binary = match client.query(sql, &[]).await {
        Ok(rows) => match rows.first() {
            Some(row) => (0..row.len())
                .map(|i| {
                    let ty = row.columns()[i].type_().clone();
                    if ty == tokio_postgres::types::Type::INT8 {
                        row.get::<_, Option<i64>>(i).map(|v| v.to_string())
                    } else if ty == tokio_postgres::types::Type::BOOL {
                        row.get::<_, Option<bool>>(i)
                            .map(|v| if v { "t" } else { "f" }.to_string())
                    } else if ty == tokio_postgres::types::Type::INT4 {
                        row.get::<_, Option<i32>>(i).map(|v| v.to_string())
                    } else {
                        row.get::<_, Option<String>>(i)
                    }
                })
                .collect(),
            None => Vec::new(),
        },
        Err(e) => vec![Some(format!("error: {e}"))],
    };
    [text, binary]
}

/// Views under a partial strategy: a view column that is a plain column keeps the rule's
/// partial form; one computed by the view (`reverse(card_number)`, `card_number || 'x'`, through
/// nested views, subqueries, set operations, materialized views) is masked whole — a partial form
/// of the reversed card would show its first four digits. And the reviewed list of derivations
/// that reveal nothing (`count(col)`, `col IS [NOT] NULL`) passes unmasked while everything
/// else derived from a masked column stays masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_expressions_are_masked_whole_and_the_reveals_nothing_list_passes() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let gw = gateway().await;
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=agent dbname=app password={TOKEN} connect_timeout=10",
                gw.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for sql in [
            "SELECT card_number FROM v_cards WHERE id = 1",
            "SELECT card FROM v_nested WHERE id = 1",
            "SELECT card_number FROM m_cards WHERE id = 1",
        ] {
            for row in first_row(&client, sql).await {
                assert_eq!(
                    row,
                    vec![Some("************1111".to_string())],
                    "{sql}: a plain view column keeps its rule's partial form"
                );
            }
        }
        // A plain view column of an unmasked base column follows that column, not every
        // column the view reads.
        for sql in [
            "SELECT id FROM v_cards WHERE id = 1",
            "SELECT id::text FROM v_cards WHERE id = 1",
            "SELECT id FROM v_nested WHERE id = 1",
            "SELECT id FROM v_union WHERE id = 1 LIMIT 1",
            "SELECT id FROM m_cards WHERE id = 1",
        ] {
            for row in first_row(&client, sql).await {
                assert_eq!(row, vec![Some("1".to_string())], "{sql}");
            }
        }
        for sql in [
            "SELECT cx, rc, ue FROM v_cards WHERE id = 1",
            "SELECT cx, rc2 FROM v_nested WHERE id = 1",
            "SELECT k FROM v_sub WHERE id = 1",
            "SELECT u FROM v_union WHERE id = 1",
            "SELECT rc FROM m_cards WHERE id = 1",
        ] {
            for row in first_row(&client, sql).await {
                assert!(!row.is_empty(), "{sql}: no row");
                for v in row.iter().flatten() {
                    assert!(
                        !v.bytes().any(|b| b.is_ascii_alphanumeric()),
                        "{sql}: a view's expression column is masked whole, got {v:?}"
                    );
                }
            }
        }
        let s = |v: &str| Some(v.to_string());
        for (sql, want) in [
            (
                "SELECT count(email), count(ALL card_number), pg_catalog.count(c.phone) \
                 FROM customers c",
                vec![s("2"), s("2"), s("2")],
            ),
            (
                "SELECT email IS NULL, card_number IS NOT NULL, (c.phone) IS NULL \
                 FROM customers c WHERE id = 1",
                vec![s("f"), s("t"), s("f")],
            ),
            (
                "SELECT count(email) FROM v_cards",
                vec![s("2")],
            ),
        ] {
            for row in first_row(&client, sql).await {
                assert_eq!(row, want, "{sql}: on the reveals-nothing list");
            }
        }
        // Everything else derived from a masked column is masked whole (NULL for a number).
        for sql in [
            "SELECT count(DISTINCT email) FROM customers",
            "SELECT length(email) FROM customers WHERE id = 1",
            "SELECT octet_length(card_number) FROM customers WHERE id = 1",
            "SELECT count(email) FILTER (WHERE email LIKE 'zq%') FROM customers",
            "SELECT count(email) OVER (ORDER BY email) FROM customers WHERE id = 1",
            "SELECT count(NULLIF(email, 'zq.leaktest1@corp-example.org')) FROM customers",
            "SELECT count(CASE WHEN email LIKE 'zq%' THEN 1 END) FROM customers",
            "WITH x AS (SELECT CASE WHEN email LIKE 'zq%' THEN 1 END AS e FROM customers) \
             SELECT count(e) FROM x",
            "SELECT count(e) FROM (SELECT NULLIF(card_number, '4111111111111111') e FROM customers) s",
            "SELECT reverse(email) IS NULL FROM customers WHERE id = 1",
            "SELECT NULLIF(email, 'zq.leaktest1@corp-example.org') IS NULL FROM customers WHERE id = 1",
            "SELECT count(customers) FROM customers",
            "SELECT count(cx) FROM v_cards",
            "SELECT count(email || '') FROM customers",
        ] {
            for row in first_row(&client, sql).await {
                assert_eq!(row, vec![None], "{sql}: not on the reveals-nothing list");
            }
        }
    })
    .await;
}

/// Large-object pages (`pg_largeobject`, readable by a superuser) hold whatever a session
/// wrote into them (copying a masked column into one through the gateway is refused, see
/// `masked_values_cannot_be_stored_through_builtins`; another client may have): with a gateway
/// connected as a superuser, their data is withheld while any column is masked, read directly
/// or through an expression, in text and binary format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_pages_are_withheld_from_a_superuser_gateway() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let gw = gateway_as(true).await;
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=agent dbname=app password={TOKEN} connect_timeout=10",
                gw.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        client
            .simple_query(
                "SELECT lo_from_bytea(515151, \
                 convert_to('gro.elpmaxe-proc@1tsetkael.qz,gro.elpmaxe-proc@2tsetkael.xy', 'UTF8'))",
            )
            .await
            .unwrap();
        for sql in [
            "SELECT encode(data, 'escape') FROM pg_largeobject WHERE loid = 515151",
            "SELECT convert_from(data, 'UTF8') FROM pg_largeobject WHERE loid = 515151",
            "SELECT data::text FROM pg_largeobject WHERE loid = 515151",
        ] {
            for row in first_row(&client, sql).await {
                assert_eq!(row, vec![None], "{sql}: large-object pages are withheld");
            }
        }
        for sql in [
            "SELECT data FROM pg_largeobject WHERE loid = 515151",
            "SELECT p.data FROM pg_catalog.pg_largeobject p WHERE loid = 515151",
        ] {
            let text = client.simple_query(sql).await.unwrap();
            let value = text.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            });
            assert_eq!(value, Some(None), "{sql} (text)");
            let rows = client.query(sql, &[]).await.unwrap();
            assert_eq!(rows.len(), 1, "{sql}");
            assert_eq!(rows[0].get::<_, Option<Vec<u8>>>(0), None, "{sql} (binary)");
        }
        // Ordinary columns still pass for a superuser gateway.
        let row = client
            .query_one("SELECT label FROM plain", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "harmless");
    })
    .await;
}

/// The names of the test data: masked by a column rule only (no detector recognises a name).
const NAMES: &[&str] = &["zebulon", "quixote", "yolanda", "xerxes"];

/// The names (lowercased, also reversed) found in `bytes`.
fn names_in(bytes: &[u8]) -> Vec<&'static str> {
    let hay = bytes.to_ascii_lowercase();
    NAMES
        .iter()
        .filter(|n| {
            let rev: Vec<u8> = n.bytes().rev().collect();
            memchr::memmem::find(&hay, n.as_bytes()).is_some()
                || memchr::memmem::find(&hay, &rev).is_some()
        })
        .copied()
        .collect()
}

async fn connect_driver(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={port} user=agent dbname=app password={TOKEN} connect_timeout=10"
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

/// Every value of every row, as text: simple query (text format) and prepared (binary format;
/// text columns decoded, other types skipped).
async fn all_values(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    match client.simple_query(sql).await {
        Ok(msgs) => {
            for m in msgs {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    out.extend((0..r.len()).filter_map(|i| r.get(i).map(str::to_string)));
                }
            }
        }
        Err(e) => out.push(format!("error: {e}")),
    }
    match client.query(sql, &[]).await {
        Ok(rows) => {
            for row in rows {
                for (i, c) in row.columns().iter().enumerate() {
                    if *c.type_() == tokio_postgres::types::Type::TEXT {
                        out.extend(row.get::<_, Option<String>>(i));
                    }
                }
            }
        }
        Err(e) => out.push(format!("error: {e}")),
    }
    out
}

/// Another session's statement text, as `pg_stat_activity` shows it (its last statement stays
/// there while it is idle), carries the literals it was written with: a name compared with the
/// masked `name` column, which no detector recognises. Read by a second session through the
/// gateway — the column itself, through a join, a view, expressions, a whole row, the
/// functions behind the view — in text and binary format, no byte carries the name; the column
/// itself still shows the statement, its literals masked. The session's own cursor
/// (`pg_cursors.statement`) likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sessions_statements_come_back_with_their_literals_masked() {
    gatehouse_testkit::within(Duration::from_secs(180), async {
        let gw = gateway_masking(false, &["email", "card_number", "phone", "name"]).await;
        let (port, captured) = tap(gw.port).await;
        let setup = connect_driver(port).await;
        // Session A: simple query, a raw name and a comment; then it stays idle.
        let a = connect_driver(port).await;
        a.simple_query(
            "SELECT id FROM customers WHERE name = 'Zebulon Quixote' /* Yolanda Xerxes */",
        )
        .await
        .unwrap();
        // Session A2 through psql's extended-protocol-free path would show the same; a third
        // session prepares a statement with the name inline (extended protocol).
        let a2 = connect_driver(port).await;
        a2.query("SELECT id FROM customers WHERE name IN ('Yolanda Xerxes')", &[])
            .await
            .unwrap();
        let b = connect_driver(port).await;
        let from = captured.lock().unwrap().len();
        let mut seen = Vec::new();
        // The column itself: the statement, its literal masked.
        let direct = all_values(
            &b,
            "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
        )
        .await;
        assert!(
            direct
                .iter()
                .filter(|q| q.contains("FROM customers WHERE name = '[masked]' /*[masked]*/"))
                .count()
                == 2,
            "session A's statement is shown masked in text and binary format: {direct:?}"
        );
        assert!(
            direct
                .iter()
                .any(|q| q.contains("FROM customers WHERE name IN ('[masked]')")),
            "{direct:?}"
        );
        seen.extend(direct);
        for sql in [
            "SELECT a.query, a.pid FROM pg_catalog.pg_stat_activity a JOIN pg_database d ON d.oid = a.datid",
            "SELECT * FROM pg_stat_activity",
            "SELECT substr(query, 1, 200) FROM pg_stat_activity",
            "SELECT query || '' FROM pg_stat_activity",
            "SELECT reverse(query) FROM pg_stat_activity",
            "SELECT string_agg(query, ',') FROM pg_stat_activity",
            "SELECT row_to_json(a) FROM pg_stat_activity a",
            "SELECT a FROM pg_stat_activity a",
            "SELECT q FROM v_activity",
            "WITH x AS (SELECT query FROM pg_stat_activity) SELECT query FROM x",
            "SELECT query FROM pg_stat_get_activity(NULL)",
            "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
            "SELECT statement FROM pg_prepared_statements",
            // A whole-row reference carries its table's OID (attribute 0): its lineage, not
            // the catalog, says what it holds.
            "SELECT c FROM customers c",
            "SELECT customers FROM customers",
        ] {
            let values = all_values(&b, sql).await;
            seen.extend(values);
        }
        // This session's own cursor, as pg_cursors shows it (text format only: a prepared
        // statement holds one command).
        let cursor = all_values(
            &b,
            "BEGIN; DECLARE cur CURSOR FOR SELECT id FROM customers WHERE name = 'Zebulon Quixote'; \
             SELECT statement FROM pg_cursors; COMMIT",
        )
        .await;
        assert!(
            cursor
                .iter()
                .any(|v| v.contains("DECLARE cur CURSOR FOR SELECT id FROM customers WHERE name = '[masked]'")),
            "{cursor:?}"
        );
        seen.extend(cursor);
        // COPY out of the same columns (psql: text rows are not masked per column).
        let copies: Vec<&'static str> = vec![
            "COPY (SELECT query FROM pg_stat_activity) TO STDOUT",
            "COPY (SELECT a.query, a.pid FROM pg_stat_activity a) TO STDOUT WITH (FORMAT csv)",
            "COPY (SELECT substr(query, 1, 500) FROM pg_stat_activity) TO STDOUT",
            "COPY (SELECT q FROM v_activity) TO STDOUT",
            "COPY (SELECT c FROM customers c) TO STDOUT",
        ];
        let psql_out = tokio::task::spawn_blocking(move || run_psql(port, &copies))
            .await
            .unwrap();
        let printed = String::from_utf8_lossy(&psql_out).into_owned();
        assert_eq!(
            printed.matches("masked-column-copy").count(),
            5,
            "each COPY is refused: {printed}"
        );
        seen.push(printed);
        // Nor can the text be copied into a table of its own and read back from there.
        for sql in [
            "CREATE TABLE act_copy AS SELECT query FROM pg_stat_activity",
            "INSERT INTO plain SELECT 99, query FROM pg_stat_activity",
            "SELECT query INTO act_copy2 FROM pg_stat_activity",
            "CREATE VIEW act_view AS SELECT query FROM pg_stat_activity",
        ] {
            let err = b.simple_query(sql).await.unwrap_err();
            let message = err.as_db_error().map(|e| e.message().to_string());
            assert!(
                message.as_deref().is_some_and(|m| m.contains("masked-column-copy")),
                "{sql}: {err:?}"
            );
        }
        let mut wire = Vec::new();
        for conn in captured.lock().unwrap().iter().skip(from) {
            wire.extend_from_slice(&conn.lock().unwrap());
        }
        let leaked: Vec<&str> = names_in(&wire)
            .into_iter()
            .chain(names_in(seen.join("\n").as_bytes()))
            .collect();
        assert!(
            leaked.is_empty(),
            "another session's literal reached the client: {leaked:?}\n{seen:?}"
        );
        drop((a, a2, setup));
    })
    .await;
}

/// A setting is a store no column rule covers: `SHOW`, `current_setting`, `pg_settings` and
/// `pg_stat_activity.application_name` read it back. Writing a masked column's values into one
/// (`set_config`) is refused as a masked-column copy, and no read of the settings brings a name
/// back; a setting written from unmasked columns still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_cannot_be_stored_in_settings() {
    gatehouse_testkit::within(Duration::from_secs(180), async {
        let gw = gateway_masking(false, &["email", "card_number", "phone", "name"]).await;
        let (port, captured) = tap(gw.port).await;
        let c = connect_driver(port).await;
        for sql in [
            "SELECT set_config('application_name', (SELECT string_agg(name, ',') FROM customers), false)",
            "SELECT set_config('my.x', (SELECT string_agg(name, ',') FROM customers), false)",
            "SELECT set_config('my.y', name, false) FROM customers",
            "SELECT pg_catalog.set_config('my.z', upper(c.name), false) FROM customers c",
        ] {
            let err = c.simple_query(sql).await.unwrap_err();
            let message = err.as_db_error().map(|e| e.message().to_string());
            assert!(
                message.as_deref().is_some_and(|m| m.contains("masked-column-copy")),
                "{sql}: {err:?}"
            );
        }
        // Settings still work: constants, and tables without masked columns. (Reading a table
        // with a masked column into a setting is refused whatever columns it names: the values
        // of a `set_config` are not traced column by column.)
        let stored = c
            .simple_query(
                "SELECT set_config('my.note', 'hello', false), \
                 set_config('my.ids', (SELECT string_agg(id::text, ',') FROM plain), false)",
            )
            .await;
        assert!(
            stored.is_ok(),
            "{:?}",
            stored.err().map(|e| e.as_db_error().map(|d| d.message().to_string()))
        );
        let mut seen = Vec::new();
        for sql in [
            "SHOW application_name",
            "SHOW my.x",
            "SELECT current_setting('my.y', true), current_setting('my.z', true)",
            "SELECT setting FROM pg_settings WHERE name = 'application_name'",
            "SELECT application_name FROM pg_stat_activity",
        ] {
            seen.extend(all_values(&c, sql).await);
        }
        let mut wire = Vec::new();
        for conn in captured.lock().unwrap().iter() {
            wire.extend_from_slice(&conn.lock().unwrap());
        }
        let leaked: Vec<&str> = names_in(&wire)
            .into_iter()
            .chain(names_in(seen.join("\n").as_bytes()))
            .collect();
        assert!(leaked.is_empty(), "a masked name came back through a setting: {leaked:?} {seen:?}");
    })
    .await;
}

/// Asserts the gateway refuses `sql` as a masked-column copy.
async fn assert_refused_as_copy(c: &tokio_postgres::Client, sql: &str) {
    let err = c.simple_query(sql).await.unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("masked-column-copy")),
        "{sql}: {err:?}"
    );
}

/// The first value of the first row of `sql`, as text.
async fn first_value(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
}

/// Built-ins that store an argument where it can be read back later (a sequence's value, an
/// advisory lock's key in `pg_locks`, a notification's payload, a large object, the random
/// seed, a logical decoding message) are stores no column rule covers, as settings are: a
/// statement that writes a masked column's values into one is refused as a masked-column copy,
/// wherever the call stands (result list, `WHERE`, a subquery argument), and nothing was stored
/// when it is read back. The same built-ins with constants still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_cannot_be_stored_through_builtins() {
    gatehouse_testkit::within(Duration::from_secs(180), async {
        let gw = gateway_masking(false, &["email", "card_number", "phone", "name"]).await;
        let c = connect_driver(gw.port).await;
        c.simple_query("CREATE SEQUENCE sx").await.unwrap();
        for sql in [
            // The attacker's encoding: three bytes of the value as the sequence's number.
            "SELECT setval('sx', ('x'||rpad(encode(convert_to(substr(name,1,3),'UTF8'),'hex'),6,'0'))::bit(24)::int + 1) FROM customers WHERE id=1",
            "SELECT setval('sx', ascii(substr(email, 1, 1))) FROM customers WHERE id = 1",
            "SELECT pg_catalog.setval('sx', (SELECT ascii(name) FROM customers WHERE id = 1))",
            "SELECT 1 FROM customers WHERE setval('sx', ascii(name)) > 0",
            "SELECT setseed(ascii(name) / 256.0) FROM customers WHERE id = 1",
            "SELECT pg_advisory_lock(ascii(name)) FROM customers WHERE id = 1",
            "SELECT pg_try_advisory_lock(ascii(name), 1) FROM customers",
            "SELECT pg_advisory_xact_lock_shared(ascii(card_number)::bigint) FROM customers",
            "SELECT pg_notify('leak', name) FROM customers",
            "SELECT lo_from_bytea(0, convert_to(name, 'UTF8')) FROM customers",
            "SELECT lo_create(ascii(name)) FROM customers WHERE id = 2",
            "SELECT pg_logical_emit_message(false, 'p', name) FROM customers",
            "SELECT pg_advisory_lock(ascii(substr(email, 1, 1))) FROM v_customers",
            // A function that reads the table itself, named nowhere in the text.
            "SELECT setval('sx', ascii(customer_dump()))",
            "SELECT pg_notify('leak', public.customer_dump())",
            "SELECT set_config('my.d', customer_dump(), false)",
        ] {
            assert_refused_as_copy(&c, sql).await;
        }
        // Nothing was stored.
        assert_eq!(
            first_value(&c, "SELECT last_value::text || ' ' || is_called::text FROM sx").await,
            Some("1 false".into())
        );
        assert_eq!(
            first_value(&c, "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").await,
            Some("0".into())
        );
        assert_eq!(
            first_value(&c, "SELECT count(*)::text FROM pg_largeobject_metadata").await,
            Some("0".into())
        );
        // The same built-ins with constants, or over tables without masked columns, work.
        let stored = c
            .simple_query(
                "SELECT setval('sx', 42), pg_advisory_lock(7), pg_notify('ok', 'hello'), \
                 setval('sx', (SELECT max(id) + 41 FROM plain))",
            )
            .await;
        assert!(
            stored.is_ok(),
            "{:?}",
            stored.err().map(|e| e.as_db_error().map(|d| d.message().to_string()))
        );
        assert_eq!(
            first_value(&c, "SELECT last_value::text FROM sx").await,
            Some("42".into())
        );
    })
    .await;
}

/// `MERGE` writes values as `INSERT` and `UPDATE` do: one whose `INSERT … VALUES` or `UPDATE
/// SET` takes a masked column's values (through its source query, a subquery in `VALUES`) is
/// refused as a masked-column copy, into the table it reads as into another, and so are
/// `INSERT … VALUES` and `UPDATE … SET` with a subquery over a masked column. Nothing reaches
/// an unmasked column; a `MERGE` of constants or of unmasked tables still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_cannot_copy_masked_columns() {
    gatehouse_testkit::within(Duration::from_secs(180), async {
        let gw = gateway_masking(false, &["email", "card_number", "phone", "name"]).await;
        let c = connect_driver(gw.port).await;
        for sql in [
            "MERGE INTO customers USING (SELECT id + 100 AS id, name FROM customers) s ON false \
             WHEN NOT MATCHED THEN INSERT (id, name, card_number, phone, note) \
             VALUES (s.id, 'x', 'c', 'p', reverse(s.name))",
            "MERGE INTO customers USING (SELECT id + 200 AS id, card_number FROM customers) s \
             ON false WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, reverse(s.card_number))",
            "MERGE INTO customers USING (SELECT 1) s ON false WHEN NOT MATCHED THEN \
             INSERT (id, note) VALUES (900, (SELECT reverse(name) FROM customers WHERE id = 2))",
            "MERGE INTO customers t USING customers s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET note = reverse(s.name)",
            "MERGE INTO plain p USING customers s ON false \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id + 10, reverse(s.name))",
            "INSERT INTO customers (id, note) VALUES (901, (SELECT reverse(name) FROM customers WHERE id = 1))",
            "INSERT INTO customers VALUES (902, (SELECT reverse(name) FROM customers WHERE id = 1))",
            "INSERT INTO plain VALUES (5, (SELECT reverse(name) FROM customers WHERE id = 1))",
            "UPDATE customers SET note = (SELECT reverse(name) FROM customers WHERE id = 2) WHERE id = 1",
            "UPDATE customers SET name = (SELECT reverse(email) FROM customers WHERE id = 2) WHERE id = 1",
        ] {
            assert_refused_as_copy(&c, sql).await;
        }
        assert_eq!(
            first_value(&c, "SELECT count(*)::text FROM customers").await,
            Some("2".into())
        );
        let mut seen = Vec::new();
        for sql in ["SELECT note FROM customers", "SELECT label FROM plain"] {
            seen.extend(all_values(&c, sql).await);
        }
        let leaked = names_in(seen.join("\n").as_bytes());
        assert!(leaked.is_empty(), "a masked name was copied: {leaked:?} {seen:?}");
        // A MERGE of constants, or between tables without masked columns, works.
        for sql in [
            "MERGE INTO customers t USING plain p ON t.id = p.id WHEN MATCHED THEN UPDATE SET note = 'n'",
            "MERGE INTO plain p USING (SELECT 2 AS id) s ON p.id = s.id \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'merged')",
        ] {
            let done = c.simple_query(sql).await;
            assert!(
                done.is_ok(),
                "{sql}: {:?}",
                done.err().map(|e| e.as_db_error().map(|d| d.message().to_string()))
            );
        }
        assert_eq!(
            first_value(&c, "SELECT label FROM plain WHERE id = 2").await,
            Some("merged".into())
        );
    })
    .await;
}

/// A trigger on a table with masked columns can copy them (its function writes `NEW` columns):
/// creating one is a masked-column copy, unless it runs a built-in trigger function that
/// copies no column (`suppress_redundant_updates_trigger`) and calls nothing else but
/// side-effect-free built-ins. `tsvector_update_trigger` (fills a column from others), a `WHEN`
/// condition that stores a masked value, and a function of that name defined outside
/// `pg_catalog` are still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_that_copies_no_column_is_not_a_masked_copy() {
    gatehouse_testkit::within(Duration::from_secs(180), async {
        let gw = gateway_masking(false, &["email", "card_number", "phone", "name"]).await;
        let c = connect_driver(gw.port).await;
        for sql in [
            "CREATE TRIGGER t_sup BEFORE UPDATE ON customers FOR EACH ROW \
             EXECUTE FUNCTION suppress_redundant_updates_trigger()",
            "CREATE TRIGGER t_sup2 BEFORE UPDATE ON customers FOR EACH ROW \
             WHEN (OLD.id <> 0) EXECUTE FUNCTION pg_catalog.suppress_redundant_updates_trigger()",
        ] {
            let done = c.simple_query(sql).await;
            assert!(
                done.is_ok(),
                "{sql}: {:?}",
                done.err()
                    .map(|e| e.as_db_error().map(|d| d.message().to_string()))
            );
        }
        for sql in [
            "CREATE TRIGGER t_tsv BEFORE UPDATE ON customers FOR EACH ROW \
             EXECUTE FUNCTION tsvector_update_trigger(note, 'pg_catalog.simple', name)",
            "CREATE TRIGGER t_when BEFORE UPDATE ON customers FOR EACH ROW \
             WHEN (pg_try_advisory_lock(ascii(NEW.name))) \
             EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        ] {
            assert_refused_as_copy(&c, sql).await;
        }
        c.simple_query(
            "CREATE FUNCTION public.suppress_redundant_updates_trigger() RETURNS trigger \
             LANGUAGE plpgsql AS $$BEGIN NEW.note := reverse(NEW.name); RETURN NEW; END$$",
        )
        .await
        .unwrap();
        c.simple_query("SET search_path = public, pg_catalog")
            .await
            .unwrap();
        assert_refused_as_copy(
            &c,
            "CREATE TRIGGER t_shadow BEFORE UPDATE ON customers FOR EACH ROW \
             EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        )
        .await;
        assert_eq!(
            first_value(
                &c,
                "SELECT string_agg(tgname::text, ',' ORDER BY tgname) FROM pg_catalog.pg_trigger \
                 WHERE tgrelid = 'public.customers'::pg_catalog.regclass"
            )
            .await,
            Some("t_sup,t_sup2".into())
        );
    })
    .await;
}

/// Literals that only a column rule protects (a name compared with, or written into, the
/// masked `name` column: no detector recognises it) are recorded masked in the audit log and
/// the session recordings, whatever the client and protocol: every constant of a statement is
/// recorded as a placeholder under a profile with column rules, and every bound parameter as
/// `[masked]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_of_masked_columns_are_recorded_masked() {
    gatehouse_testkit::within(Duration::from_secs(180), async {
        let gw = gateway_masking(false, &["email", "card_number", "phone", "name"]).await;
        let statements: &[&str] = &[
            "SELECT id FROM customers WHERE name = 'Zebulon Quixote'",
            "SELECT id FROM customers WHERE name IN ('Yolanda Xerxes', 'nobody')",
            "SELECT id FROM customers c WHERE c.name LIKE E'Zebulon%' /* Yolanda Xerxes */",
            "INSERT INTO customers (id, name) VALUES (90, 'Zebulon Quixote the Second')",
            "UPDATE customers SET name = $n$Yolanda Xerxes$n$ WHERE id = 90",
            "DELETE FROM customers WHERE name = 'Yolanda Xerxes' AND id = 90",
            "SELECT id FROM v_customers WHERE id IN (SELECT id FROM customers WHERE name = 'Zebulon Quixote')",
            // EXECUTE's arguments are recorded as the execution's parameters.
            "PREPARE pn(text) AS SELECT id FROM customers WHERE name = $1; \
             EXECUTE pn('Yolanda Xerxes'); DEALLOCATE pn",
        ];
        let port = gw.port;
        let list = statements.to_vec();
        let psql_out = tokio::task::spawn_blocking(move || run_psql(port, &list))
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&psql_out).contains("ERROR"),
            "{}",
            String::from_utf8_lossy(&psql_out)
        );
        run_binary_driver(gw.port, statements).await;
        run_raw(gw.port, statements, true).await;
        // Bound parameters (extended protocol, binary and text).
        let client = connect_driver(gw.port).await;
        let rows = client
            .query(
                "SELECT id FROM customers WHERE name = $1",
                &[&"Zebulon Quixote"],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "the parameter reached PostgreSQL unmasked");
        client
            .query(
                "SELECT id FROM customers WHERE name = $1::text OR id = $2",
                &[&"Yolanda Xerxes", &7i32],
            )
            .await
            .unwrap();
        // A statement prepared in SQL, run with a protocol Bind: each execution is decided
        // (and recorded) at Bind with its bound values (text format here), whatever the
        // execution's outcome.
        let mut raw = RawClient::connect(gw.port).await;
        assert!(
            raw.simple("PREPARE pb(text) AS SELECT id FROM customers WHERE name = $1")
                .await
        );
        let mut bind = b"\0pb\0".to_vec();
        bind.extend_from_slice(&[0, 0, 0, 1]);
        let value = b"Zebulon Quixote";
        bind.extend_from_slice(&(value.len() as i32).to_be_bytes());
        bind.extend_from_slice(value);
        bind.extend_from_slice(&[0, 0]);
        raw.send(b'B', &bind).await;
        raw.send(b'D', b"P\0").await;
        raw.send(b'E', &[0, 0, 0, 0, 0]).await;
        raw.send(b'S', &[]).await;
        let _ = raw.until_ready().await;
        // A refused-by-the-gateway or unreadable statement is recorded too.
        let _ = client
            .simple_query("SELECT 'Zebulon Quixote' $$ unterminated")
            .await;
        let dump = gw.tp.recorder.dump();
        let leaked = names_in(dump.as_bytes());
        assert!(leaked.is_empty(), "recorded raw: {leaked:?}");
        // The statements are still recorded, their structure readable.
        assert!(
            dump.contains("SELECT id FROM customers WHERE name = '[masked]'"),
            "{dump}"
        );
        assert!(
            dump.contains("UPDATE customers SET name = '[masked]' WHERE id = [masked]"),
            "{dump}"
        );
        assert!(
            dump.contains("SELECT id FROM customers WHERE name = $1::text OR id = $2"),
            "{dump}"
        );
        assert!(dump.contains(r#""parameters":["[masked]"]"#), "{dump}");
    })
    .await;
}

/// Transformations of the free-text `note` column, whose PII (a card number, an e-mail address)
/// only the detectors recognise in its plain form.
const NOTE_DERIVED: &[&str] = &[
    "SELECT reverse(note) FROM customers",
    "SELECT translate(note, '0123456789', 'abcdefghij') FROM customers",
    "SELECT translate(note, '@.', '  ') FROM customers",
    "SELECT encode(convert_to(note, 'UTF8'), 'base64') FROM customers",
    "SELECT encode(convert_to(note, 'UTF8'), 'hex') FROM customers",
    "SELECT encode(note::bytea, 'escape') FROM customers",
    "SELECT convert_to(note, 'UTF8') FROM customers",
    "SELECT i, substr(note, i, 1) FROM customers, generate_series(1, 50) i ORDER BY id, i",
    "SELECT substr(note, 16, 4), substr(note, 21, 4) FROM customers",
    "SELECT note || 'x', 'x' || note FROM customers",
    "SELECT concat(note, ''), format('%s', note) FROM customers",
    "SELECT replace(note, ' ', '-'), regexp_replace(note, '(.)', '\\1 ', 'g') FROM customers",
    "SELECT split_part(note, ' ', 4), split_part(note, '@', 1) FROM customers",
    "SELECT upper(note), initcap(note), lpad(note, 60, '0') FROM customers",
    "SELECT array_agg(note) FROM customers",
    "SELECT array_agg(reverse(note)) FROM customers",
    "SELECT array_agg(substr(note, i, 1) ORDER BY i) FROM customers, generate_series(1, 50) i GROUP BY id",
    "SELECT string_agg(reverse(note), ',') FROM customers",
    "SELECT ARRAY[reverse(note)], ROW(reverse(note), id) FROM customers",
    "SELECT to_jsonb(reverse(note)), jsonb_build_object('n', translate(note, '0123456789', 'abcdefghij')) FROM customers",
    "SELECT row_to_json(c) FROM customers c",
    "WITH x AS (SELECT reverse(note) AS r FROM customers) SELECT r FROM x",
    "SELECT r FROM (SELECT translate(note, '0123456789', 'abcdefghij') AS r FROM customers) s",
    "SELECT (SELECT reverse(note) FROM customers c2 WHERE c2.id = c.id) FROM customers c",
    "SELECT label FROM plain UNION ALL SELECT reverse(note) FROM customers",
    "SELECT rn FROM v_notes",
    "SELECT rn, re FROM customer_gen",
    "SELECT * FROM customer_gen",
    "SELECT string_agg(rn, ',') FROM customer_gen",
    "SELECT * FROM v_notes",
    "SELECT CAST(reverse(note) AS int) FROM customers",
    "SELECT CAST(translate(note, '0123456789', 'abcdefghij') AS int) FROM customers",
    "PREPARE np AS SELECT reverse(note), translate(note, '0123456789', 'abcdefghij') FROM customers; EXECUTE np",
    "BEGIN; DECLARE nc CURSOR FOR SELECT reverse(note) FROM customers; FETCH ALL nc; COMMIT",
    "BEGIN; DECLARE nb BINARY CURSOR FOR SELECT note, reverse(note), translate(note, '0123456789', 'abcdefghij'), ARRAY[note] FROM customers; FETCH ALL nb; COMMIT",
    "LISTEN notechan; SELECT pg_notify('notechan', string_agg(reverse(note), ',')) FROM customers",
    "SELECT set_config('application_name', string_agg(reverse(note), ','), false) FROM customers",
    "COPY (SELECT reverse(note) FROM customers) TO STDOUT",
    "CREATE TEMP TABLE note_copy AS SELECT note FROM customers; SELECT reverse(note) FROM note_copy",
    "UPDATE plain SET label = (SELECT string_agg(reverse(note), ',') FROM customers); SELECT label FROM plain",
    "UPDATE customers SET name = reverse(note); SELECT name FROM customers",
    "ALTER TABLE customers ADD COLUMN gen text GENERATED ALWAYS AS (reverse(note)) STORED; SELECT gen FROM customers",
    "INSERT INTO plain SELECT id, reverse(note) FROM customers; SELECT label FROM plain",
    "UPDATE customers SET note = reverse(note) WHERE id = 1; SELECT note FROM customers",
    "INSERT INTO customers (id, name) SELECT id + 200, reverse(email) FROM customers; SELECT name FROM customers",
    "INSERT INTO customers (id, note) SELECT id + 100, reverse(note) FROM customers; SELECT note FROM customers",
    "UPDATE customers SET note = translate(note, '0123456789', 'abcdefghij') WHERE id = 2; SELECT note FROM customers",
    "UPDATE plain SET label = (SELECT string_agg(reverse(email), ',') FROM customers); SELECT label FROM plain",
];

/// The PII of the `note` column (and its digits) as `translate(…, '0123456789',
/// 'abcdefghij')` and `translate(…, '@.', '  ')` write it.
fn note_translations() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for pii in [
        "4012 8888 8888 1881",
        "4012888888881881",
        "wq.notetest3@corp-example.org",
    ] {
        let letters: Vec<u8> = pii
            .bytes()
            .map(|b| {
                if b.is_ascii_digit() {
                    b'a' + (b - b'0')
                } else {
                    b
                }
            })
            .collect();
        let spaced: Vec<u8> = pii
            .bytes()
            .map(|b| if b == b'@' || b == b'.' { b' ' } else { b })
            .collect();
        out.push(letters.clone());
        out.push(letters.iter().rev().copied().collect());
        out.push(spaced);
    }
    out.retain(|v| v.iter().any(|b| !b.is_ascii_digit()));
    out
}

fn translated_in(haystack: &[u8]) -> Vec<String> {
    let hay = haystack.to_ascii_lowercase();
    note_translations()
        .into_iter()
        .filter(|n| memchr::memmem::find(&hay, n).is_some())
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect()
}

/// A free-text column under a `detect` rule (the quickstart's `customers.notes`): read plainly,
/// in text and binary format, its PII is masked by the detectors and the rest of the text is
/// shown; any value derived from it — reversed, translated, base64 or hex encoded, one
/// character per row, concatenated, aggregated, through a binary cursor, a prepared statement,
/// an error, a notification, a setting, a copy — reveals nothing, to the client or to the audit
/// log and recordings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detect_column_shows_plain_values_through_the_detectors_and_hides_derived_ones() {
    use gatehouse_masking::Strategy;
    gatehouse_testkit::within(Duration::from_secs(240), async {
        let gw = gateway_rules(
            false,
            &[
                ("email", Strategy::Partial),
                ("card_number", Strategy::Partial),
                ("phone", Strategy::Partial),
                ("note", Strategy::Detect),
            ],
        )
        .await;
        let (port, captured) = tap(gw.port).await;
        assert!(!translated_in(b"paid with card eabc iiii iiii biib on").is_empty());
        let list: Vec<&'static str> = NOTE_DERIVED.to_vec();
        let psql_out = tokio::task::spawn_blocking(move || run_psql(port, &list))
            .await
            .unwrap();
        let driver = run_binary_driver(port, NOTE_DERIVED).await;
        run_raw(port, NOTE_DERIVED, false).await;
        run_raw(port, NOTE_DERIVED, true).await;
        let mut extra = psql_out.clone();
        for (line, s) in driver.iter().zip(NOTE_DERIVED) {
            extra.extend_from_slice(line.strip_prefix(s).unwrap_or(line).as_bytes());
            extra.push(b'\n');
        }
        let mut found = scan(&captured, 0, &extra);
        for conn in captured.lock().unwrap().iter() {
            found.extend(translated_in(&conn.lock().unwrap()));
        }
        found.extend(translated_in(&extra));
        let dump = gw.tp.recorder.dump();
        found.extend(leaks_in(dump.as_bytes()));
        found.extend(translated_in(dump.as_bytes()));
        assert!(
            found.is_empty(),
            "leaks: {found:?}\n{}",
            String::from_utf8_lossy(&psql_out)
        );

        // Plain values: the detectors mask the PII inside, the rest of the text is shown, in
        // text and binary format.
        let client = connect_driver(gw.port).await;
        for sql in [
            "SELECT note FROM customers ORDER BY id",
            "SELECT note FROM customer_gen ORDER BY id",
            "SELECT n FROM (SELECT id, note AS n FROM customers) s ORDER BY id",
            "SELECT note FROM v_notes ORDER BY id",
        ] {
            let plain = all_values(&client, sql).await;
            assert_eq!(
                plain,
                [
                    "paid with card [card] on friday",
                    "reach me at [email]",
                    "paid with card [card] on friday",
                    "reach me at [email]",
                ],
                "{sql}: {plain:?}"
            );
        }
        // Derived values: the rule's constant, in text and binary format.
        for sql in [
            "SELECT reverse(note) FROM customers ORDER BY id",
            "SELECT translate(note, '0123456789', 'abcdefghij') FROM customers ORDER BY id",
            "SELECT encode(convert_to(note, 'UTF8'), 'base64') FROM customers ORDER BY id",
            "SELECT substr(note, 16, 4) FROM customers ORDER BY id",
            "SELECT note || '' FROM customers ORDER BY id",
            "SELECT n FROM (SELECT reverse(note) AS n FROM customers) s ORDER BY 1",
            "SELECT rn FROM v_notes ORDER BY id",
            "SELECT rn FROM customer_gen ORDER BY id",
        ] {
            let values = all_values(&client, sql).await;
            assert_eq!(values, ["[masked]"; 4], "{sql}: {values:?}");
        }
        // A generated column computed from a masked column: the rule's constant (partial: `*`).
        let values = all_values(&client, "SELECT re FROM customer_gen ORDER BY id").await;
        assert_eq!(values, ["*"; 4], "{values:?}");
        // What reveals nothing still passes.
        let values = all_values(&client, "SELECT count(note)::text FROM customers").await;
        assert_eq!(values, ["2", "2"], "{values:?}");
        // The plain value is recorded masked, the findings name the rule for derived values.
        assert!(
            dump.contains("column:note"),
            "derived values are recorded as masked by the rule"
        );
    })
    .await;
}

/// A view that outputs no masked column but reads one in its filter: an error its cast raises
/// carries the value. Errors of a statement naming the view are withheld as if it named the
/// tables the view reads (also through a view over the view, and in `EXPLAIN ANALYZE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_raised_inside_a_view_are_withheld_like_the_tables_it_reads() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let gw = gateway().await;
        let c = connect_driver(gw.port).await;
        c.simple_query(
            "CREATE VIEW leak_cast AS SELECT id FROM customers \
             WHERE (CASE WHEN id = 1 THEN replace(reverse(email), '@', ' AT ') ELSE '1' END)::int > 0",
        )
        .await
        .unwrap();
        c.simple_query("CREATE VIEW leak_cast2 AS SELECT * FROM leak_cast")
            .await
            .unwrap();
        for sql in [
            "SELECT * FROM leak_cast",
            "EXPLAIN ANALYZE SELECT * FROM leak_cast",
            "SELECT * FROM leak_cast2",
        ] {
            let e = c.simple_query(sql).await.unwrap_err();
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
            assert_eq!(db.code().code(), "22P02", "{sql}: {db:?}");
            let shown = format!("{db:?}");
            assert!(leaks_in(shown.as_bytes()).is_empty(), "{sql}: {shown}");
            assert!(!shown.contains(" AT "), "{sql}: {shown}");
        }
        drop(gw);
    })
    .await;
}

/// Planner statistics hold sample values of every column (`histogram_bounds`,
/// `most_common_vals`), which no lineage traces to their table: while any column is masked,
/// reading them is refused, directly or into a view; with nothing masked they are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_statistics_are_refused_while_columns_are_masked() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let gw = gateway().await;
        let c = connect_driver(gw.port).await;
        for sql in [
            "SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'",
            "SELECT most_common_vals::text FROM pg_catalog.pg_stats",
            "SELECT * FROM pg_stats_ext",
            // Nor can a view keep them for later.
            "CREATE VIEW stats_again AS SELECT * FROM pg_catalog.pg_stats",
        ] {
            let e = c.simple_query(sql).await.unwrap_err();
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
            assert_eq!(db.code().code(), "42501", "{sql}: {db:?}");
            assert!(db.message().contains("masked-statistics"), "{sql}: {db:?}");
        }
        drop(gw);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_statistics_are_served_when_nothing_is_masked() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let gw = gateway_masking(false, &[]).await;
        let c = connect_driver(gw.port).await;
        c.simple_query("SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'")
            .await
            .unwrap();
        drop(gw);
    })
    .await;
}
