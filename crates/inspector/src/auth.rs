//! Who may use the inspector: a login with the operator's token, then a session cookie that is
//! signed and expires, and a CSRF token per session on every action.
//!
//! The cookie is `<session id>.<expiry, Unix seconds>.<HMAC-SHA256 of both>`, `HttpOnly`,
//! `SameSite=Strict`, and `Secure` where the inspector is reached over TLS. Its key is derived
//! from the operator's token (HMAC-SHA256 of a fixed label under the token: the token itself is
//! never the key, and the key does not give the token away), so that a restart keeps operators
//! logged in and rotating the token logs everyone out; open access (`dev`) has no token and
//! makes a key at start. The CSRF token is the HMAC of the session id under the same key: a form
//! carries it, and an action without the right one is refused even with the cookie. Nothing
//! about a login is stored.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub(crate) const COOKIE: &str = "inspector_session";

/// The id of the login a request made with the bearer token has.
pub(crate) const API_LOGIN: &str = "api-token";

/// Who may log in.
#[derive(Clone)]
pub enum Access {
    /// Whoever types this token (from the environment) at the login page, or sends it as
    /// `Authorization: Bearer` to the JSON API.
    Token(String),
    /// Everyone who reaches the listener, without a login: for `sms-gateway dev`, which listens
    /// on the loopback only. Sessions, cookies and CSRF tokens work as with a token.
    Open,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Token(_) => f.write_str("Token(<redacted>)"),
            Access::Open => f.write_str("Open"),
        }
    }
}

impl Access {
    /// Whether `offered` is the token, compared in constant time (as digests, so that not even
    /// its length shows). Never true for open access, which has no token.
    pub(crate) fn accepts(&self, offered: &str) -> bool {
        match self {
            Access::Token(token) => {
                let expected = Sha256::digest(token.as_bytes());
                let offered = Sha256::digest(offered.as_bytes());
                bool::from(expected.as_slice().ct_eq(offered.as_slice()))
            }
            Access::Open => false,
        }
    }
}

/// A logged-in browser.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Login {
    /// The session's random id.
    pub(crate) id: String,
    /// When it ends.
    pub(crate) expires_at: DateTime<Utc>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("actor", &self.actor())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Login {
    /// The name the audit records it by: a prefix of its id, enough to tell logins apart, not
    /// enough to forge a cookie (which also needs the key).
    pub(crate) fn actor(&self) -> String {
        if self.id == API_LOGIN {
            return "API token".to_owned();
        }
        format!("login {}", self.id.get(..8).unwrap_or(&self.id))
    }
}

/// Signs and checks cookies and CSRF tokens.
#[derive(Clone)]
pub(crate) struct Keys {
    key: [u8; 32],
    lifetime: Duration,
    secure: bool,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("lifetime", &self.lifetime)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

/// What the cookie key is derived from the token with: changing it logs everyone out.
const KEY_LABEL: &[u8] = b"soul-inspector session cookie key v1";

/// The cookie key of `token`: the HMAC-SHA256 of [`KEY_LABEL`] under it.
fn derived_key(token: &str) -> [u8; 32] {
    let mut mac =
        HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(KEY_LABEL);
    mac.finalize().into_bytes().into()
}

/// 32 random bytes from the operating system's generator (through v4 UUIDs, whose 122 random
/// bits come from it; two of them and a hash make a key).
fn random_bytes() -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(uuid::Uuid::new_v4().as_bytes());
    hasher.update(uuid::Uuid::new_v4().as_bytes());
    hasher.finalize().into()
}

impl Keys {
    /// The keys of `access`: derived from its token (the same after a restart, other for
    /// another token), or fresh for open access; sessions last `lifetime`, and their cookie is
    /// `Secure` when `secure` says so.
    pub(crate) fn new(access: &Access, lifetime: Duration, secure: bool) -> Self {
        let key = match access {
            Access::Token(token) => derived_key(token),
            Access::Open => random_bytes(),
        };
        Keys {
            key,
            lifetime,
            secure,
        }
    }

