//! Output for kmfctl: aligned tables by default, JSON with `--json`.
//!
//! `--json` prints the response message in the protobuf JSON mapping, byte for
//! byte what grpcurl 1.8 prints for the same call ([`json`] is the one place):
//! lowerCamelCase names, enums by name, 64-bit integers and bytes (standard
//! base64) as strings, Timestamps and Durations in their JSON forms, default
//! values left out, two-space indentation, an empty message as `{`, two spaces,
//! `}` on three lines, and `<`, `>`, `&` escaped as Go's encoder does.

use std::io::Write;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Value, json};

use crate::rpc::pb;

/// Prints `message` as grpcurl would: the protobuf JSON mapping of `M`.
pub fn json<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<()> {
    let text = json_text(message)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The text [`json`] prints (with its final newline).
pub fn json_text<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<String> {
    let dynamic = dynamic(message)?;
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, GrpcurlFormatter::default());
    dynamic.serialize_with_options(&mut ser, &SerializeOptions::new())?;
    buf.push(b'\n');
    Ok(String::from_utf8(buf)?)
}

/// `message` in the protobuf JSON mapping on one line (a JSON lines item).
pub fn json_line<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<String> {
    let dynamic = dynamic(message)?;
    let mut buf = Vec::new();
    dynamic.serialize_with_options(&mut serde_json::Serializer::new(&mut buf), &SerializeOptions::new())?;
    Ok(String::from_utf8(buf)?)
}

/// Parses one message from its protobuf JSON mapping (lowerCamelCase or the
/// proto field names, enums by name, bytes in base64); unknown fields are errors.
pub fn parse_json<M: prost::Message + prost::Name + Default>(text: &str) -> anyhow::Result<M> {
    let mut de = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor::<M>()?, &mut de)?;
    de.end()?;
    Ok(dynamic.transcode_to::<M>()?)
}

/// The descriptor of `M` in the daemon's descriptor set (decoded once).
fn descriptor<M: prost::Name>() -> anyhow::Result<prost_reflect::MessageDescriptor> {
    static POOL: std::sync::OnceLock<Result<DescriptorPool, String>> = std::sync::OnceLock::new();
    let pool = POOL
        .get_or_init(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the descriptor set does not decode: {e}"))?;
    let name = M::full_name();
    pool.get_message_by_name(&name).ok_or_else(|| anyhow::anyhow!("no descriptor for {name}"))
}

fn dynamic<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<DynamicMessage> {
    Ok(DynamicMessage::decode(descriptor::<M>()?, message.encode_to_vec().as_slice())?)
}

/// serde_json layout of grpcurl (jsonpb over a dynamic message): two-space
/// indentation, `": "` after a key, an empty object or array still broken over
/// lines with the inner indentation, HTML characters escaped, floats as Go
/// prints them.
#[derive(Default)]
struct GrpcurlFormatter {
    depth: usize,
}

impl GrpcurlFormatter {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..self.depth {
            w.write_all(b"  ")?;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for GrpcurlFormatter {
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        w.write_all(b"{")?;
        self.newline(w)
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        self.newline(w)?;
        w.write_all(b"}")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            return Ok(());
        }
        w.write_all(b",")?;
        self.newline(w)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        w.write_all(b"[")?;
        self.newline(w)
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        self.newline(w)?;
        w.write_all(b"]")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            return Ok(());
        }
        w.write_all(b",")?;
        self.newline(w)
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(&mut self, w: &mut W, fragment: &str) -> std::io::Result<()> {
        // Go's encoding/json escapes these for HTML, and U+2028/U+2029 for JavaScript.
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            w.write_all(&fragment.as_bytes()[start..i])?;
            w.write_all(escaped.as_bytes())?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, value: f64) -> std::io::Result<()> {
        w.write_all(go_float(value).as_bytes())
    }

    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, value: f32) -> std::io::Result<()> {
        w.write_all(go_float(f64::from(value)).as_bytes())
    }
}

