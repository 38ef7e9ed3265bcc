//! `toml2term FILE`: test-only helper of the MongooseIM stand-in.
//!
//! OTP has no TOML parser, and MongooseIM reads `mongooseim.toml` itself, so the
//! stand-in runs this program as a port. It prints exactly one Erlang term in text
//! form, terminated by ".\n", that `erl_scan:string/1` + `erl_parse:parse_term/1`
//! accept:
//!
//! * tables -> maps with binary keys, strings -> binaries, integers, floats,
//!   booleans -> `true`/`false`, arrays -> lists, datetimes -> binaries of their text;
//! * a file that cannot be read or parsed -> `{error, <<"message">>}` (the toml
//!   crate's message names line and column).
//!
//! Binaries are written as byte lists (`<<104,105>>`) so any UTF-8 text survives the
//! trip without having to reproduce Erlang's string escaping rules.
//!
//! The exit status is 0 whenever a term was printed (errors included) so that the
//! Erlang side always gets a reason it can show; it is non-zero only for usage errors
//! and failures to write to stdout.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use toml::Value;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: toml2term FILE.toml");
        return ExitCode::from(2);
    };
    let term = match std::fs::read_to_string(&path) {
        Ok(text) => convert_document(&text),
        Err(err) => error_term(&format!(
            "cannot read {}: {err}",
            std::path::Path::new(&path).display()
        )),
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(term.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("toml2term: cannot write the result: {err}");
            ExitCode::from(1)
        }
    }
}

/// Converts a TOML document to the text of one Erlang term followed by ".\n".
/// Never fails: problems become an `{error, Binary}` term.
fn convert_document(text: &str) -> String {
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(err) => return error_term(err.to_string().trim_end()),
    };
    let mut out = String::with_capacity(text.len() * 4);
    match write_table(&mut out, &table) {
        Ok(()) => {
            out.push_str(".\n");
            out
        }
        Err(msg) => error_term(&msg),
    }
}

fn error_term(message: &str) -> String {
    let mut out = String::from("{error, ");
    write_binary(&mut out, message);
    out.push_str("}.\n");
    out
}

/// Errors are for values Erlang cannot represent (inf and NaN floats).
type ConvResult = Result<(), String>;

fn write_value(out: &mut String, value: &Value) -> ConvResult {
    match value {
        Value::String(s) => write_binary(out, s),
        Value::Integer(i) => push_fmt(out, format_args!("{i}")),
        Value::Float(f) => write_float(out, *f)?,
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Datetime(dt) => write_binary(out, &dt.to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Table(table) => write_table(out, table)?,
    }
    Ok(())
}

fn write_table(out: &mut String, table: &toml::Table) -> ConvResult {
    out.push_str("#{");
    for (i, (key, value)) in table.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_binary(out, key);
        out.push_str(" => ");
        write_value(out, value).map_err(|msg| format!("{msg} (key \"{key}\")"))?;
    }
    out.push('}');
    Ok(())
}

/// Erlang float literals need digits on both sides of the point and, for
/// exponents, the `1.0e10` form; Rust's `{:e}` gives the shortest round-trip
/// mantissa (`1e10`, `1.5e-7`), so a missing ".0" is added.
fn write_float(out: &mut String, f: f64) -> ConvResult {
    if !f.is_finite() {
        return Err(format!(
            "the float {f} has no Erlang representation (inf and nan are not supported)"
        ));
    }
    let text = format!("{f:e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if !mantissa.contains('.') => {
            push_fmt(out, format_args!("{mantissa}.0e{exponent}"));
        }
        _ => out.push_str(&text),
    }
    Ok(())
}

fn write_binary(out: &mut String, s: &str) {
    out.push_str("<<");
    for (i, byte) in s.bytes().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_fmt(out, format_args!("{byte}"));
    }
    out.push_str(">>");
}

fn push_fmt(out: &mut String, args: std::fmt::Arguments<'_>) {
    // Writing into a String cannot fail; the Result only exists for fmt::Write.
    let _ = out.write_fmt(args);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_every_value_type() {
        let doc = r#"
            s = "hé"
            i = -42
            b = [true, false]
            [t]
            f = 1.5
            big = 1e10
            small = -2.5e-7
            zero = 0.0
            d = 1979-05-27T07:32:00Z
        "#;
        assert_eq!(
            convert_document(doc),
            "#{<<98>> => [true,false],<<105>> => -42,<<115>> => <<104,195,169>>,\
             <<116>> => #{<<98,105,103>> => 1.0e10,<<100>> => <<49,57,55,57,45,48,53,45,50,55,\
             84,48,55,58,51,50,58,48,48,90>>,<<102>> => 1.5e0,\
             <<115,109,97,108,108>> => -2.5e-7,<<122,101,114,111>> => 0.0e0}}.\n"
        );
    }

    #[test]
    fn empty_document_and_empty_strings() {
        assert_eq!(convert_document(""), "#{}.\n");
        assert_eq!(
            convert_document("a = \"\"\nb = []\nc = [{}]"),
            "#{<<97>> => <<>>,<<98>> => [],<<99>> => [#{}]}.\n"
        );
    }

    #[test]
    fn parse_errors_name_the_line() {
        let out = convert_document("a = 1\nb = = 2\n");
        assert!(out.starts_with("{error, <<"), "{out}");
        assert!(out.ends_with(">>}.\n"), "{out}");
        let bytes: Vec<u8> = out["{error, <<".len()..out.len() - ">>}.\n".len()]
            .split(',')
            .map(|b| b.parse().expect("byte"))
            .collect();
        let message = String::from_utf8(bytes).expect("utf8");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn non_finite_floats_are_errors() {
        let out = convert_document("[x]\ny = inf\n");
        assert!(out.starts_with("{error, "), "{out}");
        assert!(convert_document("y = nan").starts_with("{error, "));
    }
}