    /// The cookie's attributes after its value.
    fn attributes(&self) -> &'static str {
        if self.secure {
            "Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "Path=/; HttpOnly; SameSite=Strict"
        }
    }

    /// The `Set-Cookie` header that logs out.
    pub(crate) fn clear_cookie(&self) -> String {
        format!("{COOKIE}=; {}; Max-Age=0", self.attributes())
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"|");
        }
        mac
    }

    /// A new login at `now`.
    pub(crate) fn login(&self, now: DateTime<Utc>) -> Login {
        Login {
            id: hex(&random_bytes()[..16]),
            expires_at: now + self.lifetime,
        }
    }

    /// The cookie's value for `login`.
    pub(crate) fn cookie_value(&self, login: &Login) -> String {
        let expires = login.expires_at.timestamp().to_string();
        let mac = self
            .mac(&["session", &login.id, &expires])
            .finalize()
            .into_bytes();
        format!("{}.{expires}.{}", login.id, B64.encode(mac))
    }

    /// The `Set-Cookie` header that logs `login` in.
    pub(crate) fn set_cookie(&self, login: &Login) -> String {
        let max_age = self.lifetime.num_seconds().max(0);
        format!(
            "{COOKIE}={}; {}; Max-Age={max_age}",
            self.cookie_value(login),
            self.attributes(),
        )
    }

    /// The login a cookie's value proves at `now`: `None` when it is malformed, signed by
    /// another key, altered, or expired.
    pub(crate) fn verify(&self, value: &str, now: DateTime<Utc>) -> Option<Login> {
        let mut parts = value.splitn(3, '.');
        let (id, expires, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let tag = B64.decode(mac).ok()?;
        self.mac(&["session", id, expires])
            .verify_slice(&tag)
            .ok()?;
        let expires_at = DateTime::from_timestamp(expires.parse().ok()?, 0)?;
        (expires_at > now).then(|| Login {
            id: id.to_owned(),
            expires_at,
        })
    }

    /// The CSRF token of `login`.
    pub(crate) fn csrf(&self, login: &Login) -> String {
        B64.encode(self.mac(&["csrf", &login.id]).finalize().into_bytes())
    }

    /// Whether `offered` is `login`'s CSRF token (constant time).
    pub(crate) fn csrf_ok(&self, login: &Login, offered: &str) -> bool {
        B64.decode(offered)
            .ok()
            .is_some_and(|tag| self.mac(&["csrf", &login.id]).verify_slice(&tag).is_ok())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The value of the cookie named [`COOKIE`] in a `Cookie` header.
pub(crate) fn cookie_in(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn keys_of(token: &str) -> Keys {
        Keys::new(&Access::Token(token.into()), Duration::hours(1), false)
    }

    #[test]
    fn a_cookie_is_accepted_until_it_expires_and_only_as_signed() {
        let keys = keys_of("s3cret");
        let login = keys.login(now());
        let value = keys.cookie_value(&login);
        assert_eq!(keys.verify(&value, now()), Some(login.clone()));
        assert_eq!(keys.verify(&value, now() + Duration::minutes(61)), None);
        // Another token's key does not accept it.
        assert_eq!(keys_of("other").verify(&value, now()), None);
        // A later expiry, or another id, breaks the signature.
        let (id, rest) = value.split_once('.').unwrap();
        let (_, mac) = rest.split_once('.').unwrap();
        let later = format!("{id}.{}.{mac}", now().timestamp() + 99_999);
        assert_eq!(keys.verify(&later, now()), None);
        assert_eq!(keys.verify(&format!("0{}", &value[1..]), now()), None);
        assert_eq!(keys.verify("garbage", now()), None);
    }

    #[test]
    fn the_key_is_derived_from_the_token_and_is_not_the_token() {
        let keys = keys_of("s3cret");
        let login = keys.login(now());
        let value = keys.cookie_value(&login);
        // The same token after a restart: the same key.
        let restarted = keys_of("s3cret");
        assert_eq!(restarted.verify(&value, now()), Some(login.clone()));
        assert_eq!(restarted.csrf(&login), keys.csrf(&login));
        // Not the token, nor its plain hash.
        let mut padded = [0u8; 32];
        padded[..6].copy_from_slice(b"s3cret");
        assert_ne!(keys.key, padded);
        assert_ne!(keys.key[..], Sha256::digest(b"s3cret")[..]);
        // Open access: a fresh key each start.
        let open = Keys::new(&Access::Open, Duration::hours(1), false);
        let value = open.cookie_value(&open.login(now()));
        let again = Keys::new(&Access::Open, Duration::hours(1), false);
        assert_eq!(again.verify(&value, now()), None);
    }

    #[test]
    fn the_cookie_is_secure_when_asked() {
        let login = keys_of("s3cret").login(now());
        let plain = keys_of("s3cret");
        assert!(!plain.set_cookie(&login).contains("Secure"));
        assert!(!plain.clear_cookie().contains("Secure"));
        let secure = Keys::new(&Access::Token("s3cret".into()), Duration::hours(1), true);
        assert!(
            secure
                .set_cookie(&login)
                .ends_with("; Secure; Max-Age=3600")
        );
        assert!(secure.clear_cookie().contains("; Secure;"));
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let keys = keys_of("s3cret");
        let (one, two) = (keys.login(now()), keys.login(now()));
        assert!(keys.csrf_ok(&one, &keys.csrf(&one)));
        assert!(!keys.csrf_ok(&two, &keys.csrf(&one)));
        assert!(!keys.csrf_ok(&one, ""));
    }

    #[test]
    fn only_the_token_is_accepted_and_open_access_has_none() {
        let access = Access::Token("s3cret".into());
        assert!(access.accepts("s3cret"));
        assert!(!access.accepts("s3cre"));
        assert!(!access.accepts(""));
        assert!(!Access::Open.accepts(""));
        assert_eq!(format!("{access:?}"), "Token(<redacted>)");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(
            cookie_in("a=1; inspector_session=x.y.z; b=2"),
            Some("x.y.z")
        );
        assert_eq!(cookie_in("a=1"), None);
    }
}
