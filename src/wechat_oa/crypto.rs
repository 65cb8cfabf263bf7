//! The Official Account's signatures and safe-mode encryption (pure).
//!
//! - Signature of a request: `sha1` of the token, `timestamp` and `nonce` sorted and
//!   joined, in lowercase hex; in safe mode `msg_signature` adds the `Encrypt` field.
//! - Safe mode: AES-256-CBC with key = base64(EncodingAESKey + "="), IV = the key's first
//!   16 bytes, PKCS#7 padding to 32-byte blocks (WeChat's variant, not the cipher's 16);
//!   plaintext = 16 random bytes, the XML's length as 4 big-endian bytes, the XML, the
//!   app id.

use aes::Aes256;
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// WeChat pads to multiples of this many bytes.
const PAD_BLOCK: usize = 32;

/// Standard base64 that also takes WeChat's key: 43 random characters plus `=`, whose
/// last character may carry bits a strict decoder refuses.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `sha1(sort(parts).join(""))` in lowercase hex.
pub fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for part in sorted {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Whether `given` (hex, any case) is the signature of `parts`, compared in constant time.
pub fn verify(given: &str, parts: &[&str]) -> bool {
    let expected = signature(parts);
    let given = given.trim().to_ascii_lowercase();
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Why a safe-mode message could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("EncodingAESKey must be 43 base64 characters")]
    BadKey,
    #[error("Encrypt is not base64")]
    NotBase64,
    #[error("ciphertext is not a whole number of blocks")]
    BadLength,
    #[error("bad padding")]
    BadPadding,
    #[error("the plaintext is malformed")]
    Malformed,
    #[error("the message is for another app id")]
    WrongAppId,
}

/// Safe mode of one Official Account.
#[derive(Clone)]
pub struct SafeMode {
    key: [u8; 32],
    app_id: String,
}

impl std::fmt::Debug for SafeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SafeMode")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl SafeMode {
    pub fn new(encoding_aes_key: &str, app_id: &str) -> Result<Self, CryptoError> {
        let encoding_aes_key = encoding_aes_key.trim();
        if encoding_aes_key.len() != 43 {
            return Err(CryptoError::BadKey);
        }
        let bytes = LENIENT
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            key,
            app_id: app_id.to_string(),
        })
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.key[..16]);
        iv
    }

    /// The XML inside an `Encrypt` field; refuses one made for another app id.
    pub fn decrypt(&self, encrypted: &str) -> Result<String, CryptoError> {
        let mut buf = LENIENT
            .decode(encrypted.trim())
            .map_err(|_| CryptoError::NotBase64)?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(CryptoError::BadLength);
        }
        let plain = cbc::Decryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .decrypt_padded::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::BadLength)?;
        let pad = usize::from(*plain.last().ok_or(CryptoError::BadPadding)?);
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(CryptoError::BadPadding);
        }
        let plain = &plain[..plain.len() - pad];
        if plain.len() < 20 {
            return Err(CryptoError::Malformed);
        }
        let len_bytes: [u8; 4] = plain[16..20]
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        let xml_len = u32::from_be_bytes(len_bytes) as usize;
        let rest = &plain[20..];
        if xml_len > rest.len() {
            return Err(CryptoError::Malformed);
        }
        let (xml, app_id) = rest.split_at(xml_len);
        if app_id != self.app_id.as_bytes() {
            return Err(CryptoError::WrongAppId);
        }
        String::from_utf8(xml.to_vec()).map_err(|_| CryptoError::Malformed)
    }

    /// `xml` encrypted for a reply, with fresh random bytes in front.
    pub fn encrypt(&self, xml: &str) -> String {
        self.encrypt_with(xml, rand::random())
    }

    /// `xml` encrypted with the given 16 leading bytes (deterministic, for tests).
    pub fn encrypt_with(&self, xml: &str, random: [u8; 16]) -> String {
        let mut buf = Vec::with_capacity(20 + xml.len() + self.app_id.len() + PAD_BLOCK);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&(xml.len() as u32).to_be_bytes());
        buf.extend_from_slice(xml.as_bytes());
        buf.extend_from_slice(self.app_id.as_bytes());
        let pad = PAD_BLOCK - buf.len() % PAD_BLOCK;
        buf.resize(buf.len() + pad, pad as u8);
        let len = buf.len();
        match cbc::Encryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .encrypt_padded::<NoPadding>(&mut buf, len)
        {
            Ok(cipher) => base64::engine::general_purpose::STANDARD.encode(cipher),
            // The buffer is a whole number of blocks by construction.
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[test]
    fn signatures_sort_their_parts() {
        // sha1("123abctoken") by the parts sorted.
        let sig = signature(&["token", "123", "abc"]);
        assert_eq!(sig, signature(&["abc", "token", "123"]));
        assert_eq!(sig.len(), 40);
        assert!(verify(&sig.to_uppercase(), &["123", "abc", "token"]));
        assert!(!verify(&sig, &["123", "abd", "token"]));
        assert!(!verify("", &["x"]));
    }

    #[test]
    fn keys_with_trailing_bits_are_accepted_and_bad_keys_refused() {
        assert!(SafeMode::new(KEY, "wx1").is_ok());
        assert_eq!(
            SafeMode::new("short", "wx1").unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            SafeMode::new(&"!".repeat(43), "wx1").unwrap_err(),
            CryptoError::BadKey
        );
    }

    #[test]
    fn round_trips_any_length_and_checks_the_app_id() {
        let mode = SafeMode::new(KEY, "wx-app").unwrap();
        for n in [0, 1, 11, 12, 31, 32, 33, 100, 1000] {
            let xml = "你".repeat(n);
            let sealed = mode.encrypt(&xml);
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&sealed)
                .unwrap();
            assert_eq!(raw.len() % PAD_BLOCK, 0);
            assert_eq!(mode.decrypt(&sealed).unwrap(), xml);
        }
        let other = SafeMode::new(KEY, "wx-other").unwrap();
        assert_eq!(
            other.decrypt(&mode.encrypt("<xml/>")).unwrap_err(),
            CryptoError::WrongAppId
        );
        assert_eq!(mode.decrypt("!!!").unwrap_err(), CryptoError::NotBase64);
        assert_eq!(mode.decrypt("AAAA").unwrap_err(), CryptoError::BadLength);
        // Garbage of the right length decrypts to garbage: refused, no panic.
        let junk = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
        assert!(mode.decrypt(&junk).is_err());
    }
}
