//! The RPC edge: the only home of generated protobuf types. Services convert,
//! authorise, call the use-case service they hold and convert back; `status` maps every error to a
//! gRPC status in one place (`wire_status` puts right the few statuses tonic
//! makes before a handler runs); `peer` is the outbound client to other daemons;
//! `client` connects operators (kmfctl, tests) to a daemon; `health` makes
//! grpc.health.v1 follow the diagnosis.

pub mod caller;
pub mod client;
pub mod convert;
pub mod convert_clone;
pub mod convert_policy;
pub mod convert_rekey;
pub mod health;
pub mod peer;
pub mod probe;
pub mod services;
pub mod status;
pub mod wire_status;

/// Generated code for `proto/kmf/v1/kmf.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("kmf.v1");
    /// Descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kmf_descriptor");
}

/// Largest gRPC message a daemon accepts (a 10,000-key bundle is about 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
