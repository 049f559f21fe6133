//! System property rows.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::records::{decode, encode};
use super::tables::PROPERTIES;
use super::{RedbStore, Result, append_audit};
use crate::domain::audit::AuditEvent;
use crate::domain::ids::UnixMillis;
use crate::domain::property::Property;

#[derive(Serialize, Deserialize)]
struct PropertyRow {
    v: u8,
    value: String,
    updated_at: i64,
    updated_by: String,
}

impl RedbStore {
    pub fn property(&self, name: &str) -> Result<Option<Property>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PROPERTIES)?;
        let row = t.get(name)?.map(|g| g.value().to_vec());
        row.map(|b| {
            let r: PropertyRow = decode(&b)?;
            Ok(Property {
                name: name.to_owned(),
                value: r.value,
                updated_at: UnixMillis(r.updated_at),
                updated_by: r.updated_by,
            })
        })
        .transpose()
    }

    pub fn properties(&self) -> Result<Vec<Property>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PROPERTIES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let r: PropertyRow = decode(v.value())?;
            out.push(Property {
                name: k.value().to_owned(),
                value: r.value,
                updated_at: UnixMillis(r.updated_at),
                updated_by: r.updated_by,
            });
        }
        Ok(out)
    }

    pub fn put_property(&self, p: &Property, audit: &[AuditEvent]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let row = PropertyRow {
                v: 1,
                value: p.value.clone(),
                updated_at: p.updated_at.0,
                updated_by: p.updated_by.clone(),
            };
            tx.open_table(PROPERTIES)?.insert(p.name.as_str(), encode(&row).as_slice())?;
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }
}
