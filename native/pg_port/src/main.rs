//! `pg_port`: test-only PostgreSQL access for the MongooseIM stand-in.
//!
//! OTP has no PostgreSQL driver, so `test/mim/mongoose_rdbms.erl` runs this program
//! as a port (`{packet, 4}`) and talks to it one request at a time. Every frame, in
//! both directions, is a 4-byte big-endian length followed by that many bytes of one
//! JSON object.
//!
//! Requests:
//!
//! * `{"op": "connect", "conninfo": "host=... user=... dbname=..."}` opens (or
//!   replaces) the connection; answer `{"connected": true}`. The conninfo is kept: a
//!   connection found closed is reopened before the next request.
//! * `{"op": "execute", "sql": "... $1 ... $2", "params": [P, ...]}` runs one statement
//!   with the extended protocol (prepared once per SQL text and connection). Each
//!   parameter is a string, a number or a boolean (sent in PostgreSQL's *text* format,
//!   so the server parses it as the parameter's type: `"42"` is fine for a BIGINT) or
//!   `null` (SQL NULL). A statement without result columns answers
//!   `{"updated": RowCount}`; one with result columns `{"selected": [[Cell, ...], ...]}`
//!   where a cell is `null`, a boolean (bool), a number (int2/int4/int8/oid/float4/
//!   float8; non-finite floats as the strings "NaN", "Infinity", "-Infinity"), a string
//!   (text/varchar/char/name/json/jsonb and unknown) or `{"bytea": "<hex>"}`. Other
//!   result types are an error naming the type (cast the column to text in the SQL).
//! * `{"op": "query", "sql": "..."}` runs SQL with the simple protocol (several
//!   statements allowed, no parameters, every cell a string or `null`) and answers the
//!   result of the last statement, as above.
//!
//! Any failure, including a malformed request, answers `{"error": "message"}`
//! (database errors as `"ERROR 42P01: relation \"t\" does not exist"`, with the
//! detail in parentheses when the server gives one). The program ends with status 0
//! when its input ends, and with status 1 (after a message on stderr) only when the
//! framing itself is broken (a frame longer than 64 MiB, a truncated frame) or stdout
//! cannot be written.

use std::collections::HashMap;
use std::error::Error;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::process::ExitCode;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Row, SimpleQueryMessage, Statement};
use serde_json::{json, Value};

/// Longest frame accepted; a longer length prefix means the stream is not ours.
const MAX_FRAME: usize = 64 << 20;

type BoxError = Box<dyn Error + Sync + Send>;

fn main() -> ExitCode {
    let mut session = Session::default();
    let stdin = io::stdin().lock();
    let stdout = io::stdout().lock();
    match serve(stdin, stdout, |frame| session.handle(frame)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pg_port: {err}");
            ExitCode::from(1)
        }
    }
}

/// Answers every frame of `input` with `handler`'s reply, until `input` ends.
fn serve<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    mut handler: impl FnMut(&[u8]) -> Value,
) -> io::Result<()> {
    while let Some(frame) = read_frame(&mut input)? {
        let reply = handler(&frame);
        write_frame(&mut output, reply.to_string().as_bytes())?;
    }
    Ok(())
}

/// The next frame, or `None` when the input ends between frames.
fn read_frame<R: Read>(input: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match input.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "input ended inside a frame header",
                ))
            }
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut frame = vec![0u8; len];
    input.read_exact(&mut frame)?;
    Ok(Some(frame))
}

fn write_frame<W: Write>(output: &mut W, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "reply too long for a frame"))?;
    output.write_all(&len.to_be_bytes())?;
    output.write_all(payload)?;
    output.flush()
}

/// One connection, its conninfo (to reopen it) and its prepared statements.
#[derive(Default)]
struct Session {
    conninfo: Option<String>,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
}

impl Session {
    fn handle(&mut self, frame: &[u8]) -> Value {
        self.dispatch(frame)
            .unwrap_or_else(|message| json!({ "error": message }))
    }

