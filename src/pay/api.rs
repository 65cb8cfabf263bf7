//! The calls chatgate makes to WeChat Pay API v3 (at `CHATGATE_WECHAT_PAY_API_BASE`):
//! place a JSAPI or Native order, query an order, close an order. Every request is
//! signed with the merchant key; every successful response is verified with the
//! WeChat Pay public key before a byte of it is believed.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::crypto::{self, MerchantKey, PlatformKey};
use crate::config::WechatPayConfig;

/// How long one call to WeChat Pay may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The merchant account, its keys (read once at start-up) and where WeChat Pay is.
pub struct WechatPay {
    pub mch_id: String,
    pub app_id: String,
    pub merchant_serial_no: String,
    pub platform_serial_no: String,
    pub notify_url: String,
    pub order_ttl_secs: u64,
    pub query_after_secs: u64,
    api_v3_key: Vec<u8>,
    merchant_key: MerchantKey,
    platform_key: PlatformKey,
    /// `pay_api_base` without a trailing slash.
    base: String,
}

/// A transaction as WeChat Pay describes it: the answer of the order query and the
/// decrypted resource of a `TRANSACTION.SUCCESS` notification.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Transaction {
    pub appid: String,
    pub mchid: String,
    pub out_trade_no: String,
    pub transaction_id: Option<String>,
    /// `SUCCESS`, `NOTPAY`, `USERPAYING`, `CLOSED`, `REVOKED`, `PAYERROR`, `REFUND`.
    pub trade_state: String,
    pub amount: Amount,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Amount {
    /// The order's amount in fen (what the order asked for, before any coupon).
    pub total: Option<i64>,
    pub currency: Option<String>,
}

/// What `uni.requestPayment` takes to pay a JSAPI order.
#[derive(Debug, Clone, Serialize)]
pub struct PayParams {
    #[serde(rename = "timeStamp")]
    pub time_stamp: String,
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    pub package: String,
    #[serde(rename = "signType")]
    pub sign_type: &'static str,
    #[serde(rename = "paySign")]
    pub pay_sign: String,
}

/// What is needed to place an order at WeChat Pay.
pub struct NewOrder<'a> {
    pub out_trade_no: &'a str,
    pub description: &'a str,
    pub price_fen: i64,
    /// RFC 3339: WeChat Pay takes no payment after it.
    pub time_expire: &'a str,
}

/// Why a call to WeChat Pay did not give an answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("WeChat Pay unreachable: {0}")]
    Unreachable(String),
    #[error("WeChat Pay timed out")]
    Timeout,
    #[error("WeChat Pay refused (HTTP {status}, {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// A response whose signature does not verify with the WeChat Pay public key.
    #[error("WeChat Pay's response signature does not verify")]
    BadSignature,
    #[error("WeChat Pay answered something unexpected: {0}")]
    Unexpected(String),
}