/// A float as grpcurl writes it (Go's `strconv.FormatFloat(v, 'g', -1, 64)`):
/// the shortest digits, plain when the exponent is from -4 to 5, else with a
/// signed exponent of at least two digits (`1.2345675e+06`, `1e-05`).
fn go_float(value: f64) -> String {
    let text = format!("{value:e}");
    let Some((mantissa, exp)) = text.split_once('e') else { return text };
    let Ok(exp) = exp.parse::<i32>() else { return text };
    if value == 0.0 || (-4..6).contains(&exp) {
        return format!("{value}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// Prints rows as an aligned table under `headers`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn time(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        Some(t) if t.seconds > 0 => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::new(t.seconds as u64, t.nanos.max(0) as u32);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => "-".into(),
    }
}

fn name<E: std::fmt::Debug>(v: Result<E, prost::UnknownEnumValue>) -> String {
    match v {
        Ok(e) => format!("{e:?}"),
        Err(_) => "UNKNOWN".into(),
    }
}

pub fn status_label(v: i32) -> String {
    pb::RequestStatus::try_from(v).map(|s| s.as_str_name().to_owned()).unwrap_or_else(|_| "UNKNOWN".into())
}

fn line_label(v: i32) -> String {
    pb::SpecLineStatus::try_from(v).map(|s| s.as_str_name().to_owned()).unwrap_or_else(|_| "UNKNOWN".into())
}

fn key_state(v: i32) -> String {
    name(pb::KeyState::try_from(v))
}

/// Keys as a table.
pub fn keys(keys: &[pb::Key]) {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.key_id.clone(),
                key_state(k.state),
                name(pb::KeyOrigin::try_from(k.origin)),
                time(&k.generated_at),
                time(&k.expires_at),
                k.reason.clone(),
            ]
        })
        .collect();
    table(&["KEY_ID", "STATE", "ORIGIN", "GENERATED", "EXPIRES", "REASON"], &rows);
}

/// The request's scalar fields by their table labels (the table view only).
fn request_fields(r: &pb::ExchangeRequest) -> Value {
    json!({
        "request_id": r.request_id,
        "role": name(pb::ExchangeRole::try_from(r.role)),
        "frequency": name(pb::Frequency::try_from(r.frequency)),
        "source_sys_id": r.source_sys_id, "source_host": r.source_host,
        "target_sys_id": r.target_sys_id, "target_host": r.target_host,
        "status": status_label(r.status),
        "total_key_count": r.total_key_count, "exported_key_count": r.exported_key_count,
        "imported_key_count": r.imported_key_count,
        "created_at": time(&r.created_at), "updated_at": time(&r.updated_at), "expires_at": time(&r.expires_at),
        "lines": r.lines.iter().map(|l| json!({
            "spec": l.spec, "status": line_label(l.status), "key_count": l.key_count, "reason": l.reason,
        })).collect::<Vec<_>>(),
        "history": r.history.iter().map(|t| json!({
            "status": status_label(t.status), "at": time(&t.at), "actor": t.actor, "note": t.note,
        })).collect::<Vec<_>>(),
    })
}

/// Requests as a table.
pub fn requests(list: &[pb::ExchangeRequest]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let (peer, peer_host) = if r.role == pb::ExchangeRole::Source as i32 {
                (&r.target_sys_id, &r.target_host)
            } else {
                (&r.source_sys_id, &r.source_host)
            };
            vec![
                r.request_id.clone(),
                name(pb::ExchangeRole::try_from(r.role)),
                status_label(r.status),
                format!("{peer} @ {peer_host}"),
                r.lines.iter().map(|l| l.spec.as_str()).collect::<Vec<_>>().join(","),
                r.total_key_count.to_string(),
                r.exported_key_count.to_string(),
                r.imported_key_count.to_string(),
                time(&r.expires_at),
            ]
        })
        .collect();
    table(&["REQUEST_ID", "ROLE", "STATUS", "PEER", "SPECS", "TOTAL", "EXPORTED", "IMPORTED", "EXPIRES"], &rows);
}