    fn dispatch(&mut self, frame: &[u8]) -> Result<Value, String> {
        let request: Value =
            serde_json::from_slice(frame).map_err(|err| format!("bad request: {err}"))?;
        match str_field(&request, "op")? {
            "connect" => {
                self.connect(str_field(&request, "conninfo")?)?;
                Ok(json!({ "connected": true }))
            }
            "execute" => {
                let params = match request.get("params") {
                    None => Vec::new(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            text_param(item).map_err(|e| format!("parameter ${}: {e}", i + 1))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err("bad request: \"params\" is not an array".into()),
                };
                self.execute(str_field(&request, "sql")?, &params)
            }
            "query" => self.simple_query(str_field(&request, "sql")?),
            other => Err(format!("bad request: unknown op {other:?}")),
        }
    }

    fn connect(&mut self, conninfo: &str) -> Result<(), String> {
        self.client = None;
        self.statements.clear();
        self.conninfo = Some(conninfo.to_owned());
        let client = Client::connect(conninfo, NoTls).map_err(pg_error)?;
        self.client = Some(client);
        Ok(())
    }

    /// Reopens a closed connection (e.g. after a server restart).
    fn ensure_connected(&mut self) -> Result<(), String> {
        match (&self.client, &self.conninfo) {
            (Some(client), _) if !client.is_closed() => Ok(()),
            (_, Some(conninfo)) => {
                let conninfo = conninfo.clone();
                self.connect(&conninfo)
            }
            (_, None) => Err("not connected (send a connect request first)".into()),
        }
    }

    fn execute(&mut self, sql: &str, params: &[TextParam]) -> Result<Value, String> {
        self.ensure_connected()?;
        let result = self.try_execute(sql, params);
        if result.is_err() {
            // The statement may be what failed (e.g. its table was dropped): prepare
            // it again next time.
            self.statements.remove(sql);
        }
        result.map_err(|failure| self.failure(failure))
    }

    fn try_execute(&mut self, sql: &str, params: &[TextParam]) -> Result<Value, Failure> {
        let client = self.client.as_mut().ok_or(Failure::NotConnected)?;
        let statement = match self.statements.get(sql) {
            Some(statement) => statement.clone(),
            None => {
                let statement = client.prepare(sql)?;
                self.statements.insert(sql.to_owned(), statement.clone());
                statement
            }
        };
        if statement.params().len() != params.len() {
            return Err(Failure::Other(format!(
                "the statement has {} parameters, {} given",
                statement.params().len(),
                params.len()
            )));
        }
        let args: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        if statement.columns().is_empty() {
            let count = client.execute(&statement, &args)?;
            Ok(json!({ "updated": count }))
        } else {
            let rows = client.query(&statement, &args)?;
            let rows = rows
                .iter()
                .map(row_to_json)
                .collect::<Result<Vec<_>, _>>()
                .map_err(Failure::Other)?;
            Ok(json!({ "selected": rows }))
        }
    }

    fn simple_query(&mut self, sql: &str) -> Result<Value, String> {
        self.ensure_connected()?;
        let result = match self.client.as_mut() {
            Some(client) => client.simple_query(sql).map_err(Failure::Pg),
            None => Err(Failure::NotConnected),
        };
        result
            .map(last_result)
            .map_err(|failure| self.failure(failure))
    }

    /// The message of a failure. An error that ended the connection makes the
    /// session forget it, so that the next request opens a new one.
    fn failure(&mut self, failure: Failure) -> String {
        match failure {
            Failure::Pg(err) => {
                let fatal = err
                    .as_db_error()
                    .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"));
                if err.is_closed() || fatal || self.client.as_ref().is_some_and(Client::is_closed) {
                    self.client = None;
                    self.statements.clear();
                }
                pg_error(err)
            }
            Failure::NotConnected => "not connected".to_owned(),
            Failure::Other(message) => message,
        }
    }
}

/// Why a request failed.
enum Failure {
    Pg(postgres::Error),
    NotConnected,
    Other(String),
}

impl From<postgres::Error> for Failure {
    fn from(err: postgres::Error) -> Self {
        Failure::Pg(err)
    }
}

/// The result of the last statement of a simple query.
fn last_result(messages: Vec<SimpleQueryMessage>) -> Value {
    let mut last = json!({ "updated": 0 });
    let mut rows: Option<Vec<Value>> = None;
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(_) => rows = Some(Vec::new()),
            SimpleQueryMessage::Row(row) => {
                let cells = (0..row.len())
                    .map(|i| row.get(i).map_or(Value::Null, Value::from))
                    .collect();
                rows.get_or_insert_with(Vec::new).push(Value::Array(cells));
            }
            SimpleQueryMessage::CommandComplete(count) => {
                last = match rows.take() {
                    Some(rows) => json!({ "selected": rows }),
                    None => json!({ "updated": count }),
                };
            }
            _ => {}
        }
    }
    last
}

fn str_field<'a>(request: &'a Value, key: &str) -> Result<&'a str, String> {
    request
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("bad request: no string {key:?}"))
}

/// A parameter in PostgreSQL's text format (`None` is NULL): the server converts
/// the text to the parameter's type, whatever it is.
#[derive(Debug, Clone, PartialEq)]
struct TextParam(Option<String>);

