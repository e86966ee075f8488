//! One type for every request the proxy answers itself instead of
//! forwarding: framing errors, MCP header errors, auth refusals, unknown
//! sessions, no healthy backend, backend failures.
//!
//! Contract: each routing phase of a request returns `Result<_, Reject>`;
//! [`Connection`](crate::Connection) turns a `Reject` into exactly one
//! response (a JSON-RPC error body with the status, the extra fields and
//! `Connection: close` unless keep-alive) and exactly one count: the
//! error-kind counter when the reject has a kind, and the local-response
//! counter of its fault side.

use std::borrow::Cow;

use crate::auth::{self, Rejection};
use crate::http::HttpError;
use crate::mcp::McpError;
use crate::metrics::ErrorKind;
pub use crate::metrics::Fault;

/// A request the proxy answers itself. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status.
    pub status: u16,
    /// Error counter to bump (`None`: counted elsewhere, e.g. auth refusals
    /// by reason in the authenticator's own stats).
    pub kind: Option<ErrorKind>,
    /// Whose fault it is.
    pub fault: Fault,
    /// Whether the client connection stays open after the response.
    pub keep_alive: bool,
    /// The JSON-RPC error message.
    pub message: Cow<'static, str>,
    /// Extra response fields (`WWW-Authenticate`, `Retry-After`).
    pub fields: Vec<(&'static str, String)>,
}

impl Reject {
    /// A refusal that keeps the connection open.
    pub fn new(
        status: u16,
        kind: impl Into<Option<ErrorKind>>,
        fault: Fault,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            kind: kind.into(),
            fault,
            keep_alive: true,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// Keep the client connection open afterwards only if `keep` (and the
    /// reject allowed it).
    #[must_use]
    pub fn keep_alive_if(mut self, keep: bool) -> Self {
        self.keep_alive &= keep;
        self
    }

    /// Add a response field.
    #[must_use]
    pub fn with_field(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((name, value.into()));
        self
    }

    /// A framing error: after one the byte stream cannot be trusted, so the
    /// connection closes.
    pub fn framing(e: &HttpError) -> Self {
        let (status, kind) = match e {
            HttpError::HeadTooLarge(_) | HttpError::TooManyHeaders(_) => {
                (431, ErrorKind::HeaderTooLarge)
            }
            HttpError::BodyTooLarge(_) => (413, ErrorKind::BodyTooLarge),
            HttpError::Smuggling(_) => (400, ErrorKind::Smuggling),
            HttpError::UnsupportedCoding => (501, ErrorKind::UnsupportedCoding),
            HttpError::Malformed(_) => (400, ErrorKind::BadRequest),
        };
        Self::new(status, kind, Fault::Client, e.to_string()).keep_alive_if(false)
    }

    /// Invalid MCP headers: 400; a duplicate session id also closes (the
    /// request was ambiguous).
    pub fn mcp(e: &McpError) -> Self {
        Self::new(400, ErrorKind::BadMcpHeaders, Fault::Client, e.to_string())
            .keep_alive_if(!matches!(e, McpError::DuplicateSessionId))
    }

    /// 401/403 with the RFC 6750 challenge for `host`. Counted by the
    /// authenticator (by reason), not here.
    pub fn auth(r: Rejection, host: &str, missing_scopes: &[String]) -> Self {
        Self::new(r.status(), None, Fault::Client, r.description())
            .with_field("WWW-Authenticate", auth::challenge(r, host, missing_scopes))
    }

    /// 503: no backend may take the request right now.
    pub fn no_backend() -> Self {
        Self::new(
            503,
            ErrorKind::NoBackend,
            Fault::Proxy,
            "no healthy backend",
        )
        .with_field("Retry-After", "1")
    }

    /// 404: the session is unknown, expired, or its backend is gone; the
    /// client re-initializes.
    pub fn unknown_session(message: &'static str) -> Self {
        Self::new(404, ErrorKind::UnknownSession, Fault::Client, message)
    }

    /// A backend failure answered with `status` (502 or 504).
    pub fn backend(status: u16, kind: ErrorKind, message: &'static str) -> Self {
        Self::new(status, kind, Fault::Backend, message)
    }
}

/// The JSON-RPC error body of a response the proxy makes itself.
pub fn jsonrpc_error_body(status: u16, message: &str) -> Vec<u8> {
    let code = match status {
        404 => -32001,
        400 | 413 | 431 => -32600,
        _ => -32603,
    };
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_errors_close_with_their_status() {
        let cases = [
            (HttpError::HeadTooLarge(1), 431, ErrorKind::HeaderTooLarge),
            (HttpError::TooManyHeaders(1), 431, ErrorKind::HeaderTooLarge),
            (HttpError::BodyTooLarge(1), 413, ErrorKind::BodyTooLarge),
            (HttpError::Smuggling("x"), 400, ErrorKind::Smuggling),
            (
                HttpError::UnsupportedCoding,
                501,
                ErrorKind::UnsupportedCoding,
            ),
            (HttpError::Malformed("x"), 400, ErrorKind::BadRequest),
        ];
        for (e, status, kind) in cases {
            let r = Reject::framing(&e);
            assert_eq!(
                (r.status, r.kind, r.fault),
                (status, Some(kind), Fault::Client)
            );
            assert!(!r.keep_alive, "{e:?}");
        }
    }

    #[test]
    fn keep_alive_only_narrows() {
        let r = Reject::mcp(&McpError::DuplicateSessionId).keep_alive_if(true);
        assert!(!r.keep_alive);
        let r = Reject::mcp(&McpError::BadSessionId);
        assert!(r.keep_alive);
        assert!(!r.keep_alive_if(false).keep_alive);
    }

    #[test]
    fn no_backend_says_when_to_retry() {
        let r = Reject::no_backend();
        assert_eq!((r.status, r.fault), (503, Fault::Proxy));
        assert_eq!(r.fields, vec![("Retry-After", "1".to_string())]);
    }
}