impl WechatPay {
    /// Reads the key files named by `config`; the error is one line naming the file.
    pub fn load(config: &WechatPayConfig, pay_api_base: &str) -> Result<Self, String> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("wechat_pay.{what} {}: {e}", path.display()))
        };
        let merchant_key = MerchantKey::from_pem(&read(
            "merchant_private_key_path",
            &config.merchant_private_key_path,
        )?)
        .map_err(|e| {
            format!(
                "wechat_pay.merchant_private_key_path {}: {e}",
                config.merchant_private_key_path.display()
            )
        })?;
        let platform_key = PlatformKey::from_pem(&read(
            "platform_public_key_path",
            &config.platform_public_key_path,
        )?)
        .map_err(|e| {
            format!(
                "wechat_pay.platform_public_key_path {}: {e}",
                config.platform_public_key_path.display()
            )
        })?;
        Ok(Self {
            mch_id: config.mch_id.clone(),
            app_id: config.app_id.clone(),
            merchant_serial_no: config.merchant_serial_no.clone(),
            platform_serial_no: config.platform_serial_no.clone(),
            notify_url: config.notify_url.clone(),
            order_ttl_secs: config.order_ttl_secs,
            query_after_secs: config.query_after_secs,
            api_v3_key: config.api_v3_key.as_bytes().to_vec(),
            merchant_key,
            platform_key,
            base: pay_api_base.trim_end_matches('/').to_string(),
        })
    }

    /// Places a JSAPI order for `openid`; returns its `prepay_id`.
    pub async fn create_jsapi(
        &self,
        http: &reqwest::Client,
        order: &NewOrder<'_>,
        openid: &str,
    ) -> Result<String, PayError> {
        let mut body = self.order_body(order);
        body["payer"] = json!({ "openid": openid });
        let answer = self
            .call(http, "POST", "/v3/pay/transactions/jsapi", Some(&body))
            .await?;
        field(&answer, "prepay_id")
    }

    /// Places a Native order; returns its `code_url` (shown as a QR code).
    pub async fn create_native(
        &self,
        http: &reqwest::Client,
        order: &NewOrder<'_>,
    ) -> Result<String, PayError> {
        let body = self.order_body(order);
        let answer = self
            .call(http, "POST", "/v3/pay/transactions/native", Some(&body))
            .await?;
        field(&answer, "code_url")
    }

    fn order_body(&self, order: &NewOrder<'_>) -> serde_json::Value {
        json!({
            "appid": self.app_id,
            "mchid": self.mch_id,
            "description": order.description,
            "out_trade_no": order.out_trade_no,
            "time_expire": order.time_expire,
            "notify_url": self.notify_url,
            "amount": { "total": order.price_fen, "currency": "CNY" },
        })
    }

    /// The order as WeChat Pay knows it; `None` when WeChat Pay has no such order.
    pub async fn query(
        &self,
        http: &reqwest::Client,
        out_trade_no: &str,
    ) -> Result<Option<Transaction>, PayError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            encode(out_trade_no),
            encode(&self.mch_id)
        );
        match self.call(http, "GET", &path, None).await {
            Ok(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| PayError::Unexpected(format!("order query: {e}"))),
            Err(PayError::Refused { code, .. }) if code == "ORDER_NOT_EXIST" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Closes an unpaid order: WeChat Pay takes no payment for it afterwards.
    pub async fn close(&self, http: &reqwest::Client, out_trade_no: &str) -> Result<(), PayError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}/close",
            encode(out_trade_no)
        );
        let body = json!({ "mchid": self.mch_id });
        self.call(http, "POST", &path, Some(&body)).await.map(drop)
    }

    /// The signed parameters of `uni.requestPayment` for a JSAPI order.
    pub fn pay_params(&self, prepay_id: &str) -> PayParams {
        let time_stamp = crate::clock::unix_secs().to_string();
        let nonce_str = crypto::nonce();
        let package = format!("prepay_id={prepay_id}");
        let pay_sign = self.merchant_key.sign(&crypto::pay_sign_message(
            &self.app_id,
            &time_stamp,
            &nonce_str,
            &package,
        ));
        PayParams {
            time_stamp,
            nonce_str,
            package,
            sign_type: "RSA",
            pay_sign,
        }
    }

    /// Whether `body` with `headers` (`Wechatpay-Timestamp`, `-Nonce`, `-Signature`) was
    /// signed with the WeChat Pay key. Returns the signed timestamp when it was.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Option<i64> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let timestamp = header("wechatpay-timestamp")?;
        let nonce = header("wechatpay-nonce")?;
        let signature = header("wechatpay-signature")?;
        let message = crypto::response_message(timestamp, nonce, body);
        if !self.platform_key.verify(&message, signature) {
            return None;
        }
        if let Some(serial) = header("wechatpay-serial")
            && serial != self.platform_serial_no
        {
            tracing::warn!(
                serial,
                configured = %self.platform_serial_no,
                "WeChat Pay signed with another serial than wechat_pay.platform_serial_no"
            );
        }
        timestamp.trim().parse().ok()
    }

    /// Opens the AEAD_AES_256_GCM resource of a notification with the API v3 key.
    pub fn decrypt(
        &self,
        nonce: &str,
        associated_data: &str,
        ciphertext: &str,
    ) -> Result<Vec<u8>, crypto::DecryptError> {
        crypto::decrypt_resource(&self.api_v3_key, nonce, associated_data, ciphertext)
    }

    /// One signed call; the verified body of a 2xx answer.
    async fn call(
        &self,
        http: &reqwest::Client,
        method: &str,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, PayError> {
        let url = reqwest::Url::parse(&format!("{}{path_and_query}", self.base))
            .map_err(|e| PayError::Unexpected(format!("bad URL: {e}")))?;
        // What is signed is the URL as sent: its path (any prefix of the base included)
        // and query.
        let signed_path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let body = match body {
            Some(v) => serde_json::to_vec(v).map_err(|e| PayError::Unexpected(e.to_string()))?,
            None => Vec::new(),
        };
        let timestamp = crate::clock::unix_secs();
        let nonce = crypto::nonce();
        let signature = self.merchant_key.sign(&crypto::request_message(
            method,
            &signed_path,
            timestamp,
            &nonce,
            &body,
        ));
        let authorization = crypto::authorization(
            &self.mch_id,
            &self.merchant_serial_no,
            &nonce,
            timestamp,
            &signature,
        );
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|e| PayError::Unexpected(e.to_string()))?;
        let mut request = http
            .request(method, url)
            .header("Authorization", authorization)
            .header("Accept", "application/json")
            .header(
                "User-Agent",
                concat!("chatgate/", env!("CARGO_PKG_VERSION")),
            )
            .timeout(CALL_TIMEOUT);
        if !body.is_empty() {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        let resp = request.send().await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            // WeChat Pay's error body `{code, message}`; used to name the error, never
            // to move money.
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct ErrorBody {
                code: String,
                message: String,
            }
            let e: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(PayError::Refused {
                status: status.as_u16(),
                code: e.code,
                message: e.message,
            });
        }
        if self.verify(&headers, &bytes).is_none() {
            return Err(PayError::BadSignature);
        }
        Ok(bytes)
    }
}

fn transport(e: reqwest::Error) -> PayError {
    if e.is_timeout() {
        PayError::Timeout
    } else {
        PayError::Unreachable(e.to_string())
    }
}

/// A string field of a verified JSON answer.
fn field(body: &[u8], name: &str) -> Result<String, PayError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| PayError::Unexpected(e.to_string()))?;
    v[name]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
        .ok_or_else(|| PayError::Unexpected(format!("no {name} in the answer")))
}

/// Percent-encodes a path segment or query value (ours are alphanumeric anyway).
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
