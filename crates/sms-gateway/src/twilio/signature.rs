//! `X-Twilio-Signature`: how Twilio signs form-encoded webhooks, and checking it.
//!
//! Twilio computes `base64(HMAC-SHA1(auth token, URL + name₁ + value₁ + name₂ + value₂ …))`
//! over the URL it was configured to call (query string included) and every POSTed form
//! parameter, sorted by name; a name that occurs several times contributes each of its values,
//! sorted. The URL must be the public one Twilio called: behind a TLS-terminating proxy the
//! `Host` header and scheme seen here differ, so the gateway builds it from configuration
//! ([`request_url`]), never from the request.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// The header carrying the signature.
pub(crate) const HEADER: &str = "X-Twilio-Signature";

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
    /// The request had no `X-Twilio-Signature` header.
    #[error("the request has no X-Twilio-Signature header")]
    Missing,
    /// The header is not base64 of a 20-byte HMAC-SHA1.
    #[error("the X-Twilio-Signature header is not a base64 HMAC-SHA1")]
    Malformed,
    /// The signature does not match the URL, parameters and auth token.
    #[error("the X-Twilio-Signature header does not match the request")]
    Mismatch,
}

/// The URL Twilio called: the configured public base URL (scheme, host, optional port and path
/// prefix) followed by the request's path and query exactly as received.
pub(crate) fn request_url(public_url: &str, path_and_query: &str) -> String {
    format!("{}{}", public_url.trim_end_matches('/'), path_and_query)
}

/// The signature Twilio sends for a form POST of `params` to `url`, signed with `auth_token`.
#[cfg(any(test, fuzzing))]
pub(crate) fn sign<K: AsRef<str>, V: AsRef<str>>(
    url: &str,
    params: &[(K, V)],
    auth_token: &str,
) -> String {
    BASE64.encode(mac(url, params, auth_token).finalize().into_bytes())
}

