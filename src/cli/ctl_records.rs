//! `kmfctl record put|get|list|delete|put-many|digest`: encrypted records
//! addressed by (table, field, record id), the address being the associated
//! data (PutRecord, GetRecord, ListRecords, DeleteRecord, PutRecords,
//! DigestRecords).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as b64;
use clap::{Args, Subcommand};

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

/// Records per PutRecords call: the daemon's limit.
pub const PUT_MANY_AT_MOST: usize = 1_000;

#[derive(Subcommand, Debug)]
pub enum RecordCommand {
    /// Encrypt and store one record (replacing one at the same address).
    Put {
        #[command(flatten)]
        address: Address,
        #[arg(long)]
        spec: String,
        /// The plaintext as text.
        #[arg(long, conflicts_with = "base64", required_unless_present = "base64")]
        text: Option<String>,
        /// The plaintext as base64.
        #[arg(long)]
        base64: Option<String>,
    },
    /// Decrypt one record; prints its plaintext as text (`--json`: the
    /// GetRecord response, plaintext in base64).
    Get {
        #[command(flatten)]
        address: Address,
    },
    /// Stored records (address, key, time), every page; `--json` prints one
    /// ListRecords response holding every record.
    List {
        #[arg(long, default_value = "")]
        table: String,
        #[arg(long, default_value = "")]
        field: String,
    },
    /// Delete one record (NOT_FOUND if there is none at the address).
    Delete {
        #[command(flatten)]
        address: Address,
    },
    /// Store the records of a JSON lines file, all or nothing: one PutRecord
    /// request per line, {"address": {"table": T, "field": F, "recordId": ID},
    /// "spec": NAME, "plaintext": BASE64} (--spec for lines naming none). At
    /// most 1,000 lines (one PutRecords call).
    PutMany {
        /// The JSON lines file ("-" for stdin).
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        spec: Option<String>,
    },
    /// Count and SHA-256 over every record's address and plaintext: equal on
    /// two instances exactly when they hold the same plaintexts.
    Digest {
        #[arg(long, default_value = "")]
        table: String,
        #[arg(long, default_value = "")]
        field: String,
    },
}

#[derive(Args, Debug)]
pub struct Address {
    #[arg(long)]
    table: String,
    #[arg(long)]
    field: String,
    #[arg(long = "id")]
    record_id: String,
}

impl From<Address> for pb::RecordAddress {
    fn from(a: Address) -> Self {
        pb::RecordAddress { table: a.table, field: a.field, record_id: a.record_id }
    }
}

pub async fn record(ops: &mut Operator, cmd: RecordCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        RecordCommand::Put { address, spec, text, base64 } => {
            let plaintext = match (text, base64) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(encoded)) => b64.decode(encoded.trim()).context("--base64 is not base64")?,
                (None, None) => anyhow::bail!("give --text or --base64"),
            };
            let req = pb::PutRecordRequest { address: Some(address.into()), spec, plaintext };
            let r = ops.crypto.put_record(req).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print_records(&r.record.into_iter().collect::<Vec<_>>());
        }
        RecordCommand::Get { address } => {
            let r = ops.crypto.get_record(pb::GetRecordRequest { address: Some(address.into()) }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            println!("{}", String::from_utf8_lossy(&r.plaintext));
        }
        RecordCommand::List { table, field } => {
            let (mut records, mut page_token) = (Vec::new(), String::new());
            loop {
                let ask =
                    pb::ListRecordsRequest { table: table.clone(), field: field.clone(), page_token, page_size: 1_000 };
                let page = ops.crypto.list_records(ask).await?.into_inner();
                records.extend(page.records);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if as_json {
                return print::json(&pb::ListRecordsResponse { records, next_page_token: String::new() });
            }
            print_records(&records);
        }
        RecordCommand::Delete { address } => {
            let address: pb::RecordAddress = address.into();
            let label = format!("{}/{}/{}", address.table, address.field, address.record_id);
            let r = ops.crypto.delete_record(pb::DeleteRecordRequest { address: Some(address) }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            println!("record {label} deleted");
        }
        RecordCommand::PutMany { input, spec } => {
            let records = read_records(&input, spec.as_deref().unwrap_or_default())?;
            let r = ops.crypto.put_records(pb::PutRecordsRequest { records }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print_records(&r.records);
        }
        RecordCommand::Digest { table, field } => {
            let r = ops.crypto.digest_records(pb::DigestRecordsRequest { table, field }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            println!("{} record(s), sha256 {}", r.records, hex::encode(&r.sha256));
        }
    }
    Ok(())
}

fn read_records(input: &PathBuf, spec: &str) -> anyhow::Result<Vec<pb::PutRecordRequest>> {
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(input).with_context(|| format!("--in {}", input.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut records = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let mut record: pb::PutRecordRequest =
            print::parse_json(&line).with_context(|| format!("line {}", index + 1))?;
        if record.spec.is_empty() {
            record.spec = spec.to_owned();
        }
        records.push(record);
        anyhow::ensure!(
            records.len() <= PUT_MANY_AT_MOST,
            "more than {PUT_MANY_AT_MOST} records: PutRecords stores at most that many at once"
        );
    }
    Ok(records)
}

fn print_records(list: &[pb::RecordInfo]) {
    let rows: Vec<_> = list
        .iter()
        .map(|r| {
            let a = r.address.clone().unwrap_or_default();
            vec![a.table, a.field, a.record_id, r.key_id.clone(), print::time(&r.updated_at)]
        })
        .collect();
    print::table(&["TABLE", "FIELD", "RECORD_ID", "KEY_ID", "UPDATED"], &rows);
}
