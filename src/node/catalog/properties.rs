//! System properties: typed get, set (audited) and list.

use std::sync::Arc;

use super::Catalog;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::property::{self, Property, PropertyType};
use crate::node::context::Blocking;
use crate::store::StoreError;

/// How often a set reads again after a conditional write found its read
/// out of date (`StoreError::Stale`).
const WRITE_ATTEMPTS: usize = 3;

/// A property as read: stored, or its default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyView {
    pub name: String,
    pub value: String,
    pub kind: PropertyType,
    /// True when nothing was stored and `value` is the default.
    pub is_default: bool,
    pub stored: Option<Property>,
}

fn view(name: &str, stored: Option<Property>) -> Option<PropertyView> {
    let (kind, default) = property::schema(name);
    match (stored, default) {
        (Some(p), _) => Some(PropertyView {
            name: name.to_owned(),
            value: p.value.clone(),
            kind,
            is_default: false,
            stored: Some(p),
        }),
        (None, Some(d)) => {
            Some(PropertyView { name: name.to_owned(), value: d.to_owned(), kind, is_default: true, stored: None })
        }
        (None, None) => None,
    }
}

impl Catalog {
    pub async fn property(self: &Arc<Self>, name: String) -> crate::error::AppResult<PropertyView> {
        property::validate_name(&name)?;
        self.blocking(move |this| {
            let stored = this.store.property(&name)?;
            view(&name, stored).ok_or_else(|| DomainError::not_found("property", &name).into())
        })
        .await
    }

    pub async fn set_property(
        self: &Arc<Self>,
        caller: &Caller,
        name: String,
        value: String,
    ) -> crate::error::AppResult<PropertyView> {
        property::validate_name(&name)?;
        let value = property::validate_value(&name, &value)?;
        let actor = caller.actor();
        if property::is_system_only(&name) {
            let why = format!("{name} is written by the system only (by the rekey that follows an import)");
            let refusal = why.clone();
            self.blocking(move |this| {
                let entry =
                    AuditEvent::new(this.now(), actor, "property.set", &name, Outcome::Refused).with_details(refusal);
                Ok(this.store.append_audit(&[entry])?)
            })
            .await?;
            return Err(DomainError::PermissionDenied(why).into());
        }
        self.blocking(move |this| {
            // Conditional on the value read: a concurrent set makes it read
            // and write again, at most `WRITE_ATTEMPTS` times.
            for _ in 0..WRITE_ATTEMPTS {
                let read = this.store.property(&name)?;
                let p = Property {
                    name: name.clone(),
                    value: value.clone(),
                    updated_at: this.now(),
                    updated_by: actor.clone(),
                };
                let audit = |old: Option<&str>| {
                    AuditEvent::new(p.updated_at, actor.clone(), "property.set", &name, Outcome::Success)
                        .with_details(format!("{} -> {value}", old.unwrap_or("(unset)")))
                };
                match this.store.put_property_checked(read.as_ref(), &p, &audit) {
                    Err(StoreError::Stale { .. }) => continue,
                    other => other?,
                }
                return view(&name, Some(p))
                    .ok_or_else(|| crate::error::AppError::Internal("property vanished".into()));
            }
            Err(DomainError::FailedPrecondition(format!("property {name} keeps changing; try again")).into())
        })
        .await
    }

    /// Every stored property, plus the known ones at their defaults.
    pub async fn properties(self: &Arc<Self>) -> crate::error::AppResult<Vec<PropertyView>> {
        self.blocking(|this| {
            let stored = this.store.properties()?;
            let mut out: Vec<PropertyView> =
                stored.into_iter().filter_map(|p| view(&p.name.clone(), Some(p))).collect();
            for known in [property::AUTO_KEY_EXCHANGE, property::REKEYED] {
                if !out.iter().any(|v| v.name == known)
                    && let Some(v) = view(known, None)
                {
                    out.push(v);
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }
}