/// Checks `signature` (the header's value) against `url`, `params` and `auth_token`.
///
/// `url` is also tried with the scheme's default port added (or removed, if it has one), as
/// Twilio's own SDKs do: the console URL and the URL Twilio signs may differ in exactly that.
/// The comparison is constant-time.
pub(crate) fn validate<K: AsRef<str>, V: AsRef<str>>(
    url: &str,
    params: &[(K, V)],
    auth_token: &str,
    signature: &str,
) -> Result<(), SignatureError> {
    let expected = BASE64
        .decode(signature.trim())
        .map_err(|_| SignatureError::Malformed)?;
    if expected.len() != 20 {
        return Err(SignatureError::Malformed);
    }
    let alternative = toggle_default_port(url);
    let candidates = std::iter::once(url).chain(alternative.as_deref());
    for candidate in candidates {
        if mac(candidate, params, auth_token)
            .verify_slice(&expected)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// The HMAC over the URL and the sorted parameters, ready to finalize or verify.
fn mac<K: AsRef<str>, V: AsRef<str>>(url: &str, params: &[(K, V)], auth_token: &str) -> HmacSha1 {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(name, value)| (name.as_ref(), value.as_ref()))
        .collect();
    // Sorting the pairs sorts by name and, within a repeated name, by value: Twilio's order.
    sorted.sort_unstable();
    // HMAC hashes long keys and pads short ones: every key length is valid.
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// `url` with the scheme's default port added when it has no port, or removed when it has the
/// default one; `None` when there is nothing to toggle (another port, another scheme, no host).
fn toggle_default_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // Credentials in the authority may hold ':'; the host starts after the last '@'.
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let (userinfo, host_port) = authority.split_at(host_start);
    // An IPv6 literal holds ':' too; a port can only follow its closing ']'.
    let port_search_from = host_port.rfind(']').map_or(0, |bracket| bracket + 1);
    let port_colon = host_port[port_search_from..]
        .rfind(':')
        .map(|colon| colon + port_search_from);
    let toggled_host = match port_colon {
        Some(colon) if &host_port[colon + 1..] == default_port => host_port[..colon].to_owned(),
        Some(_) => return None,
        None if host_port.is_empty() => return None,
        None => format!("{host_port}:{default_port}"),
    };
    Some(format!("{scheme}://{userinfo}{toggled_host}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const EXAMPLE_TOKEN: &str = "12345";
    const EXAMPLE_SIGNATURE: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";

    fn example_params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn matches_twilios_published_example() {
        let params = example_params();
        assert_eq!(sign(EXAMPLE_URL, &params, EXAMPLE_TOKEN), EXAMPLE_SIGNATURE);
        assert_eq!(
            validate(EXAMPLE_URL, &params, EXAMPLE_TOKEN, EXAMPLE_SIGNATURE),
            Ok(())
        );
    }

    #[test]
    fn parameter_order_does_not_matter() {
        let mut params = example_params();
        params.reverse();
        assert_eq!(
            validate(EXAMPLE_URL, &params, EXAMPLE_TOKEN, EXAMPLE_SIGNATURE),
            Ok(())
        );
    }

    #[test]
    fn repeated_names_contribute_every_value_sorted() {
        let url = "https://example.com/sms";
        let params = [("MediaUrl", "b"), ("Body", "x"), ("MediaUrl", "a")];
        // By hand: URL, then Body, then MediaUrl's values in sorted order.
        let mut mac = HmacSha1::new_from_slice(b"token").unwrap();
        mac.update(b"https://example.com/smsBodyxMediaUrlaMediaUrlb");
        let expected = BASE64.encode(mac.finalize().into_bytes());
        assert_eq!(sign(url, &params, "token"), expected);
        let reordered = [("MediaUrl", "a"), ("MediaUrl", "b"), ("Body", "x")];
        assert_eq!(validate(url, &reordered, "token", &expected), Ok(()));
        let dropped = [("MediaUrl", "a"), ("Body", "x")];
        assert_eq!(
            validate(url, &dropped, "token", &expected),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn default_port_is_accepted_either_way() {
        let params = example_params();
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let signed_with_port = sign(with_port, &params, EXAMPLE_TOKEN);
        // Twilio signed with the port; the configured URL has none.
        assert_eq!(
            validate(EXAMPLE_URL, &params, EXAMPLE_TOKEN, &signed_with_port),
            Ok(())
        );
        // Twilio signed without the port; the configured URL has it.
        assert_eq!(
            validate(with_port, &params, EXAMPLE_TOKEN, EXAMPLE_SIGNATURE),
            Ok(())
        );
        let http = "http://example.com/sms";
        let signed = sign("http://example.com:80/sms", &params, EXAMPLE_TOKEN);
        assert_eq!(validate(http, &params, EXAMPLE_TOKEN, &signed), Ok(()));
        // Another port is another URL.
        let other = sign(
            "https://mycompany.com:8443/myapp.php?foo=1&bar=2",
            &params,
            "12345",
        );
        assert_eq!(
            validate(EXAMPLE_URL, &params, EXAMPLE_TOKEN, &other),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn toggles_only_the_default_port() {
        let cases = [
            ("https://a.com/x?y=1", Some("https://a.com:443/x?y=1")),
            ("https://a.com:443/x", Some("https://a.com/x")),
            ("HTTPS://a.com", Some("HTTPS://a.com:443")),
            ("http://a.com?q", Some("http://a.com:80?q")),
            ("http://a.com:80", Some("http://a.com")),
            ("https://a.com:8443/x", None),
            (
                "https://user:pw@a.com/x",
                Some("https://user:pw@a.com:443/x"),
            ),
            ("https://[::1]/x", Some("https://[::1]:443/x")),
            ("https://[::1]:443/x", Some("https://[::1]/x")),
            ("ftp://a.com/x", None),
            ("not a url", None),
            ("https:///path", None),
        ];
        for (url, expected) in cases {
            assert_eq!(toggle_default_port(url).as_deref(), expected, "{url}");
        }
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let params = example_params();
        for bad in [
            "",
            "not base64!",
            "AAAA",
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=AAAA",
        ] {
            assert!(
                validate(EXAMPLE_URL, &params, EXAMPLE_TOKEN, bad).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate(EXAMPLE_URL, &params, EXAMPLE_TOKEN, "AAAA"),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn request_url_joins_configuration_and_request() {
        assert_eq!(
            request_url("https://soul.example/", "/twilio/sms?x=1"),
            "https://soul.example/twilio/sms?x=1"
        );
        assert_eq!(
            request_url("https://soul.example/prefix", "/sms"),
            "https://soul.example/prefix/sms"
        );
    }

    fn random_text(rng: &mut fastrand::Rng, max_len: usize) -> String {
        const ALPHABET: &[char] = &['a', 'Z', '0', '+', ' ', '&', '=', '%', 'é', '😀', '\n'];
        let len = rng.usize(0..=max_len);
        (0..len)
            .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
            .collect()
    }

    /// Any change to a name, a value, the URL or the token breaks the signature.
    #[test]
    fn any_change_fails_validation() {
        let mut rng = fastrand::Rng::with_seed(0x5157);
        for round in 0..300 {
            let url = format!("https://example.com/{}", random_text(&mut rng, 12));
            let token = format!("t{}", random_text(&mut rng, 8));
            let count = rng.usize(1..6);
            let params: Vec<(String, String)> = (0..count)
                .map(|i| {
                    (
                        format!("P{i}{}", random_text(&mut rng, 4)),
                        random_text(&mut rng, 10),
                    )
                })
                .collect();
            let signature = sign(&url, &params, &token);
            assert_eq!(validate(&url, &params, &token, &signature), Ok(()));

            let victim = rng.usize(..count);
            let mut changed_value = params.clone();
            changed_value[victim].1.push('x');
            let mut changed_name = params.clone();
            changed_name[victim].0.push('x');
            let mut dropped = params.clone();
            dropped.remove(victim);
            let mut added = params.clone();
            added.push(("Extra".to_owned(), String::new()));
            for (what, variant) in [
                ("value", changed_value),
                ("name", changed_name),
                ("dropped", dropped),
                ("added", added),
            ] {
                assert_eq!(
                    validate(&url, &variant, &token, &signature),
                    Err(SignatureError::Mismatch),
                    "round {round}: changed {what}"
                );
            }
            assert_eq!(
                validate(&format!("{url}x"), &params, &token, &signature),
                Err(SignatureError::Mismatch),
                "round {round}: changed url"
            );
            assert_eq!(
                validate(&url, &params, &format!("{token}x"), &signature),
                Err(SignatureError::Mismatch),
                "round {round}: changed token"
            );
        }
    }
}
