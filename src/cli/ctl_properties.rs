//! kmfctl: system properties.

use clap::Subcommand;
use serde_json::json;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum PropertyCommand {
    Get { name: String },
    Set { name: String, value: String },
    List,
}

pub async fn property(ops: &mut Operator, cmd: PropertyCommand, as_json: bool) -> anyhow::Result<()> {
    let list = match cmd {
        PropertyCommand::Get { name } => {
            vec![
                ops.properties
                    .get_property(pb::GetPropertyRequest { name })
                    .await?
                    .into_inner()
                    .property
                    .unwrap_or_default(),
            ]
        }
        PropertyCommand::Set { name, value } => {
            let req = pb::SetPropertyRequest { name, value };
            vec![ops.properties.set_property(req).await?.into_inner().property.unwrap_or_default()]
        }
        PropertyCommand::List => {
            ops.properties.list_properties(pb::ListPropertiesRequest {}).await?.into_inner().properties
        }
    };
    if as_json {
        let v: Vec<_> = list
            .iter()
            .map(|p| {
                json!({"name": p.name, "value": p.value, "type": p.r#type, "is_default": p.is_default,
                "updated_at": print::time(&p.updated_at), "updated_by": p.updated_by})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        let rows: Vec<_> = list
            .iter()
            .map(|p| {
                let by = if p.is_default { "(default)".to_owned() } else { p.updated_by.clone() };
                vec![p.name.clone(), p.value.clone(), p.r#type.clone(), by, print::time(&p.updated_at)]
            })
            .collect();
        print::table(&["NAME", "VALUE", "TYPE", "SET_BY", "UPDATED"], &rows);
    }
    Ok(())
}
