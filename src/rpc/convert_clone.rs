//! Clone targets and snapshot parts between protobuf and the domain. The
//! receiving side checks everything it parses (names, ids, enums), as for
//! any other peer input.

use crate::domain::DomainError;
use crate::domain::clone::{CloneRun, CloneTarget, GrantBasis, SnapshotCatalog, SnapshotHeader, SnapshotPart};
use crate::domain::clone_exchange::{CloneExchange, ExchangePlan, frequency_of};
use crate::domain::clone_schedule::{Cadence, CloneSchedule};
use crate::domain::ids::{KeyId, Name, SysId, UnixMillis};
use crate::domain::lifecycle::LifecycleDefinition;
use crate::domain::policy::ApprovalType;
use crate::domain::property::Property;
use crate::domain::record::{RecordAddress, StoredRecord};
use crate::domain::spec::{Module, Spec};
use crate::rpc::convert::{self, from_ts, ts};
use crate::rpc::convert_policy::{policy_from, policy_pb};
use crate::rpc::pb;
use crate::rpc::pb::snapshot_part::Part;

pub fn clone_info(r: &CloneRun) -> pb::CloneInfo {
    pb::CloneInfo {
        clone_id: r.id.to_string(),
        source_sys_id: r.source.to_string(),
        source_host: r.source_host.to_string(),
        state: r.state.label().to_owned(),
        records_total: r.records_total,
        records_copied: r.records_copied,
        records_per_second: r.rate(),
        started_at: Some(ts(r.started_at)),
        updated_at: Some(ts(r.updated_at)),
        finished_at: r.finished_at.map(ts),
        error: r.error.clone().unwrap_or_default(),
    }
}

fn plan_pb(p: &ExchangePlan) -> pb::ExchangePlan {
    pb::ExchangePlan {
        frequency: convert::frequency(p.frequency()) as i32,
        spec_names: p.specs.iter().map(ToString::to_string).collect(),
        rekey_after_import: p.rekey,
    }
}

fn plan_from(p: &pb::ExchangePlan) -> Result<ExchangePlan, DomainError> {
    Ok(ExchangePlan {
        approval: clone_approval_from(p.frequency, "exchange.frequency")?,
        specs: p.spec_names.iter().map(|s| Name::parse(s, "exchange.spec_names")).collect::<Result<_, _>>()?,
        rekey: p.rekey_after_import,
    })
}

/// ONE_TIME_CLONE or RECURRING_CLONE; any other frequency is refused.
pub fn clone_approval_from(frequency: i32, field: &'static str) -> Result<ApprovalType, DomainError> {
    match pb::Frequency::try_from(frequency) {
        Ok(pb::Frequency::OneTimeClone) => Ok(ApprovalType::OneTime),
        Ok(pb::Frequency::RecurringClone) => Ok(ApprovalType::Recurring),
        _ => Err(DomainError::invalid(field, "set ONE_TIME_CLONE or RECURRING_CLONE")),
    }
}

pub fn clone_exchange(c: &CloneExchange) -> pb::CloneExchange {
    pb::CloneExchange {
        target_sys_id: c.target.sys_id.to_string(),
        target_host: c.target.host.to_string(),
        frequency: convert::frequency(frequency_of(c.approval)) as i32,
        spec_names: c.specs.iter().map(ToString::to_string).collect(),
        rekey_after_import: c.rekey,
        policies: c.policies.iter().map(|(m, p)| format!("{m}/{p}")).collect(),
        created_at: Some(ts(c.created_at)),
        created_by: c.created_by.clone(),
        used_by_request_id: c.used.as_ref().map(|u| u.request.to_string()).unwrap_or_default(),
        used_at: c.used.as_ref().map(|u| ts(u.at)),
    }
}

pub fn clone_target(t: &CloneTarget, basis: GrantBasis) -> pb::CloneTarget {
    pb::CloneTarget {
        sys_id: t.sys_id.to_string(),
        host: t.host.to_string(),
        added_at: Some(ts(t.added_at)),
        added_by: t.added_by.clone(),
        authorised_by: match basis {
            GrantBasis::Registered => "registered".into(),
            GrantBasis::Configuration => "configuration".into(),
        },
    }
}

fn stored_property(p: &Property) -> pb::Property {
    pb::Property {
        name: p.name.clone(),
        value: p.value.clone(),
        r#type: crate::domain::property::schema(&p.name).0.as_str().to_owned(),
        is_default: false,
        updated_at: Some(ts(p.updated_at)),
        updated_by: p.updated_by.clone(),
    }
}

fn record(r: &StoredRecord) -> pb::SnapshotRecord {
    pb::SnapshotRecord {
        table: r.address.table.to_string(),
        field: r.address.field.to_string(),
        record_id: r.address.record_id.clone(),
        ciphertext: r.ciphertext.clone(),
        key_id: r.key_id.to_string(),
        updated_at: Some(ts(r.updated_at)),
    }
}

pub fn snapshot_part(part: &SnapshotPart) -> pb::SnapshotPart {
    let part = match part {
        SnapshotPart::Header(h) => Part::Header(pb::SnapshotHeader {
            source_sys_id: h.source.to_string(),
            taken_at: Some(ts(h.taken_at)),
            records: h.records,
            exchange: h.exchange.as_ref().map(plan_pb),
        }),
        SnapshotPart::Catalog(c) => Part::Catalog(pb::SnapshotCatalog {
            modules: c.modules.iter().map(convert::module).collect(),
            specs: c.specs.iter().map(convert::spec).collect(),
            policies: c.policies.iter().map(policy_pb).collect(),
            properties: c.properties.iter().map(stored_property).collect(),
        }),
        SnapshotPart::Records(r) => Part::Records(pb::SnapshotRecords { records: r.iter().map(record).collect() }),
        SnapshotPart::End { records, grant } => {
            Part::End(pb::SnapshotEnd { records: *records, grant_id: grant.clone().unwrap_or_default() })
        }
    };
    pb::SnapshotPart { part: Some(part) }
}

