//! The cryptography of WeChat Pay API v3, as pure functions over RustCrypto: the
//! messages that are signed (requests, responses and notifications, `pay_params`), the
//! `Authorization` header, RSA-SHA256 (PKCS#1 v1.5) signing and verifying, and the
//! AEAD_AES_256_GCM resource of a notification.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

/// The scheme of the `Authorization` header.
pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// The smallest RSA key accepted (WeChat Pay's keys are 2048-bit).
const MIN_KEY_BITS: usize = 2048;

/// The merchant's private key (`apiclient_key.pem`): signs requests and `pay_params`.
pub struct MerchantKey(SigningKey<Sha256>);

/// The WeChat Pay public key: verifies responses and notifications.
pub struct PlatformKey(VerifyingKey<Sha256>);

impl MerchantKey {
    /// Reads a PEM private key, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`). The error is one line without key material.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
            RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| format!("not a PKCS#1 RSA key ({e})"))?
        } else if pem.contains("BEGIN PRIVATE KEY") {
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| format!("not a PKCS#8 RSA key ({e})"))?
        } else if pem.contains("ENCRYPTED PRIVATE KEY") {
            return Err("the key is encrypted; store it without a passphrase".into());
        } else {
            return Err("no PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)".into());
        };
        check_size(key.size())?;
        Ok(Self(SigningKey::new(key)))
    }

    /// RSA-SHA256 signature of `message`, base64. Blinded with the OS's random source.
    pub fn sign(&self, message: &[u8]) -> String {
        let signature = self.0.sign_with_rng(&mut rsa::rand_core::OsRng, message);
        BASE64.encode(signature.to_bytes())
    }
}

impl PlatformKey {
    /// Reads a PEM public key, SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let key = if pem.contains("BEGIN RSA PUBLIC KEY") {
            RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("not a PKCS#1 RSA key ({e})"))?
        } else if pem.contains("BEGIN PUBLIC KEY") {
            RsaPublicKey::from_public_key_pem(pem)
                .map_err(|e| format!("not an RSA public key ({e})"))?
        } else if pem.contains("BEGIN CERTIFICATE") {
            return Err("this is a certificate, not a public key; extract it with \
                 `openssl x509 -in cert.pem -pubkey -noout > wechatpay_pub.pem`"
                .into());
        } else {
            return Err("no PEM public key (BEGIN PUBLIC KEY)".into());
        };
        check_size(key.size())?;
        Ok(Self(VerifyingKey::new(key)))
    }

    /// Whether `signature` (base64) is this key's RSA-SHA256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        let Ok(bytes) = BASE64.decode(signature.trim()) else {
            return false;
        };
        let Ok(signature) = Signature::try_from(bytes.as_slice()) else {
            return false;
        };
        self.0.verify(message, &signature).is_ok()
    }
}

fn check_size(bytes: usize) -> Result<(), String> {
    if bytes * 8 < MIN_KEY_BITS {
        return Err(format!(
            "an RSA key of {} bits is too small (at least {MIN_KEY_BITS})",
            bytes * 8
        ));
    }
    Ok(())
}

/// What a request's signature covers: `METHOD\nURL\ntimestamp\nnonce\nbody\n`, where
/// URL is the path with its query string and body is empty for a GET.
pub fn request_message(
    method: &str,
    path_and_query: &str,
    timestamp: u64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut m = format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// What the signature of a response or a notification covers: `timestamp\nnonce\nbody\n`
/// (the `Wechatpay-Timestamp` and `Wechatpay-Nonce` headers as sent).
pub fn response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{timestamp}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// What `paySign` covers for `uni.requestPayment`: `appId\ntimeStamp\nnonceStr\npackage\n`.
pub fn pay_sign_message(app_id: &str, timestamp: &str, nonce: &str, package: &str) -> Vec<u8> {
    format!("{app_id}\n{timestamp}\n{nonce}\n{package}\n").into_bytes()
}

/// The `Authorization` header of a signed request.
pub fn authorization(
    mch_id: &str,
    serial_no: &str,
    nonce: &str,
    timestamp: u64,
    signature: &str,
) -> String {
    format!(
        "{SCHEME} mchid=\"{mch_id}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{serial_no}\""
    )
}

/// A fresh nonce: 32 letters and digits from the OS's random source.
pub fn nonce() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Why a notification's resource could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("the ciphertext is not base64")]
    Base64,
    #[error("the nonce must be 12 bytes")]
    Nonce,
    #[error("the API v3 key must be 32 bytes")]
    Key,
    #[error("the ciphertext does not authenticate (tampered, or another API v3 key)")]
    Authentication,
}