fn text_param(value: &Value) -> Result<TextParam, String> {
    match value {
        Value::Null => Ok(TextParam(None)),
        Value::String(s) => Ok(TextParam(Some(s.clone()))),
        Value::Number(n) => Ok(TextParam(Some(n.to_string()))),
        Value::Bool(b) => Ok(TextParam(Some(b.to_string()))),
        Value::Array(_) | Value::Object(_) => {
            Err("not a string, number, boolean or null".to_owned())
        }
    }
}

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match &self.0 {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> postgres::types::Format {
        postgres::types::Format::Text
    }

    to_sql_checked!();
}

/// A result cell as sent by the server (binary format), `None` for NULL.
struct RawCell<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawCell<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(RawCell(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, BoxError> {
        Ok(RawCell(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

fn row_to_json(row: &Row) -> Result<Value, String> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let cell: RawCell<'_> = row.try_get(i).map_err(pg_error)?;
            match cell.0 {
                None => Ok(Value::Null),
                Some(raw) => decode(column.type_(), raw).map_err(|err| {
                    format!(
                        "column {:?} of type {}: {err}",
                        column.name(),
                        column.type_()
                    )
                }),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// A binary-format value of a supported type as JSON.
fn decode(ty: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    Ok(match *ty {
        Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
        Type::INT2 => Value::from(i16::from_sql(ty, raw)?),
        Type::INT4 => Value::from(i32::from_sql(ty, raw)?),
        Type::INT8 => Value::from(i64::from_sql(ty, raw)?),
        Type::OID => Value::from(u32::from_sql(ty, raw)?),
        Type::FLOAT4 => float(f64::from(f32::from_sql(ty, raw)?)),
        Type::FLOAT8 => float(f64::from_sql(ty, raw)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            Value::from(<&str>::from_sql(ty, raw)?)
        }
        // json's binary format is its text; jsonb's is a version byte (1) and the text.
        Type::JSON => Value::from(std::str::from_utf8(raw)?),
        Type::JSONB => match raw.split_first() {
            Some((1, text)) => Value::from(std::str::from_utf8(text)?),
            _ => return Err("unsupported jsonb format version".into()),
        },
        Type::BYTEA => json!({ "bytea": hex(raw) }),
        _ => {
            return Err(format!(
                "unsupported result type {ty} (cast the column to text in the query, e.g. x::text)"
            )
            .into())
        }
    })
}

fn float(f: f64) -> Value {
    match serde_json::Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::from("NaN"),
        None if f > 0.0 => Value::from("Infinity"),
        None => Value::from("-Infinity"),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing into a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn pg_error(err: postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut message = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                let _ = write!(message, " ({detail})");
            }
            message
        }
        None => match err.source() {
            Some(source) => format!("{err}: {source}"),
            None => err.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn replies(output: &[u8]) -> Vec<Value> {
        let mut input = output;
        let mut out = Vec::new();
        while let Some(reply) = read_frame(&mut input).expect("frame") {
            out.push(serde_json::from_slice(&reply).expect("json"));
        }
        out
    }

    fn answer(request: &str) -> Value {
        Session::default().handle(request.as_bytes())
    }

    fn error_of(reply: &Value) -> &str {
        reply["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error: {reply}"))
    }

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut input = frame(b"{\"a\":1}");
        input.extend(frame(b""));
        let mut output = Vec::new();
        let mut seen = Vec::new();
        serve(input.as_slice(), &mut output, |f| {
            seen.push(f.to_vec());
            json!({ "n": f.len() })
        })
        .expect("serve");
        assert_eq!(seen, vec![b"{\"a\":1}".to_vec(), Vec::new()]);
        assert_eq!(replies(&output), vec![json!({"n": 7}), json!({"n": 0})]);
    }

    #[test]
    fn broken_framing_is_an_error() {
        let truncated_header: &[u8] = &[0, 0];
        let truncated_body = frame(b"{}");
        let too_long = (MAX_FRAME as u32 + 1).to_be_bytes();
        for input in [truncated_header, &truncated_body[..5], &too_long[..]] {
            let result = serve(input, Vec::new(), |_| Value::Null);
            assert!(result.is_err(), "{input:?}");
        }
    }

    #[test]
    fn bad_requests_get_an_error_answer() {
        assert!(error_of(&answer("not json")).starts_with("bad request"));
        assert!(error_of(&answer("[]")).contains("\"op\""));
        assert!(error_of(&answer(r#"{"op": "drop"}"#)).contains("unknown op"));
        assert!(error_of(&answer(r#"{"op": "execute"}"#)).contains("\"sql\""));
        assert!(error_of(&answer(r#"{"op": "connect", "conninfo": 1}"#)).contains("conninfo"));
        let bad_params = answer(r#"{"op": "execute", "sql": "x", "params": [1, [2]]}"#);
        assert!(error_of(&bad_params).starts_with("parameter $2"));
        let not_array = answer(r#"{"op": "execute", "sql": "x", "params": "1"}"#);
        assert!(error_of(&not_array).contains("not an array"));
    }

    #[test]
    fn requests_before_connect_are_errors() {
        for request in [
            r#"{"op": "execute", "sql": "SELECT 1", "params": []}"#,
            r#"{"op": "query", "sql": "SELECT 1"}"#,
        ] {
            assert!(error_of(&answer(request)).starts_with("not connected"));
        }
    }

    #[test]
    fn unreachable_server_is_an_error_answer() {
        let reply = answer(
            r#"{"op": "connect", "conninfo": "host=127.0.0.1 port=1 user=x connect_timeout=2"}"#,
        );
        assert!(!error_of(&reply).is_empty());
        let reply = answer(r#"{"op": "connect", "conninfo": "nonsense=="}"#);
        assert!(!error_of(&reply).is_empty());
    }

    #[test]
    fn params_are_text() {
        assert_eq!(text_param(&json!(null)), Ok(TextParam(None)));
        assert_eq!(text_param(&json!("é")), Ok(TextParam(Some("é".into()))));
        assert_eq!(
            text_param(&json!(-12345678901234_i64)),
            Ok(TextParam(Some("-12345678901234".into())))
        );
        assert_eq!(text_param(&json!(true)), Ok(TextParam(Some("true".into()))));
        assert!(text_param(&json!({"a": 1})).is_err());
        let mut out = BytesMut::new();
        let param = TextParam(Some("42".into()));
        assert!(matches!(
            param.to_sql(&Type::INT8, &mut out),
            Ok(IsNull::No)
        ));
        assert_eq!(&out[..], b"42");
        assert!(matches!(
            TextParam(None).to_sql(&Type::INT8, &mut out),
            Ok(IsNull::Yes)
        ));
        assert!(matches!(
            param.encode_format(&Type::JSON),
            postgres::types::Format::Text
        ));
    }

    #[test]
    fn decodes_supported_types() {
        assert_eq!(decode(&Type::BOOL, &[1]).ok(), Some(json!(true)));
        assert_eq!(decode(&Type::INT2, &[0xff, 0xfe]).ok(), Some(json!(-2)));
        assert_eq!(
            decode(&Type::INT4, &7_i32.to_be_bytes()).ok(),
            Some(json!(7))
        );
        let big = 1_700_000_000_000_000_i64;
        assert_eq!(
            decode(&Type::INT8, &big.to_be_bytes()).ok(),
            Some(json!(big))
        );
        assert_eq!(
            decode(&Type::OID, &9_u32.to_be_bytes()).ok(),
            Some(json!(9))
        );
        assert_eq!(
            decode(&Type::FLOAT8, &1.5_f64.to_be_bytes()).ok(),
            Some(json!(1.5))
        );
        assert_eq!(
            decode(&Type::FLOAT4, &f32::NAN.to_be_bytes()).ok(),
            Some(json!("NaN"))
        );
        assert_eq!(
            decode(&Type::FLOAT8, &f64::NEG_INFINITY.to_be_bytes()).ok(),
            Some(json!("-Infinity"))
        );
        assert_eq!(decode(&Type::TEXT, "é".as_bytes()).ok(), Some(json!("é")));
        assert_eq!(
            decode(&Type::JSON, b"{\"a\":1}").ok(),
            Some(json!("{\"a\":1}"))
        );
        assert_eq!(decode(&Type::JSONB, b"\x01{}").ok(), Some(json!("{}")));
        assert!(decode(&Type::JSONB, b"\x02{}").is_err());
        assert!(decode(&Type::JSONB, b"").is_err());
        assert_eq!(
            decode(&Type::BYTEA, &[0, 0xab, 0x10]).ok(),
            Some(json!({"bytea": "00ab10"}))
        );
    }

    #[test]
    fn bad_or_unsupported_values_are_errors() {
        assert!(decode(&Type::INT8, &[1, 2]).is_err());
        assert!(decode(&Type::TEXT, &[0xff, 0xfe]).is_err());
        assert!(decode(&Type::JSON, &[0xc3]).is_err());
        let err = decode(&Type::NUMERIC, &[0; 8]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("numeric") && e.contains("::text")));
    }

    #[test]
    fn simple_query_answers_the_last_statement() {
        assert_eq!(last_result(Vec::new()), json!({"updated": 0}));
        let messages = vec![
            SimpleQueryMessage::CommandComplete(3),
            SimpleQueryMessage::CommandComplete(0),
        ];
        assert_eq!(last_result(messages), json!({"updated": 0}));
    }
}