fn time(t: &Option<prost_types::Timestamp>, field: &'static str) -> Result<UnixMillis, DomainError> {
    t.as_ref().map(from_ts).ok_or_else(|| DomainError::malformed(field, "missing"))
}

fn lifetime(d: &Option<prost_types::Duration>, field: &'static str) -> Result<Option<i64>, DomainError> {
    convert::opt_duration(d, field)
}

fn spec_from(s: &pb::Spec) -> Result<Spec, DomainError> {
    let spec = Spec {
        name: convert::name(&s.name, "spec")?,
        module: convert::name(&s.module, "module")?,
        purpose: convert::purpose_from(s.purpose)?,
        algorithm: convert::algorithm_from(s.algorithm)?,
        key_size_bits: s.key_size_bits,
        equality_preserving: s.equality_preserving,
        exportable: s.exportable,
        created_at: time(&s.created_at, "spec.created_at")?,
        lifecycle: LifecycleDefinition {
            expire_after: lifetime(&s.expire_after, "spec.expire_after")?,
            destroy_after_idle: lifetime(&s.destroy_after_idle, "spec.destroy_after_idle")?,
        },
    };
    // The same checks a CreateSpec passes.
    crate::domain::spec::SpecChoice::with_defaults(
        Some(spec.purpose),
        Some(spec.algorithm),
        Some(spec.key_size_bits),
        spec.equality_preserving,
    )?;
    Ok(spec)
}

fn property_from(p: &pb::Property) -> Result<Property, DomainError> {
    crate::domain::property::validate_name(&p.name)?;
    Ok(Property {
        name: p.name.clone(),
        value: crate::domain::property::validate_value(&p.name, &p.value)?,
        updated_at: time(&p.updated_at, "property.updated_at")?,
        updated_by: p.updated_by.clone(),
    })
}

fn record_from(r: &pb::SnapshotRecord) -> Result<StoredRecord, DomainError> {
    Ok(StoredRecord {
        address: RecordAddress::parse(&r.table, &r.field, &r.record_id)?,
        ciphertext: r.ciphertext.clone(),
        key_id: KeyId::parse(&r.key_id)?,
        updated_at: time(&r.updated_at, "record.updated_at")?,
    })
}

fn catalog_from(c: &pb::SnapshotCatalog) -> Result<SnapshotCatalog, DomainError> {
    let module = |m: &pb::Module| -> Result<Module, DomainError> {
        Ok(Module { name: convert::name(&m.name, "module")?, created_at: time(&m.created_at, "module.created_at")? })
    };
    let policy = |p: &pb::AccessPolicy| {
        let mut out = policy_from(p)?;
        out.active = p.active;
        out.created_at = time(&p.created_at, "policy.created_at")?;
        Ok::<_, DomainError>(out)
    };
    Ok(SnapshotCatalog {
        modules: c.modules.iter().map(module).collect::<Result<_, _>>()?,
        specs: c.specs.iter().map(spec_from).collect::<Result<_, _>>()?,
        policies: c.policies.iter().map(policy).collect::<Result<_, _>>()?,
        properties: c.properties.iter().map(property_from).collect::<Result<_, _>>()?,
    })
}

pub fn snapshot_part_from(p: &pb::SnapshotPart) -> Result<SnapshotPart, DomainError> {
    Ok(match p.part.as_ref().ok_or_else(|| DomainError::malformed("snapshot part", "empty"))? {
        Part::Header(h) => SnapshotPart::Header(SnapshotHeader {
            source: SysId::parse(&h.source_sys_id)?,
            taken_at: time(&h.taken_at, "header.taken_at")?,
            records: h.records,
            exchange: h.exchange.as_ref().map(plan_from).transpose()?,
        }),
        Part::Catalog(c) => SnapshotPart::Catalog(catalog_from(c)?),
        Part::Records(r) => SnapshotPart::Records(r.records.iter().map(record_from).collect::<Result<_, _>>()?),
        Part::End(e) => {
            SnapshotPart::End { records: e.records, grant: crate::domain::clone::parse_grant_id(&e.grant_id)? }
        }
    })
}

pub fn clone_schedule(s: &CloneSchedule) -> pb::CloneSchedule {
    pb::CloneSchedule {
        name: s.name.to_string(),
        source_sys_id: s.source.to_string(),
        source_host: s.source_host.to_string(),
        every: s.cadence.every_millis().map(convert::duration),
        cron: s.cadence.cron_text().unwrap_or_default().to_owned(),
        next_run_at: Some(ts(s.next_run_at)),
        created_at: Some(ts(s.created_at)),
        created_by: s.created_by.clone(),
        runs: s.runs,
        skipped: s.skipped,
        last_run_at: s.last_run_at.map(ts),
        last_clone_id: s.last_clone.as_ref().map(ToString::to_string).unwrap_or_default(),
        last_outcome: s.last_outcome.clone().unwrap_or_default(),
    }
}

/// Exactly one of an interval and a cron expression.
pub fn cadence_from(every: &Option<prost_types::Duration>, cron: &str) -> Result<Cadence, DomainError> {
    match (convert::opt_duration(every, "every")?, cron.trim()) {
        (Some(millis), "") => Cadence::every(millis),
        (None, cron) if !cron.is_empty() => Cadence::cron(cron),
        (Some(_), _) => Err(DomainError::invalid("cron", "give either every or cron, not both")),
        (None, _) => Err(DomainError::invalid("every", "give an interval (every) or a cron expression (cron)")),
    }
}
