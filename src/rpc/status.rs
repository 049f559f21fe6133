//! The one mapping from application errors to gRPC status. Internal details
//! are logged with an error id and never sent to the caller.

use tonic::{Code, Status};

use crate::domain::DomainError;
use crate::error::{AppError, PeerError};
use crate::signer::CryptoError;
use crate::store::StoreError;

fn domain(e: &DomainError) -> Code {
    match e {
        DomainError::InvalidArgument { .. } | DomainError::Malformed { .. } => Code::InvalidArgument,
        DomainError::NotFound { .. } => Code::NotFound,
        DomainError::AlreadyExists { .. } => Code::AlreadyExists,
        DomainError::FailedPrecondition(_) => Code::FailedPrecondition,
        DomainError::PermissionDenied(_) => Code::PermissionDenied,
    }
}

impl From<AppError> for Status {
    fn from(err: AppError) -> Status {
        let err = match err {
            AppError::Item { at, source } => {
                let inner = Status::from(*source);
                return Status::new(inner.code(), format!("{at}: {}", inner.message()));
            }
            other => other,
        };
        match &err {
            AppError::Domain(e) => Status::new(domain(e), e.to_string()),
            AppError::Peer(PeerError::Refused(e)) => Status::new(domain(e), err.to_string()),
            AppError::Peer(PeerError::Unreachable { .. }) => Status::unavailable(err.to_string()),
            AppError::Store(StoreError::AlreadyExists { .. }) => Status::already_exists(err.to_string()),
            // A conditional write lost to a concurrent change: read again and retry.
            AppError::Store(StoreError::Stale { .. }) => {
                Status::failed_precondition(format!("{err}; read it again and retry"))
            }
            AppError::Store(StoreError::Missing { .. }) => Status::not_found(err.to_string()),
            // Only an approval without a person meets it, and leaves the
            // request to a person; were it to reach a caller, it is theirs to act on.
            AppError::Store(StoreError::GrantRefused(_)) => Status::failed_precondition(err.to_string()),
            AppError::Aborted(_) => Status::aborted(err.to_string()),
            AppError::Crypto(CryptoError::BadSignature) => Status::permission_denied(err.to_string()),
            AppError::Store(_) | AppError::Crypto(_) | AppError::Internal(_) | AppError::Item { .. } => {
                let error_id = hex::encode(crate::signer::primitives::random_bytes::<6>());
                tracing::error!(%error_id, error = %err, "internal error");
                Status::internal(format!("internal error (error id {error_id}; see the daemon log)"))
            }
        }
    }
}

/// Turns a status received from a peer back into a `PeerError`.
pub fn peer_error(host: &str, status: &Status) -> PeerError {
    let msg = status.message().to_owned();
    let refused = |e| PeerError::Refused(e);
    // The peer's message already begins with what our own error would say
    // ("permission denied: ..."): keep it once.
    let unprefixed = |prefix: &str| msg.strip_prefix(prefix).unwrap_or(&msg).to_owned();
    match status.code() {
        Code::InvalidArgument => refused(DomainError::invalid("request", unprefixed("invalid request: "))),
        Code::NotFound => refused(DomainError::NotFound { what: "object on peer", id: msg }),
        Code::AlreadyExists => refused(DomainError::AlreadyExists { what: "object on peer", id: msg }),
        Code::FailedPrecondition => refused(DomainError::FailedPrecondition(msg)),
        Code::PermissionDenied | Code::Unauthenticated => {
            refused(DomainError::PermissionDenied(unprefixed("permission denied: ")))
        }
        _ => PeerError::Unreachable { host: host.to_owned(), reason: format!("{:?}: {msg}", status.code()) },
    }
}

impl From<DomainError> for Status {
    fn from(err: DomainError) -> Status {
        AppError::Domain(err).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_refusal_names_its_reason_once() {
        let denied = Status::permission_denied("permission denied: clone target 0123 is not authorised");
        let err = AppError::Peer(peer_error("peer:1", &denied));
        assert_eq!(err.to_string(), "peer refused: permission denied: clone target 0123 is not authorised");
        let invalid = Status::invalid_argument("invalid request: no specs");
        assert_eq!(peer_error("peer:1", &invalid).to_string(), "peer refused: invalid request: no specs");
        // A message without the prefix is kept whole.
        let bare = Status::permission_denied("instance certificate required");
        assert_eq!(
            peer_error("peer:1", &bare).to_string(),
            "peer refused: permission denied: instance certificate required"
        );
    }

    #[test]
    fn store_errors_map_by_variant_and_a_backend_failure_says_nothing_of_itself() {
        use crate::store::{BackendError, RowKind};
        let status = |e: StoreError| Status::from(AppError::Store(e));
        let stale = status(StoreError::Stale { kind: RowKind::Spec, id: "pay".into() });
        assert_eq!(stale.code(), Code::FailedPrecondition);
        assert_eq!(stale.message(), "spec pay changed since it was read; read it again and retry");
        assert_eq!(status(StoreError::Missing { kind: RowKind::Rekey, id: "r1".into() }).code(), Code::NotFound);
        let dup = status(StoreError::AlreadyExists { kind: RowKind::CloneSchedule, id: "nightly".into() });
        assert_eq!((dup.code(), dup.message()), (Code::AlreadyExists, "clone schedule already exists: nightly"));
        assert_eq!(status(StoreError::GrantRefused("no clone grant".into())).code(), Code::FailedPrecondition);
        let disk = status(BackendError::Engine("I/O error at /var/lib/kmf/kmf.redb".into()).into());
        assert_eq!(disk.code(), Code::Internal);
        assert!(disk.message().starts_with("internal error (error id ") && !disk.message().contains("/var/lib"));
    }
}
