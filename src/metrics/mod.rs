//! Prometheus metrics: RPC counts and durations recorded by a tower layer
//! around the gRPC server (`layer`), store gauges computed when scraped, and
//! the operator-only HTTPS endpoint that serves them (`server`).
//!
//! The registry belongs to one running instance (no process-global
//! recorder), so several daemons in one process (the tests) do not mix.

pub mod layer;
pub mod server;

use std::time::Duration;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::domain::exchange::ExchangeRole;
use crate::domain::health::ALL_HEALTH_STATUSES;
use crate::node::diagnostics::Diagnosis;

use crate::store::StoreCounts;

/// The RPC metrics of one instance.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers `kmf_rpc_requests_total{method,code}` and
    /// `kmf_rpc_duration_seconds{method}`.
    pub fn try_new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("kmf_rpc_requests_total", "gRPC calls served, by method and status code"),
            &["method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("kmf_rpc_duration_seconds", "Time until the response headers of a gRPC call"),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Metrics { registry, requests, duration })
    }

    /// Records one finished call.
    pub fn observe(&self, method: &str, code: &str, elapsed: Duration) {
        self.requests.with_label_values(&[method, code]).inc();
        self.duration.with_label_values(&[method]).observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text format: the RPC metrics plus the store gauges
    /// `kmf_exchange_requests{status,role}`, `kmf_keys{state}` and
    /// `kmf_audit_entries`, `kmf_rekey_debt{key_id}` and
    /// `kmf_rekey_debt_records`, built from `counts`, and the latest diagnosis as
    /// `kmf_health{component,status}` (1 for the component's status, 0 for
    /// the others; component "kmf" is the roll-up) with
    /// `kmf_health_checked_timestamp_seconds`.
    pub fn render(&self, counts: &StoreCounts, diagnosis: Option<&Diagnosis>) -> Result<String, prometheus::Error> {
        let scrape = Registry::new();
        let requests = IntGaugeVec::new(
            Opts::new("kmf_exchange_requests", "Exchange requests stored, by status and role"),
            &["status", "role"],
        )?;
        let keys = IntGaugeVec::new(Opts::new("kmf_keys", "Keys stored, by state"), &["state"])?;
        let audit = IntGauge::new("kmf_audit_entries", "Entries in the audit log")?;
        for (role, status, n) in &counts.requests {
            let status = status.label().trim_start_matches("REQUEST_").to_ascii_lowercase();
            let role = match role {
                ExchangeRole::Source => "source",
                ExchangeRole::Target => "target",
            };
            requests.with_label_values(&[status.as_str(), role]).set(gauge(*n));
        }
        for (state, n) in &counts.keys {
            keys.with_label_values(&[state.label().to_ascii_lowercase().as_str()]).set(gauge(*n));
        }
        audit.set(gauge(counts.audit_entries));
        let debt = IntGaugeVec::new(
            Opts::new("kmf_rekey_debt", "Records still encrypted under each imported key (the rekey debt)"),
            &["key_id"],
        )?;
        for d in &counts.rekey_debt {
            debt.with_label_values(&[d.key_id.to_string().as_str()]).set(gauge(d.records));
        }
        let debt_total = IntGauge::new("kmf_rekey_debt_records", "Records still encrypted under imported keys")?;
        debt_total.set(gauge(counts.rekey_debt.iter().map(|d| d.records).sum()));
        scrape.register(Box::new(requests))?;
        scrape.register(Box::new(keys))?;
        scrape.register(Box::new(audit))?;
        scrape.register(Box::new(debt))?;
        scrape.register(Box::new(debt_total))?;
        if let Some(d) = diagnosis {
            let health = IntGaugeVec::new(
                Opts::new("kmf_health", "Latest diagnosis: 1 for each component's status, 0 for the others"),
                &["component", "status"],
            )?;
            for c in std::iter::once(&d.root).chain(&d.root.children) {
                for s in ALL_HEALTH_STATUSES {
                    let value = i64::from(c.status == s);
                    health.with_label_values(&[c.name.as_str(), &s.label().to_ascii_lowercase()]).set(value);
                }
            }
            let checked = prometheus::Gauge::new("kmf_health_checked_timestamp_seconds", "When the diagnosis ran")?;
            checked.set(d.checked_at.0 as f64 / 1000.0);
            scrape.register(Box::new(health))?;
            scrape.register(Box::new(checked))?;
        }
        let mut families = self.registry.gather();
        families.extend(scrape.gather());
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The canonical name of a numeric gRPC status code ("OK", "NOT_FOUND", ...).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::exchange::RequestStatus;
    use crate::domain::health::{Component, HealthStatus};
    use crate::domain::ids::KeyId;
    use crate::domain::ids::UnixMillis;
    use crate::domain::key::KeyState;
    use crate::domain::rekey::KeyDebt;

    #[test]
    fn renders_rpc_metrics_and_store_gauges() {
        let m = Metrics::try_new().unwrap();
        m.observe("/kmf.v1.Instance/Info", "OK", Duration::from_millis(3));
        m.observe("/kmf.v1.Instance/Info", "PERMISSION_DENIED", Duration::from_millis(1));
        let counts = StoreCounts {
            requests: vec![(ExchangeRole::Target, RequestStatus::ErrorOnRemoteInstance, 2)],
            keys: vec![(KeyState::Active, 3)],
            audit_entries: 7,
            rekey_debt: vec![KeyDebt {
                key_id: KeyId::parse("0123456789abcdef0123456789abcdef:pay:v1").unwrap(),
                records: 40,
            }],
        };
        assert!(!m.render(&counts, None).unwrap().contains("kmf_health"), "no diagnosis ran yet");
        let signer = Component::leaf("signer", HealthStatus::Malfunction, "KEK unusable");
        let store = Component::leaf("store", HealthStatus::Operational, "ok");
        let diagnosis =
            Diagnosis { checked_at: UnixMillis(1_500), root: Component::parent("kmf", "x", vec![signer, store]) };
        let text = m.render(&counts, Some(&diagnosis)).unwrap();
        for line in [
            r#"kmf_health{component="signer",status="malfunction"} 1"#,
            r#"kmf_health{component="signer",status="operational"} 0"#,
            r#"kmf_health{component="store",status="operational"} 1"#,
            r#"kmf_health{component="kmf",status="degraded"} 1"#,
            "kmf_health_checked_timestamp_seconds 1.5",
            r#"kmf_rpc_requests_total{code="OK",method="/kmf.v1.Instance/Info"} 1"#,
            r#"kmf_rpc_requests_total{code="PERMISSION_DENIED",method="/kmf.v1.Instance/Info"} 1"#,
            r#"kmf_rpc_duration_seconds_count{method="/kmf.v1.Instance/Info"} 2"#,
            r#"kmf_exchange_requests{role="target",status="error_on_remote_instance"} 2"#,
            r#"kmf_keys{state="active"} 3"#,
            "kmf_audit_entries 7",
            r#"kmf_rekey_debt{key_id="0123456789abcdef0123456789abcdef:pay:v1"} 40"#,
            "kmf_rekey_debt_records 40",
            "# TYPE kmf_rpc_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!((code_name(0), code_name(5), code_name(99)), ("OK", "NOT_FOUND", "UNKNOWN"));
    }
}
