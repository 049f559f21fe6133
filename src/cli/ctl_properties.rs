//! kmfctl: system properties.

use clap::Subcommand;

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
            let r = ops.properties.get_property(pb::GetPropertyRequest { name }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            r.property.into_iter().collect()
        }
        PropertyCommand::Set { name, value } => {
            let r = ops.properties.set_property(pb::SetPropertyRequest { name, value }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            r.property.into_iter().collect()
        }
        PropertyCommand::List => {
            let r = ops.properties.list_properties(pb::ListPropertiesRequest {}).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            r.properties
        }
    };
    let rows: Vec<_> = list
        .iter()
        .map(|p: &pb::Property| {
            let by = if p.is_default { "(default)".to_owned() } else { p.updated_by.clone() };
            vec![p.name.clone(), p.value.clone(), p.r#type.clone(), by, print::time(&p.updated_at)]
        })
        .collect();
    print::table(&["NAME", "VALUE", "TYPE", "SET_BY", "UPDATED"], &rows);
    Ok(())
}
