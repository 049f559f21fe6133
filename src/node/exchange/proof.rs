//! The proof of an exchange: the receipt the target signed after importing,
//! kept with the request on both sides, with the certificate to check its
//! signature against (the target's).

use super::Exchange;
use crate::domain::bundle::Receipt;
use crate::domain::exchange::{ExchangeRequest, ExchangeRole, SignedBlob};
use crate::error::AppResult;

pub struct RequestProof {
    pub receipt: SignedBlob,
    pub decoded: Receipt,
    /// The signer's certificate (DER): on the source, the one the target
    /// presented; on the target, its own (empty when unknown).
    pub signer_certificate: Vec<u8>,
}

impl Exchange {
    /// The request's proof, once its keys were imported.
    pub fn proof_of(&self, req: &ExchangeRequest) -> AppResult<Option<RequestProof>> {
        let Some(receipt) = &req.receipt else { return Ok(None) };
        let decoded = Receipt::decode(&receipt.bytes)?;
        let signer_certificate = match req.role {
            ExchangeRole::Source => req.peer_certificate.clone(),
            ExchangeRole::Target => self.certificate_der.clone(),
        };
        Ok(Some(RequestProof { receipt: receipt.clone(), decoded, signer_certificate }))
    }
}
