//! Who a connection is: identity from the upgrade request, before upgrading.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use switchboard_config::{AuthMode, AuthSettings};
use switchboard_protocol::validate_user;
use wildmatch::WildMatch;

/// Why a connection was refused (HTTP 401, one line).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token (use ?token= or Authorization: Bearer)")]
    MissingToken,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid user id: {0}")]
    BadUser(String),
    #[error("bad query parameter {0}")]
    BadQuery(String),
}

/// The rooms a token allows, from its `rooms` claim.
#[derive(Debug)]
pub struct RoomGrants(Vec<WildMatch>);

impl RoomGrants {
    pub fn allows(&self, room: &str) -> bool {
        self.0.iter().any(|g| g.matches(room))
    }
}

/// An authenticated identity.
#[derive(Debug)]
pub struct Identity {
    /// `None`: the user id is assigned from the connection id.
    pub user: Option<String>,
    /// `None`: every room is allowed.
    pub grants: Option<Arc<RoomGrants>>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Checks a connection's credentials as `auth.mode` says.
pub struct Authenticator {
    mode: AuthMode,
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Self {
            mode: settings.mode,
            key: settings
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    /// `query` is the request target's query string; `authorization` the
    /// header's value.
    pub fn authenticate(
        &self,
        query: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Identity, AuthError> {
        match self.mode {
            AuthMode::None => {
                let user = query_param(query, "user")?;
                if let Some(u) = &user {
                    validate_user(u).map_err(|e| AuthError::BadUser(e.to_string()))?;
                }
                Ok(Identity { user, grants: None })
            }
            AuthMode::Jwt => {
                let token = token(query, authorization)?.ok_or(AuthError::MissingToken)?;
                let key = self
                    .key
                    .as_ref()
                    .ok_or_else(|| AuthError::Invalid("no secret configured".into()))?;
                let data =
                    jsonwebtoken::decode::<Claims>(&token, key, &self.validation).map_err(|e| {
                        match e.kind() {
                            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                            _ => AuthError::Invalid(e.to_string()),
                        }
                    })?;
                let claims = data.claims;
                validate_user(&claims.sub).map_err(|e| AuthError::BadUser(e.to_string()))?;
                let grants = claims
                    .rooms
                    .map(|r| Arc::new(RoomGrants(r.iter().map(|p| WildMatch::new(p)).collect())));
                Ok(Identity {
                    user: Some(claims.sub),
                    grants,
                })
            }
        }
    }
}

fn token(query: Option<&str>, authorization: Option<&str>) -> Result<Option<String>, AuthError> {
    if let Some(t) = query_param(query, "token")? {
        return Ok(Some(t));
    }
    let bearer = authorization
        .and_then(|a| a.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    Ok(bearer)
}

/// The first value of a query parameter, percent-decoded.
/// A value that is not UTF-8 once decoded is refused, not ignored: a client
/// that meant to say who it is must not silently become anonymous.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, AuthError> {
    let Some(raw) = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }) else {
        return Ok(None);
    };
    percent_decode(raw)
        .map(Some)
        .ok_or_else(|| AuthError::BadQuery(format!("{name}: not UTF-8 once percent-decoded")))
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, after)) = rest.split_first() {
        rest = after;
        match b {
            b'%' => {
                let (hex, after) = rest.split_at_checked(2)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                rest = after;
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let q = Some("user=al%20ice&x=1");
        assert_eq!(
            query_param(q, "user").ok().flatten().as_deref(),
            Some("al ice")
        );
        assert!(matches!(query_param(q, "y"), Ok(None)));
        assert!(matches!(
            query_param(Some("user=%ff"), "user"),
            Err(AuthError::BadQuery(_))
        ));
        assert!(matches!(
            query_param(Some("user=%f"), "user"),
            Err(AuthError::BadQuery(_))
        ));
    }

    #[test]
    fn grants_are_globs() {
        let g = RoomGrants(vec![WildMatch::new("team-7:*"), WildMatch::new("lobby")]);
        assert!(g.allows("team-7:general"));
        assert!(g.allows("lobby"));
        assert!(!g.allows("team-8:general"));
    }
}
