#![no_main]
//! The bytes a client sends before the upgrade: the request head, then the
//! credentials in it (query string and `Authorization`), checked as JWT.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchboard_config::{AuthMode, AuthSettings};
use switchboard_gateway::auth::Authenticator;
use switchboard_protocol::handshake::{parse_request_head, MAX_HEAD_BYTES};

fn authenticators() -> &'static [Authenticator; 2] {
    static AUTH: OnceLock<[Authenticator; 2]> = OnceLock::new();
    AUTH.get_or_init(|| {
        let jwt = AuthSettings {
            mode: AuthMode::Jwt,
            hs256_secret: Some("a-fuzzing-secret-that-is-long-enough".into()),
        };
        let none = AuthSettings {
            mode: AuthMode::None,
            hs256_secret: None,
        };
        [Authenticator::new(&jwt), Authenticator::new(&none)]
    })
}

fuzz_target!(|input: &[u8]| {
    match parse_request_head(input) {
        Ok(Some(head)) => {
            assert!(head.len <= input.len() && head.len <= MAX_HEAD_BYTES);
            for auth in authenticators() {
                let _ = auth.authenticate(head.query.as_deref(), head.authorization.as_deref());
            }
        }
        Ok(None) => assert!(input.len() <= MAX_HEAD_BYTES),
        Err(_) => {}
    }
    // The credentials alone, as arbitrary strings.
    if let Ok(text) = std::str::from_utf8(input) {
        let (query, authorization) = text.split_once('\n').unwrap_or((text, ""));
        for auth in authenticators() {
            let _ = auth.authenticate(Some(query), Some(authorization));
        }
    }
});