/// Opens an AEAD_AES_256_GCM resource: `ciphertext` is base64 of the encrypted bytes
/// followed by the 16-byte tag; the key is the API v3 key.
pub fn decrypt_resource(
    api_v3_key: &[u8],
    nonce: &str,
    associated_data: &str,
    ciphertext: &str,
) -> Result<Vec<u8>, DecryptError> {
    let sealed = BASE64
        .decode(ciphertext.trim())
        .map_err(|_| DecryptError::Base64)?;
    let nonce: [u8; 12] = nonce
        .as_bytes()
        .try_into()
        .map_err(|_| DecryptError::Nonce)?;
    let cipher = Aes256Gcm::new_from_slice(api_v3_key).map_err(|_| DecryptError::Key)?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &sealed,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| DecryptError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKCS1: &str = include_str!("testdata/merchant_pkcs1.pem");
    const PKCS8: &str = include_str!("testdata/merchant_pkcs8.pem");
    const PUBLIC: &str = include_str!("testdata/merchant_pub.pem");

    /// `openssl dgst -sha256 -sign merchant_pkcs1.pem` of the request below (PKCS#1 v1.5
    /// signatures are deterministic, so ours must match byte for byte).
    const OPENSSL_SIGNATURE: &str = "in3VVJ5WMfIq2Ul+4xjivlBVH8at0uQB8mxxQzYnZhNX031cUZNRWSUvCZ/G4AscUs93r+YkEFEXrIToLwjEmF5rRu1LTtdwEf+oX8DWelMc6jiItZsPMXnzQza+Ak5GEO+WSAb62B/Plrh+YcuSCAOMYUEFv6ZeXg3F0b9LxUJCnvxNEHlHaOBCx5Hi9MCkV3i3h0UbUolsH3mTyJJDPc2UxUKJWG2d525YJdy3B+8N7U8LX7ElSgRBFWu7J4fysWs1XL8Bh0ZGNTyvX9Gnqsr6JZnxIuCpO/iaM/Tfm+5hlhOArNAJ3Q+pLHrAD3LPtHDzpod6rMiqRBzXc0PO2A==";

    fn request() -> Vec<u8> {
        request_message(
            "POST",
            "/v3/pay/transactions/native",
            1_554_208_460,
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            br#"{"appid":"wxd678efh567hg6787"}"#,
        )
    }

    #[test]
    fn messages_have_the_documented_shape() {
        // The example of WeChat Pay's signing guide: a GET has an empty body line.
        assert_eq!(
            request_message(
                "GET",
                "/v3/certificates",
                1_554_208_460,
                "593BEC0C930BF1AFEB40B4A08C8FB242",
                b""
            ),
            b"GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
        );
        assert_eq!(
            response_message("1554209980", "c5ac7061fccab6bf3e254dcf98995b8c", b"{}"),
            b"1554209980\nc5ac7061fccab6bf3e254dcf98995b8c\n{}\n"
        );
        assert_eq!(
            pay_sign_message(
                "wx8888888888888888",
                "1414561699",
                "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
                "prepay_id=wx201410272009395522657a690389285100"
            ),
            b"wx8888888888888888\n1414561699\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\nprepay_id=wx201410272009395522657a690389285100\n"
        );
        assert_eq!(
            authorization(
                "1900009191",
                "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C",
                "593BEC0C930BF1AFEB40B4A08C8FB242",
                1_554_208_460,
                "SIG"
            ),
            "WECHATPAY2-SHA256-RSA2048 mchid=\"1900009191\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\",signature=\"SIG\",timestamp=\"1554208460\",serial_no=\"1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C\""
        );
    }

    #[test]
    fn signatures_match_openssl_for_both_key_formats() {
        for pem in [PKCS1, PKCS8] {
            let key = MerchantKey::from_pem(pem).unwrap();
            assert_eq!(key.sign(&request()), OPENSSL_SIGNATURE);
        }
        let public = PlatformKey::from_pem(PUBLIC).unwrap();
        assert!(public.verify(&request(), OPENSSL_SIGNATURE));
        let mut other = request();
        other[0] = b'G';
        assert!(!public.verify(&other, OPENSSL_SIGNATURE));
        assert!(!public.verify(&request(), "bm90IGEgc2lnbmF0dXJl"));
        assert!(!public.verify(&request(), "%%%"));
    }

    #[test]
    fn bad_keys_are_one_clear_line() {
        for (pem, says) in [
            ("", "no PEM private key"),
            (PUBLIC, "no PEM private key"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "PKCS#8",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\n-----END ENCRYPTED PRIVATE KEY-----",
                "encrypted",
            ),
        ] {
            let err = MerchantKey::from_pem(pem).err().unwrap();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = PlatformKey::from_pem("-----BEGIN CERTIFICATE-----\n")
            .err()
            .unwrap();
        assert!(err.contains("openssl x509"), "{err}");
        assert!(PlatformKey::from_pem(PKCS8).is_err());
    }

    /// Encrypted with Python's `cryptography` AESGCM (an independent implementation).
    #[test]
    fn resources_decrypt_and_tampering_is_caught() {
        let key = b"0123456789abcdef0123456789ABCDEF";
        let ciphertext = "bz1kVndYkCFlgKSe7VZeuBxCb6jr2XsMVxgLZBGofcEd7SUTxiql66NWgYXjfvTF3zZEQC36D7yELKpzBt9NgC9/hnQMQlHy8ULxgtf1QbtTL9qcnW/I3SRPeFjoYsvSxizGe7WNOYfVzwM=";
        let plain = decrypt_resource(key, "fdasflkja484", "transaction", ciphertext).unwrap();
        assert_eq!(
            plain,
            br#"{"mchid":"1900000001","out_trade_no":"abc","trade_state":"SUCCESS","amount":{"total":1000}}"#
        );
        let mut tampered = BASE64.decode(ciphertext).unwrap();
        tampered[3] ^= 1;
        let tampered = BASE64.encode(tampered);
        assert_eq!(
            decrypt_resource(key, "fdasflkja484", "transaction", &tampered),
            Err(DecryptError::Authentication)
        );
        assert_eq!(
            decrypt_resource(key, "fdasflkja484", "certificate", ciphertext),
            Err(DecryptError::Authentication)
        );
        assert_eq!(
            decrypt_resource(
                b"0123456789abcdef0123456789ABCDEX",
                "fdasflkja484",
                "transaction",
                ciphertext
            ),
            Err(DecryptError::Authentication)
        );
        assert_eq!(
            decrypt_resource(key, "short", "transaction", ciphertext),
            Err(DecryptError::Nonce)
        );
        assert_eq!(
            decrypt_resource(key, "fdasflkja484", "transaction", "***"),
            Err(DecryptError::Base64)
        );
        assert_eq!(
            decrypt_resource(b"short", "fdasflkja484", "transaction", ciphertext),
            Err(DecryptError::Key)
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let a = nonce();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, nonce());
    }
}
