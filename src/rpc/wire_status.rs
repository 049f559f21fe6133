//! Statuses tonic makes before a handler runs, put right for callers: a
//! request message that does not decode is the caller's mistake
//! (INVALID_ARGUMENT, not tonic's INTERNAL), and one over the size limit is
//! RESOURCE_EXHAUSTED (gRPC's code for it, not tonic's OUT_OF_RANGE). Both
//! come back "trailers-only", with `grpc-status` in the response headers,
//! which is where this tower `map_response` step rewrites them.

use tonic::Code;
use tonic::codegen::http::{HeaderValue, Response};

/// tonic-prost's message for a request that does not decode.
const UNDECODABLE: &str = "failed to decode Protobuf message";
/// tonic's message for a request over `max_decoding_message_size`.
const TOO_LARGE: &str = "decoded message length too large";

/// The code a trailers-only status should carry, when tonic's is wrong.
fn corrected(code: i32, message: &str) -> Option<Code> {
    let message = message.replace("%20", " ");
    match Code::from(code) {
        Code::Internal if message.starts_with(UNDECODABLE) => Some(Code::InvalidArgument),
        Code::OutOfRange if message.contains(TOO_LARGE) => Some(Code::ResourceExhausted),
        _ => None,
    }
}

pub fn normalize<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if let Some(fixed) = code.and_then(|code| corrected(code, message)) {
        headers.insert("grpc-status", HeaderValue::from(fixed as i32));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_own_decode_and_size_statuses_change() {
        let cases = [
            (13, "failed to decode Protobuf message: invalid wire type", Some(Code::InvalidArgument)),
            (13, "failed%20to%20decode%20Protobuf%20message: x", Some(Code::InvalidArgument)),
            (
                11,
                "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
                Some(Code::ResourceExhausted),
            ),
            (13, "internal error (error id 0a0b; see the daemon log)", None),
            (11, "page out of range", None),
            (3, "failed to decode Protobuf message", None),
        ];
        for (code, message, want) in cases {
            assert_eq!(corrected(code, message), want, "{code} {message}");
        }
    }
}