/// `UpdateRequest`'s answer: the response message with `--json`, else the request.
pub fn update_response(r: &pb::UpdateRequestResponse, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(r);
    }
    request(r.request.as_ref().unwrap_or(&pb::ExchangeRequest::default()));
    Ok(())
}

/// One request: its fields, spec lines and history.
pub fn request(r: &pb::ExchangeRequest) {
    let v = request_fields(r);
    for field in [
        "request_id",
        "role",
        "frequency",
        "status",
        "source_sys_id",
        "source_host",
        "target_sys_id",
        "target_host",
        "total_key_count",
        "exported_key_count",
        "imported_key_count",
        "created_at",
        "updated_at",
        "expires_at",
    ] {
        let value = match &v[field] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{field:<19} {value}");
    }
    println!("spec lines:");
    let rows: Vec<Vec<String>> = r
        .lines
        .iter()
        .map(|l| vec![l.spec.clone(), line_label(l.status), l.key_count.to_string(), l.reason.clone()])
        .collect();
    table(
        &["  SPEC", "STATUS", "KEYS", "REASON"],
        &rows
            .into_iter()
            .map(|mut r| {
                r[0] = format!("  {}", r[0]);
                r
            })
            .collect::<Vec<_>>(),
    );
    println!("history:");
    for t in &r.history {
        let note = if t.note.is_empty() { String::new() } else { format!(" ({})", t.note) };
        println!("  {}  {:<24} by {}{note}", time(&t.at), status_label(t.status), t.actor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_go_formats_them() {
        let table = [
            (0.0, "0"),
            (2.5, "2.5"),
            (100.0, "100"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456.7, "123456.7"),
            (1234567.5, "1.2345675e+06"),
            (1e21, "1e+21"),
            (-3e-7, "-3e-07"),
        ];
        for (value, want) in table {
            assert_eq!(go_float(value), want, "{value}");
        }
    }

    #[test]
    fn layout_of_empty_nested_and_repeated_messages() {
        assert_eq!(json_text(&pb::DeleteRecordResponse {}).unwrap(), "{\n  \n}\n");
        let empty_inside = pb::GetRecordResponse { record: Some(pb::RecordInfo::default()), plaintext: vec![] };
        assert_eq!(json_text(&empty_inside).unwrap(), "{\n  \"record\": {\n    \n  }\n}\n");
        let info = pb::RecordInfo {
            address: Some(pb::RecordAddress { table: "t".into(), field: String::new(), record_id: "<1>".into() }),
            key_id: String::new(),
            updated_at: Some(prost_types::Timestamp { seconds: 1, nanos: 500_000_000 }),
        };
        let list = pb::ListRecordsResponse { records: vec![info], next_page_token: String::new() };
        let want = "{\n  \"records\": [\n    {\n      \"address\": {\n        \"table\": \"t\",\n        \"recordId\": \"\\u003c1\\u003e\"\n      },\n      \"updatedAt\": \"1970-01-01T00:00:01.500Z\"\n    }\n  ]\n}\n";
        assert_eq!(json_text(&list).unwrap(), want);
        let digest = pb::DigestRecordsResponse { records: 3, sha256: vec![0xff] };
        assert_eq!(json_line(&digest).unwrap(), r#"{"records":"3","sha256":"/w=="}"#);
        let parsed: pb::EncryptRequest =
            parse_json(r#"{"spec":"s","plaintext":"aGk=","associated_data":"eA=="}"#).unwrap();
        assert_eq!(
            (parsed.spec.as_str(), parsed.plaintext.as_slice(), parsed.associated_data.as_slice()),
            ("s", &b"hi"[..], &b"x"[..])
        );
        assert!(parse_json::<pb::EncryptRequest>(r#"{"nope":1}"#).is_err(), "unknown fields are refused");
    }
}
