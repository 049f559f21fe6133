//! System property rows.

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::records::decode;
use super::tuple::{KeyReader, str_key};
use super::{PropertyStore, Result, RowKind, StoreError, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::ids::UnixMillis;
use crate::domain::property::Property;

#[derive(Serialize, Deserialize)]
pub(super) struct PropertyRow {
    v: u8,
    value: String,
    updated_at: i64,
    updated_by: String,
}

impl From<&Property> for PropertyRow {
    fn from(p: &Property) -> Self {
        PropertyRow { v: 1, value: p.value.clone(), updated_at: p.updated_at.0, updated_by: p.updated_by.clone() }
    }
}

/// The property `name` (its row's key) from its row.
pub(super) fn property_from(name: String, r: PropertyRow) -> Property {
    Property { name, value: r.value, updated_at: UnixMillis(r.updated_at), updated_by: r.updated_by }
}

impl PropertyStore {
    pub async fn property(&self, name: String) -> Result<Option<Property>> {
        self.store.read(move |tx| property_in(tx, &name)).await
    }

    pub async fn properties(&self) -> Result<Vec<Property>> {
        self.store.read(properties_in).await
    }

    /// Stores `p` conditionally: the stored property must still be `read`
    /// (None: it was unset), else `Stale` (the caller reads again). With the
    /// audit entry `audit` makes from the value it replaces.
    pub async fn put_property_checked(
        &self,
        read: Option<Property>,
        p: Property,
        audit: impl Fn(Option<&str>) -> AuditEvent + Send + 'static,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                let previous = property_in(tx, &p.name)?;
                if previous != read {
                    return Err(StoreError::Stale { kind: RowKind::Property, id: p.name.clone() });
                }
                put_property_in(tx, &p)?;
                append_audit(tx, &[audit(previous.as_ref().map(|r| r.value.as_str()))])
            })
            .await
    }
}

pub(super) fn property_in(tx: &mut dyn ReadTxn, name: &str) -> Result<Option<Property>> {
    let row: Option<PropertyRow> = get_row(tx, Table::Properties, &str_key(name))?;
    Ok(row.map(|r| property_from(name.to_owned(), r)))
}

pub(super) fn properties_in(tx: &mut dyn ReadTxn) -> Result<Vec<Property>> {
    let mut out = Vec::new();
    tx.visit(Table::Properties, &KeyRange::all(), &mut |k, v| {
        out.push(property_from(KeyReader::new(k).str()?, decode(v)?));
        Ok(Visit::Continue)
    })?;
    Ok(out)
}

pub(super) fn put_property_in(tx: &mut dyn WriteTxn, p: &Property) -> Result<()> {
    put_row(tx, Table::Properties, &str_key(&p.name), &PropertyRow::from(p))
}
