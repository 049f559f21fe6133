//! Output for kmfctl: aligned tables by default, JSON with `--json`.

use serde_json::{Value, json};

use crate::rpc::pb;

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

pub fn key_json(k: &pb::Key) -> Value {
    json!({
        "key_id": k.key_id, "origin_sys_id": k.origin_sys_id, "spec": k.spec, "version": k.version,
        "state": key_state(k.state), "origin": name(pb::KeyOrigin::try_from(k.origin)),
        "generated_at": time(&k.generated_at), "activated_at": time(&k.activated_at),
        "deactivated_at": time(&k.deactivated_at), "imported_at": time(&k.imported_at),
        "expired_at": time(&k.expired_at), "request_id": k.request_id,
        "expires_at": time(&k.expires_at), "renewed_at": time(&k.renewed_at),
        "suspended_at": time(&k.suspended_at), "compromised_at": time(&k.compromised_at),
        "revoked_at": time(&k.revoked_at), "destroyed_at": time(&k.destroyed_at), "reason": k.reason,
    })
}

pub fn keys(keys: &[pb::Key], as_json: bool) {
    if as_json {
        println!("{}", Value::Array(keys.iter().map(key_json).collect()));
        return;
    }
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

pub fn request_json(r: &pb::ExchangeRequest) -> Value {
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

pub fn requests(list: &[pb::ExchangeRequest], as_json: bool) {
    if as_json {
        println!("{}", Value::Array(list.iter().map(request_json).collect()));
        return;
    }
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

pub fn request(r: &pb::ExchangeRequest, as_json: bool) {
    if as_json {
        println!("{}", request_json(r));
        return;
    }
    let v = request_json(r);
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
