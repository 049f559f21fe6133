//! `kmfctl diag`: runs Instance.Diagnose and prints the components, coloured
//! when stdout is a terminal (green Operational, yellow Degraded, red
//! Malfunction, gray Disabled), or with `--json` the Diagnose response message. Exit code: 0 when the
//! instance is Operational or Disabled, 2 when Degraded, 3 on Malfunction.

use std::io::IsTerminal;
use std::process::ExitCode;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb::{self, ComponentStatus};

/// The instance is not healthy: kmfctl exits with this code (after printing).
#[derive(Debug, thiserror::Error)]
#[error("instance is {status}")]
pub struct Unhealthy {
    pub status: &'static str,
    pub code: u8,
}

/// The exit code for an error of `diag`, when it is `Unhealthy`.
pub fn exit_code(e: &anyhow::Error) -> Option<ExitCode> {
    e.downcast_ref::<Unhealthy>().map(|u| ExitCode::from(u.code))
}

pub async fn diag(ops: &mut Operator, as_json: bool) -> anyhow::Result<()> {
    let d = ops.instance.diagnose(pb::DiagnoseRequest {}).await?.into_inner();
    let status = ComponentStatus::try_from(d.status).unwrap_or(ComponentStatus::Unspecified);
    if as_json {
        print::json(&d)?;
    } else {
        print_table(&d, std::io::stdout().is_terminal());
    }
    match status {
        ComponentStatus::Operational | ComponentStatus::Disabled => Ok(()),
        ComponentStatus::Degraded => Err(Unhealthy { status: label(d.status), code: 2 }.into()),
        ComponentStatus::Malfunction => Err(Unhealthy { status: label(d.status), code: 3 }.into()),
        ComponentStatus::Unspecified => anyhow::bail!("the daemon answered without an overall status"),
    }
}

fn label(status: i32) -> &'static str {
    match ComponentStatus::try_from(status) {
        Ok(ComponentStatus::Operational) => "Operational",
        Ok(ComponentStatus::Degraded) => "Degraded",
        Ok(ComponentStatus::Malfunction) => "Malfunction",
        Ok(ComponentStatus::Disabled) => "Disabled",
        _ => "Unknown",
    }
}

/// `text` padded to `width`, in the status colour when `color` is set.
fn paint(status: i32, text: &str, width: usize, color: bool) -> String {
    let padded = format!("{text:<width$}");
    if !color {
        return padded;
    }
    let code = match ComponentStatus::try_from(status) {
        Ok(ComponentStatus::Operational) => "32",
        Ok(ComponentStatus::Degraded) => "33",
        Ok(ComponentStatus::Malfunction) => "31",
        _ => "90",
    };
    format!("\x1b[{code}m{padded}\x1b[0m")
}

fn print_table(d: &pb::DiagnoseResponse, color: bool) {
    // (indented name, status, message), parents before their children.
    let mut rows: Vec<(String, i32, String)> = Vec::new();
    for c in &d.components {
        rows.push((c.name.clone(), c.status, c.message.clone()));
        for child in &c.children {
            rows.push((format!("  {}", child.name), child.status, child.message.clone()));
        }
    }
    let name_w = rows.iter().map(|r| r.0.len()).chain([9]).max().unwrap_or(9);
    let status_w = 11;
    println!("kmf: {} (checked {})", paint(d.status, label(d.status), 0, color).trim_end(), print::time(&d.checked_at));
    println!("{:<name_w$}  {:<status_w$}  MESSAGE", "COMPONENT", "STATUS");
    for (name, status, message) in rows {
        println!("{name:<name_w$}  {}  {message}", paint(status, label(status), status_w, color));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_for_terminals() {
        let table = [
            (ComponentStatus::Operational, "\x1b[32mOperational\x1b[0m"),
            (ComponentStatus::Degraded, "\x1b[33mDegraded   \x1b[0m"),
            (ComponentStatus::Malfunction, "\x1b[31mMalfunction\x1b[0m"),
            (ComponentStatus::Disabled, "\x1b[90mDisabled   \x1b[0m"),
        ];
        for (status, want) in table {
            let s = status as i32;
            assert_eq!(paint(s, label(s), 11, true), want);
            assert_eq!(paint(s, label(s), 11, false), format!("{:<11}", label(s)));
        }
    }
}
