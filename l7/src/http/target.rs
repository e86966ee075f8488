//! Request targets and `Host`: what the proxy forwards is origin-form with
//! a `Host` that agrees with it.
//!
//! - origin-form (`/path?query`) passes unchanged;
//! - `*` only with OPTIONS;
//! - absolute-form (`http://authority/path`) becomes origin-form, and the
//!   authority replaces `Host` (RFC 9112 §3.2.2: the target's authority
//!   wins);
//! - anything else (`mcp`, authority-form, another scheme, userinfo) is a
//!   400.

use super::HttpError;

/// The origin-form target, and the authority when the request used
/// absolute-form.
pub(super) fn normalize(method: &str, target: &str) -> Result<(String, Option<String>), HttpError> {
    if target.starts_with('/') {
        return Ok((target.to_string(), None));
    }
    if target == "*" && method == "OPTIONS" {
        return Ok((target.to_string(), None));
    }
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| {
            target
                .get(..scheme.len())
                .filter(|p| p.eq_ignore_ascii_case(scheme))
                .map(|_| &target[scheme.len()..])
        })
        .ok_or(HttpError::Malformed(
            "request target must be origin-form (/path) or absolute-form",
        ))?;
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || !valid_host(authority.as_bytes()) {
        return Err(HttpError::Malformed(
            "invalid authority in the request target",
        ));
    }
    if path.starts_with('#') {
        return Err(HttpError::Malformed("fragment in the request target"));
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Ok((path, Some(authority.to_string())))
}

/// `uri-host [":" port]` (RFC 9110 §7.2): an IP literal in brackets, or a
/// reg-name / IPv4 of unreserved, sub-delim and `%` characters; an empty
/// value is allowed (a target without authority).
pub(super) fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.iter().rposition(|&b| b == b':') {
        // A colon inside brackets belongs to the IPv6 literal.
        Some(i) if !v[i..].contains(&b']') => (&v[..i], Some(&v[i + 1..])),
        _ => (v, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    let host_ok = match host {
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        }
        _ => host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        }),
    };
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            normalize("GET", "/mcp?x=1").unwrap(),
            ("/mcp?x=1".into(), None)
        );
        assert_eq!(normalize("OPTIONS", "*").unwrap(), ("*".into(), None));
        assert_eq!(
            normalize("GET", "http://evil.example/admin").unwrap(),
            ("/admin".into(), Some("evil.example".into()))
        );
        assert_eq!(
            normalize("GET", "HTTPS://a.b:8443?q").unwrap(),
            ("/?q".into(), Some("a.b:8443".into()))
        );
        for bad in [
            "mcp",
            "*",
            "ftp://a/b",
            "http:///x",
            "http://u@h/x",
            "http://a b/x",
            "//h/x",
        ] {
            let r = normalize("GET", bad);
            if bad == "//h/x" {
                // Starts with '/': origin-form as far as the grammar goes.
                assert!(r.is_ok());
                continue;
            }
            assert!(r.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "",
            "a",
            "a.b:80",
            "10.0.0.1:9000",
            "[::1]",
            "[::1]:443",
            "x_y-z.~",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "a b@c", "a/b", "a:", "a:123456", "a:b", "[::1", "h@x", "a\tb",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
