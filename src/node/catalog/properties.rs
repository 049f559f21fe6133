//! System properties: typed get, set (audited) and list.

use super::Catalog;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::property::{self, Property, PropertyType};
use crate::error::{AppError, AppResult};
use crate::node::context::reread_and_retry;

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
    pub async fn property(&self, name: String) -> AppResult<PropertyView> {
        property::validate_name(&name)?;
        let stored = self.properties.property(name.clone()).await?;
        view(&name, stored).ok_or_else(|| DomainError::not_found("property", &name).into())
    }

    pub async fn set_property(&self, caller: &Caller, name: String, value: String) -> AppResult<PropertyView> {
        property::validate_name(&name)?;
        let value = property::validate_value(&name, &value)?;
        let actor = caller.actor();
        if property::is_system_only(&name) {
            let why = format!("{name} is written by the system only (by the rekey that follows an import)");
            let entry =
                AuditEvent::new(self.now(), actor, "property.set", &name, Outcome::Refused).with_details(why.clone());
            self.audit_store.append_audit(vec![entry]).await?;
            return Err(DomainError::PermissionDenied(why).into());
        }
        // Conditional on the value read: a concurrent set makes it read and
        // write again.
        let written = reread_and_retry(format!("property {name}"), || async {
            let read = self.properties.property(name.clone()).await?;
            let p = Property {
                name: name.clone(),
                value: value.clone(),
                updated_at: self.now(),
                updated_by: actor.clone(),
            };
            let audit = {
                let (at, actor, name, value) = (p.updated_at, actor.clone(), name.clone(), value.clone());
                move |old: Option<&str>| {
                    AuditEvent::new(at, actor.clone(), "property.set", &name, Outcome::Success)
                        .with_details(format!("{} -> {value}", old.unwrap_or("(unset)")))
                }
            };
            self.properties.put_property_checked(read, p.clone(), audit).await?;
            Ok(p)
        })
        .await?;
        view(&name, Some(written)).ok_or_else(|| AppError::Internal("property vanished".into()))
    }

    /// Every stored property, plus the known ones at their defaults.
    pub async fn properties(&self) -> AppResult<Vec<PropertyView>> {
        let stored = self.properties.properties().await?;
        let mut out: Vec<PropertyView> = stored.into_iter().filter_map(|p| view(&p.name.clone(), Some(p))).collect();
        for known in [property::AUTO_KEY_EXCHANGE, property::REKEYED] {
            if !out.iter().any(|v| v.name == known)
                && let Some(v) = view(known, None)
            {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
