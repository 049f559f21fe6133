//! Command-line front ends: `kmfd` (daemon) and `kmfctl` (operator CLI, which
//! includes the PKI commands and the quickstart).

mod ctl_batch;
pub(crate) mod ctl_bootstrap;
mod ctl_byok;
mod ctl_clone;
mod ctl_clone_exchange;
mod ctl_clone_schedule;
mod ctl_crypto;
mod ctl_diag;
mod ctl_exchange;
mod ctl_lifecycle;
mod ctl_pki;
mod ctl_policies;
mod ctl_properties;
mod ctl_records;
mod ctl_rekey;
pub mod kmfctl;
pub mod kmfd;
mod kmfd_dev;
mod print;
mod quickstart;
