//! Login tokens: HS256 JWTs carrying the user id, with an expiry.

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::AppError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a string (JWT convention).
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
}

impl Claims {
    pub fn user_id(&self) -> Result<i64, AppError> {
        self.sub
            .parse()
            .map_err(|_| AppError::Unauthorized("登录凭证无效，请重新登录"))
    }
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl TokenKeys {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    /// A token for `user_id` and its expiry (Unix seconds).
    pub fn issue(&self, user_id: i64) -> Result<(String, u64), AppError> {
        let now = crate::clock::unix_secs();
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now,
            exp: now + self.ttl_secs,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AppError::internal)?;
        Ok((token, claims.exp))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AppError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    AppError::Unauthorized("登录已过期，请重新登录")
                }
                _ => AppError::Unauthorized("登录凭证无效，请重新登录"),
            })
    }

    /// The user id of the request's `Authorization: Bearer <JWT>`.
    pub fn user_of(&self, headers: &HeaderMap) -> Result<i64, AppError> {
        let token = bearer(headers).ok_or(AppError::Unauthorized("请先登录"))?;
        self.verify(token)?.user_id()
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forged_or_expired_ones_do_not() {
        let keys = TokenKeys::new(b"secret", 60);
        let (token, exp) = keys.issue(42).unwrap();
        assert!(exp > crate::clock::unix_secs());
        assert_eq!(keys.verify(&token).unwrap().user_id().unwrap(), 42);

        let other = TokenKeys::new(b"other secret", 60);
        assert_eq!(other.verify(&token).unwrap_err().code(), -1);

        let claims = Claims {
            sub: "42".into(),
            iat: 1,
            exp: 2,
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        let err = keys.verify(&expired).unwrap_err();
        assert_eq!(err.code(), -1);
        assert!(err.msg().contains("过期"));

        let mut headers = HeaderMap::new();
        assert!(keys.user_of(&headers).is_err());
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(keys.user_of(&headers).unwrap(), 42);
    }
}
