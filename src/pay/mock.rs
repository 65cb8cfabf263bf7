//! A mock WeChat Pay API v3 with its own RSA key pair, run in-process by `tests/pay.rs` and
//! as the `mock_wechat_pay` example for end-to-end runs (`tests/pay_e2e.sh`) and for trying
//! recharge without a merchant account.
//!
//! It serves what the gateway calls — `POST /v3/pay/transactions/{jsapi,native}`,
//! `GET /v3/pay/transactions/out-trade-no/{no}?mchid=…` and
//! `POST /v3/pay/transactions/out-trade-no/{no}/close` — checking every request's
//! `Authorization` (`WECHATPAY2-SHA256-RSA2048`) against the merchant's public key and
//! signing every answer with its platform key. The checks are written here with the RSA
//! crate directly, independently of the gateway's [`super::crypto`], so that a mistake
//! there cannot hide itself.
//!
//! Test hooks (not signed):
//! - `POST /mock/pay {"code_url": …}` (the user scanned the Native QR code and paid) or
//!   `{"out_trade_no": …}` (`uni.requestPayment` succeeded): marks the order paid, then
//!   sends the `TRANSACTION.SUCCESS` notification — signed with the platform key, the
//!   transaction encrypted with the API v3 key — to the configured notify URL, as
//!   [`NotifyMode`] says (N times, one after another or all at once, or lost). Optional
//!   fields `notify_times`, `concurrent`, `lose` override the mode for this payment.
//!   Answers `{out_trade_no, amount, notifications:[{status}|{error}]}` once every
//!   notification has been answered.
//! - `POST /mock/config {"notify_url"?, "notify_times"?, "concurrent"?, "lose"?}` changes
//!   the [`NotifyMode`] (the gateway's address may be known only after the mock started).
//! - `GET /mock/orders` → `{orders:[{out_trade_no, trade_type, total, paid, closed,
//!   notifications}]}`.
//!
//! Notifications go to [`NotifyMode::url`], not to the order's `notify_url`: a gateway
//! insists on an `https://` notify URL, which a local run does not have.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The largest request body the mock reads.
const MAX_BODY: usize = 64 * 1024;
/// A request signed longer ago (or further ahead) than this is refused, as WeChat Pay does.
const MAX_SKEW_SECS: i64 = 300;

/// The merchant account the mock plays WeChat Pay for.
#[derive(Clone)]
pub struct MockPayConfig {
    pub mch_id: String,
    pub app_id: String,
    /// 32 bytes: encrypts the transaction in a notification.
    pub api_v3_key: String,
    /// The serial the merchant's requests must name (`serial_no`).
    pub merchant_serial_no: String,
    /// Sent as `Wechatpay-Serial`.
    pub platform_serial_no: String,
    /// Verifies the merchant's requests.
    pub merchant_public_key: RsaPublicKey,
    /// Signs answers and notifications (its public half is the gateway's
    /// `platform_public_key_path`).
    pub platform_private_key: RsaPrivateKey,
    pub notify: NotifyMode,
}

/// What happens to the notification of a payment made through `POST /mock/pay`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyMode {
    /// Where notifications are posted (`http://127.0.0.1:8080/pay/wechat/notify`); none
    /// are sent without one.
    pub url: Option<String>,
    /// How many times the same notification is sent (WeChat Pay retries).
    pub times: usize,
    /// Send them all at once rather than one after another.
    pub concurrent: bool,
    /// Send none: the gateway must find the payment by querying the order.
    pub lose: bool,
}

impl Default for NotifyMode {
    fn default() -> Self {
        NotifyMode {
            url: None,
            times: 1,
            concurrent: false,
            lose: false,
        }
    }
}

/// An order as the mock holds it.
#[derive(Clone, Debug)]
pub struct MockOrder {
    /// The JSON the gateway sent to place it.
    pub request: Value,
    /// `JSAPI` or `NATIVE`.
    pub trade_type: &'static str,
    pub prepay_id: String,
    /// The Native order's `code_url` (what the QR code holds).
    pub code_url: Option<String>,
    pub paid: bool,
    pub closed: bool,
    /// How each notification sent for it was answered: the HTTP status, or the error.
    pub notifications: Vec<Result<u16, String>>,
}

impl MockOrder {
    /// `amount.total` of the order, in fen.
    pub fn total(&self) -> i64 {
        self.request["amount"]["total"].as_i64().unwrap_or(0)
    }
}

#[derive(Default)]
struct State {
    orders: HashMap<String, MockOrder>,
    /// Requests whose `Authorization` did not verify (answered 401).
    bad_signatures: usize,
    /// Signed requests refused as malformed (answered 400): what was wrong.
    bad_requests: Vec<String>,
    /// `METHOD path` of every request, in order.
    seen: Vec<String>,
}

struct Inner {
    config: MockPayConfig,
    notify: Mutex<NotifyMode>,
    state: Mutex<State>,
    /// Signs answers instead of the platform key (a man in the middle) when set.
    answer_signer: Mutex<Option<RsaPrivateKey>>,
    http: reqwest::Client,
}

/// Stops the accept loop when the last handle is dropped.
struct AcceptLoop(JoinHandle<()>);

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running mock. Clones share it; the listener closes when the last one is dropped.
#[derive(Clone)]
pub struct MockPay {
    addr: SocketAddr,
    inner: Arc<Inner>,
    _accept: Arc<AcceptLoop>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MockPay {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start(config: MockPayConfig) -> io::Result<MockPay> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, config).await
    }

    /// Starts on `listener`.
    pub async fn start_on(listener: TcpListener, config: MockPayConfig) -> io::Result<MockPay> {
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(io::Error::other)?;
        let inner = Arc::new(Inner {
            notify: Mutex::new(config.notify.clone()),
            config,
            state: Mutex::default(),
            answer_signer: Mutex::new(None),
            http,
        });
        let server = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors, say: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let inner = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(inner.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(MockPay {
            addr,
            inner,
            _accept: Arc::new(AcceptLoop(accept)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`: the gateway's `CHATGATE_WECHAT_PAY_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &MockPayConfig {
        &self.inner.config
    }

    pub fn notify_mode(&self) -> NotifyMode {
        lock(&self.inner.notify).clone()
    }

    pub fn set_notify_mode(&self, mode: NotifyMode) {
        *lock(&self.inner.notify) = mode;
    }

    /// Sign answers with `key` instead of the platform key (`None`: the platform key again).
    pub fn sign_answers_with(&self, key: Option<RsaPrivateKey>) {
        *lock(&self.inner.answer_signer) = key;
    }

    /// The order `out_trade_no`, if it was placed here.
    pub fn order(&self, out_trade_no: &str) -> Option<MockOrder> {
        lock(&self.inner.state).orders.get(out_trade_no).cloned()
    }

    /// Every order placed here, by `out_trade_no`.
    pub fn orders(&self) -> HashMap<String, MockOrder> {
        lock(&self.inner.state).orders.clone()
    }

    /// Requests refused because their signature did not verify.
    pub fn bad_signatures(&self) -> usize {
        lock(&self.inner.state).bad_signatures
    }

    /// Signed requests refused as malformed (wrong merchant, missing fields, …).
    pub fn bad_requests(&self) -> Vec<String> {
        lock(&self.inner.state).bad_requests.clone()
    }

    /// Whether some request's `METHOD path` started with `what`.
    pub fn saw(&self, what: &str) -> bool {
        lock(&self.inner.state)
            .seen
            .iter()
            .any(|s| s.starts_with(what))
    }

    /// The payer pays order `out_trade_no` (no notification); false if it is unknown.
    pub fn pay(&self, out_trade_no: &str) -> bool {
        match lock(&self.inner.state).orders.get_mut(out_trade_no) {
            Some(order) => {
                order.paid = true;
                true
            }
            None => false,
        }
    }

    /// Marks order `out_trade_no` closed or open again; false if it is unknown.
    pub fn set_closed(&self, out_trade_no: &str, closed: bool) -> bool {
        match lock(&self.inner.state).orders.get_mut(out_trade_no) {
            Some(order) => {
                order.closed = closed;
                true
            }
            None => false,
        }
    }

    /// The transaction of order `out_trade_no` as WeChat Pay reports it (`total` overrides
    /// the amount); `None` if it was never placed here.
    pub fn transaction(&self, out_trade_no: &str, total: Option<i64>) -> Option<Value> {
        self.inner.transaction(out_trade_no, total)
    }

    /// A genuine notification of `tx`: encrypted with the API v3 key, signed now with the
    /// platform key.
    pub fn notification(&self, tx: &Value) -> Result<Notification, String> {
        self.inner.notification(tx)
    }

    /// Pays `out_trade_no` and sends its notification as the notify mode says; how each
    /// was answered.
    pub async fn pay_and_notify(
        &self,
        out_trade_no: &str,
    ) -> Result<Vec<Result<u16, String>>, String> {
        let mode = self.notify_mode();
        self.inner.pay_and_notify(out_trade_no, &mode).await
    }
}

/// A notification as WeChat Pay posts it: headers and body.
#[derive(Clone, Debug)]
pub struct Notification {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How to seal a notification (the parameters a test spoils one by one).
pub struct Sealing<'a> {
    /// The AEAD_AES_256_GCM key (the API v3 key, 32 bytes).
    pub api_v3_key: &'a [u8],
    /// Signs the notification (WeChat Pay's platform key).
    pub signer: &'a RsaPrivateKey,
    /// `Wechatpay-Serial`.
    pub serial: &'a str,
    /// `Wechatpay-Timestamp`, unix seconds.
    pub timestamp: i64,
    /// Alter the ciphertext before signing (it must then fail to decrypt).
    pub tamper_ciphertext: bool,
}

/// A `TRANSACTION.SUCCESS` notification carrying `tx`.
pub fn seal_notification(tx: &Value, sealing: &Sealing<'_>) -> Result<Notification, String> {
    let nonce = random_token(12);
    let nonce_bytes = <[u8; 12]>::try_from(nonce.as_bytes()).map_err(|e| e.to_string())?;
    let cipher = Aes256Gcm::new_from_slice(sealing.api_v3_key)
        .map_err(|_| "the API v3 key must be 32 bytes".to_string())?;
    let plaintext = tx.to_string();
    let mut sealed = cipher
        .encrypt(
            &Nonce::from(nonce_bytes),
            Payload {
                msg: plaintext.as_bytes(),
                aad: b"transaction",
            },
        )
        .map_err(|e| format!("encryption failed: {e}"))?;
    if sealing.tamper_ciphertext
        && let Some(byte) = sealed.get_mut(5)
    {
        *byte ^= 0x40;
    }
    let body = json!({
        "id": format!("EV-{}", random_token(20)),
        "create_time": "2026-11-22T10:34:56+08:00",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": BASE64.encode(&sealed),
            "associated_data": "transaction",
            "nonce": nonce,
        }
    })
    .to_string();
    let ts = sealing.timestamp.to_string();
    let sig_nonce = random_token(32);
    let signature = sign(sealing.signer, &format!("{ts}\n{sig_nonce}\n{body}\n"))?;
    Ok(Notification {
        headers: vec![
            ("Wechatpay-Timestamp".into(), ts),
            ("Wechatpay-Nonce".into(), sig_nonce),
            ("Wechatpay-Signature".into(), signature),
            ("Wechatpay-Serial".into(), sealing.serial.into()),
            (
                "Wechatpay-Signature-Type".into(),
                "WECHATPAY2-SHA256-RSA2048".into(),
            ),
        ],
        body: body.into_bytes(),
    })
}

/// RSA-SHA256 (PKCS#1 v1.5) signature of `message`, base64.
pub fn sign(key: &RsaPrivateKey, message: &str) -> Result<String, String> {
    let signature = SigningKey::<Sha256>::new(key.clone())
        .try_sign(message.as_bytes())
        .map_err(|e| format!("signing failed: {e}"))?;
    Ok(BASE64.encode(signature.to_bytes()))
}

/// Whether `signature` (base64) is `key`'s RSA-SHA256 signature of `message`.
pub fn verifies(key: &RsaPublicKey, message: &str, signature: &str) -> bool {
    let Ok(bytes) = BASE64.decode(signature) else {
        return false;
    };
    let Ok(signature) = Signature::try_from(bytes.as_slice()) else {
        return false;
    };
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(message.as_bytes(), &signature)
        .is_ok()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn random_token(n: usize) -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

/// A WeChat Pay error JSON.
fn error_body(code: &str, message: &str) -> String {
    json!({ "code": code, "message": message }).to_string()
}

type Resp = Response<Full<Bytes>>;

impl Inner {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.uri().path().to_string());
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let has_agent = req.headers().contains_key("user-agent");
        let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => return self.answer(400, error_body("PARAM_ERROR", &e.to_string())),
        };
        let Ok(body) = String::from_utf8(body.to_vec()) else {
            return self.answer(400, error_body("PARAM_ERROR", "the body is not UTF-8"));
        };
        lock(&self.state).seen.push(format!("{method} {path}"));
        let route = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = route.trim_matches('/').split('/').collect();

        // The test hooks: not WeChat Pay's API, not signed.
        if segments.first() == Some(&"mock") {
            return self.hook(&method, &segments[1..], &body).await;
        }

        if !has_agent || !self.authorized(&method, &path, &auth, &body) {
            lock(&self.state).bad_signatures += 1;
            return self.answer(401, error_body("SIGN_ERROR", "签名错误"));
        }
        let result = match (method.as_str(), segments.as_slice()) {
            ("POST", ["v3", "pay", "transactions", kind @ ("jsapi" | "native")]) => {
                self.place(kind, &body)
            }
            ("GET", ["v3", "pay", "transactions", "out-trade-no", no]) => {
                self.query(no, path.split_once('?').map(|(_, q)| q))
            }
            ("POST", ["v3", "pay", "transactions", "out-trade-no", no, "close"]) => {
                self.close(no, &body)
            }
            _ => Err((404, "NOT_FOUND", "no such API".to_string())),
        };
        match result {
            Ok((status, body)) => self.answer(status, body),
            Err((status, code, message)) => {
                if status == 400 {
                    lock(&self.state)
                        .bad_requests
                        .push(format!("{method} {path}: {message}"));
                }
                self.answer(status, error_body(code, &message))
            }
        }
    }

    /// `POST /v3/pay/transactions/{jsapi,native}`.
    fn place(&self, kind: &str, body: &str) -> Outcome {
        let request: Value =
            serde_json::from_str(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
        let config = &self.config;
        if request["mchid"] != config.mch_id.as_str() {
            return Err(bad(format!(
                "mchid {} is not {}",
                request["mchid"], config.mch_id
            )));
        }
        if request["appid"] != config.app_id.as_str() {
            return Err(bad(format!(
                "appid {} is not {}",
                request["appid"], config.app_id
            )));
        }
        let Some(no) = request["out_trade_no"].as_str().map(str::to_string) else {
            return Err(bad("no out_trade_no".into()));
        };
        if !(6..=32).contains(&no.len()) {
            return Err(bad(format!("out_trade_no {no:?} must be 6 to 32 bytes")));
        }
        match request["amount"]["total"].as_i64() {
            Some(total) if total > 0 => {}
            _ => return Err(bad("amount.total must be a positive integer".into())),
        }
        for field in ["description", "notify_url"] {
            if request[field].as_str().is_none_or(str::is_empty) {
                return Err(bad(format!("no {field}")));
            }
        }
        let jsapi = kind == "jsapi";
        if jsapi
            && request["payer"]["openid"]
                .as_str()
                .is_none_or(str::is_empty)
        {
            return Err(bad("a JSAPI order needs payer.openid".into()));
        }
        let prepay_id = format!("wx{}", random_token(30));
        let code_url =
            (!jsapi).then(|| format!("weixin://wxpay/bizpayurl?pr={}", &prepay_id[2..12]));
        let answer = match &code_url {
            Some(code_url) => json!({ "code_url": code_url }),
            None => json!({ "prepay_id": prepay_id }),
        };
        let trade_type = if jsapi { "JSAPI" } else { "NATIVE" };
        tracing::info!(
            "order {no}: {trade_type}, {} fen, placed",
            request["amount"]["total"]
        );
        let order = MockOrder {
            request,
            trade_type,
            prepay_id,
            code_url,
            paid: false,
            closed: false,
            notifications: Vec::new(),
        };
        lock(&self.state).orders.insert(no, order);
        Ok((200, answer.to_string()))
    }

    /// `GET /v3/pay/transactions/out-trade-no/{no}?mchid=…`.
    fn query(&self, no: &str, query: Option<&str>) -> Outcome {
        let expected = format!("mchid={}", self.config.mch_id);
        if query != Some(expected.as_str()) {
            return Err(bad(format!("the query string must be {expected:?}")));
        }
        match self.transaction(no, None) {
            Some(tx) => Ok((200, tx.to_string())),
            None => Err((404, "ORDER_NOT_EXIST", "订单不存在".into())),
        }
    }

    /// `POST /v3/pay/transactions/out-trade-no/{no}/close {mchid}`.
    fn close(&self, no: &str, body: &str) -> Outcome {
        let request: Value =
            serde_json::from_str(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
        if request["mchid"] != self.config.mch_id.as_str() {
            return Err(bad(format!(
                "mchid {} is not {}",
                request["mchid"], self.config.mch_id
            )));
        }
        let mut state = lock(&self.state);
        match state.orders.get_mut(no) {
            Some(order) if order.paid => Err((400, "ORDER_PAID", "订单已支付".into())),
            Some(order) => {
                order.closed = true;
                tracing::info!("order {no}: closed");
                Ok((204, String::new()))
            }
            None => Err((404, "ORDER_NOT_EXIST", "订单不存在".into())),
        }
    }

    /// `/mock/*`.
    async fn hook(&self, method: &str, segments: &[&str], body: &str) -> Resp {
        let plain = |status: u16, body: Value| json_response(status, body.to_string());
        let request: Value = if body.trim().is_empty() {
            Value::Null
        } else {
            match serde_json::from_str(body) {
                Ok(v) => v,
                Err(e) => return plain(400, json!({"error": format!("not JSON: {e}")})),
            }
        };
        match (method, segments) {
            ("POST", ["pay"]) => {
                let no = if let Some(code_url) = request["code_url"].as_str() {
                    lock(&self.state)
                        .orders
                        .iter()
                        .find(|(_, o)| o.code_url.as_deref() == Some(code_url))
                        .map(|(no, _)| no.clone())
                } else {
                    request["out_trade_no"].as_str().map(str::to_string)
                };
                let Some(no) = no else {
                    return plain(
                        404,
                        json!({"error": "no order with this code_url or out_trade_no (send {\"code_url\"} or {\"out_trade_no\"})"}),
                    );
                };
                let mut mode = lock(&self.notify).clone();
                if let Err(e) = apply_mode(&mut mode, &request) {
                    return plain(400, json!({ "error": e }));
                }
                match self.pay_and_notify(&no, &mode).await {
                    Ok(deliveries) => {
                        let total = self
                            .transaction(&no, None)
                            .map(|tx| tx["amount"]["total"].clone());
                        let notifications: Vec<Value> = deliveries
                            .iter()
                            .map(|d| match d {
                                Ok(status) => json!({ "status": status }),
                                Err(e) => json!({ "error": e }),
                            })
                            .collect();
                        plain(
                            200,
                            json!({"out_trade_no": no, "amount": total, "paid": true,
                                   "lost": mode.lose, "notifications": notifications}),
                        )
                    }
                    Err(e) => plain(409, json!({ "error": e })),
                }
            }
            ("POST", ["config"]) => {
                let mut mode = lock(&self.notify).clone();
                if let Err(e) = apply_mode(&mut mode, &request) {
                    return plain(400, json!({ "error": e }));
                }
                *lock(&self.notify) = mode.clone();
                tracing::info!("notify mode: {mode:?}");
                plain(200, mode_json(&mode))
            }
            ("GET", ["config"]) => plain(200, mode_json(&lock(&self.notify))),
            ("GET", ["orders"]) => {
                let state = lock(&self.state);
                let mut orders: Vec<(&String, &MockOrder)> = state.orders.iter().collect();
                orders.sort_by(|a, b| a.0.cmp(b.0));
                let orders: Vec<Value> = orders
                    .into_iter()
                    .map(|(no, o)| {
                        json!({"out_trade_no": no, "trade_type": o.trade_type, "total": o.total(),
                               "paid": o.paid, "closed": o.closed,
                               "notifications": o.notifications.iter().map(|d| match d {
                                   Ok(status) => json!({ "status": status }),
                                   Err(e) => json!({ "error": e }),
                               }).collect::<Vec<_>>()})
                    })
                    .collect();
                plain(
                    200,
                    json!({"orders": orders, "bad_signatures": state.bad_signatures,
                           "bad_requests": state.bad_requests}),
                )
            }
            _ => plain(404, json!({"error": "no such hook"})),
        }
    }

    async fn pay_and_notify(
        &self,
        no: &str,
        mode: &NotifyMode,
    ) -> Result<Vec<Result<u16, String>>, String> {
        {
            let mut state = lock(&self.state);
            let order = state
                .orders
                .get_mut(no)
                .ok_or_else(|| format!("order {no} was not placed here"))?;
            if order.closed && !order.paid {
                return Err(format!("order {no} is closed: it cannot be paid"));
            }
            order.paid = true;
        }
        tracing::info!("order {no}: paid");
        let tx = self
            .transaction(no, None)
            .ok_or_else(|| format!("order {no} was not placed here"))?;
        if mode.lose {
            tracing::info!("order {no}: notification lost (as configured)");
            return Ok(Vec::new());
        }
        let Some(url) = mode.url.clone() else {
            tracing::warn!("order {no}: no notify URL configured, notification not sent");
            return Ok(Vec::new());
        };
        // WeChat Pay's retries repeat the notification: the same event, the same bytes.
        let notification = self.notification(&tx)?;
        let deliveries = if mode.concurrent {
            let sends = (0..mode.times).map(|_| self.deliver(&url, &notification));
            futures_util::future::join_all(sends).await
        } else {
            let mut deliveries = Vec::new();
            for _ in 0..mode.times {
                deliveries.push(self.deliver(&url, &notification).await);
            }
            deliveries
        };
        for (i, d) in deliveries.iter().enumerate() {
            match d {
                Ok(status) => tracing::info!(
                    "order {no}: notification {}/{} → HTTP {status}",
                    i + 1,
                    mode.times
                ),
                Err(e) => tracing::warn!(
                    "order {no}: notification {}/{} failed: {e}",
                    i + 1,
                    mode.times
                ),
            }
        }
        if let Some(order) = lock(&self.state).orders.get_mut(no) {
            order.notifications.extend(deliveries.iter().cloned());
        }
        Ok(deliveries)
    }

    async fn deliver(&self, url: &str, notification: &Notification) -> Result<u16, String> {
        let mut req = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("User-Agent", "Mozilla/4.0 (mock WeChat Pay)");
        for (k, v) in &notification.headers {
            req = req.header(k, v);
        }
        req.body(notification.body.clone())
            .send()
            .await
            .map(|resp| resp.status().as_u16())
            .map_err(|e| e.to_string())
    }

    fn notification(&self, tx: &Value) -> Result<Notification, String> {
        seal_notification(
            tx,
            &Sealing {
                api_v3_key: self.config.api_v3_key.as_bytes(),
                signer: &self.config.platform_private_key,
                serial: &self.config.platform_serial_no,
                timestamp: now_secs(),
                tamper_ciphertext: false,
            },
        )
    }

    fn transaction(&self, no: &str, total: Option<i64>) -> Option<Value> {
        let state = lock(&self.state);
        let order = state.orders.get(no)?;
        let trade_state = if order.paid {
            "SUCCESS"
        } else if order.closed {
            "CLOSED"
        } else {
            "NOTPAY"
        };
        let total = total.unwrap_or_else(|| order.total());
        let mut tx = json!({
            "appid": order.request["appid"],
            "mchid": order.request["mchid"],
            "out_trade_no": no,
            "trade_type": order.trade_type,
            "trade_state": trade_state,
            "trade_state_desc": trade_state,
            "bank_type": "OTHERS",
            "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
            "payer": {"openid": order.request["payer"]["openid"].as_str().unwrap_or("o-scanner")},
        });
        if order.paid {
            tx["transaction_id"] = json!(format!("42000{}", &order.prepay_id[2..20]));
            tx["success_time"] = json!("2026-11-22T10:34:56+08:00");
        }
        Some(tx)
    }

    /// Checks `Authorization` the way WeChat Pay documents it, with the merchant's public
    /// key.
    fn authorized(&self, method: &str, path: &str, auth: &str, body: &str) -> bool {
        let Some(params) = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
            return false;
        };
        let fields: HashMap<&str, &str> = params
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim(), v.trim().strip_prefix('"')?.strip_suffix('"')?))
            })
            .collect();
        let (Some(mchid), Some(nonce), Some(ts), Some(serial), Some(signature)) = (
            fields.get("mchid"),
            fields.get("nonce_str"),
            fields.get("timestamp"),
            fields.get("serial_no"),
            fields.get("signature"),
        ) else {
            return false;
        };
        if *mchid != self.config.mch_id || *serial != self.config.merchant_serial_no {
            return false;
        }
        let Ok(ts_value) = ts.parse::<i64>() else {
            return false;
        };
        if (now_secs() - ts_value).abs() > MAX_SKEW_SECS {
            return false;
        }
        let message = format!("{method}\n{path}\n{ts}\n{nonce}\n{body}\n");
        verifies(&self.config.merchant_public_key, &message, signature)
    }

    /// An answer signed with the platform key (or the key set by `sign_answers_with`).
    fn answer(&self, status: u16, body: String) -> Resp {
        let ts = now_secs().to_string();
        let nonce = random_token(32);
        let message = format!("{ts}\n{nonce}\n{body}\n");
        let forger = lock(&self.answer_signer).clone();
        let key = forger.as_ref().unwrap_or(&self.config.platform_private_key);
        let signature = match sign(key, &message) {
            Ok(signature) => signature,
            Err(e) => return json_response(500, error_body("SYSTEM_ERROR", &e)),
        };
        let mut resp = json_response(status, body);
        let headers = resp.headers_mut();
        for (name, value) in [
            ("wechatpay-timestamp", ts),
            ("wechatpay-nonce", nonce),
            ("wechatpay-signature", signature),
            ("wechatpay-serial", self.config.platform_serial_no.clone()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        resp
    }
}

/// Success: the status and the body; failure: the status, WeChat Pay's code, the message.
type Outcome = Result<(u16, String), (u16, &'static str, String)>;

fn bad(message: String) -> (u16, &'static str, String) {
    (400, "PARAM_ERROR", message)
}

fn json_response(status: u16, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Applies the optional `notify_url`, `notify_times`, `concurrent`, `lose` of a hook's
/// JSON to `mode`.
fn apply_mode(mode: &mut NotifyMode, request: &Value) -> Result<(), String> {
    if let Some(url) = request.get("notify_url") {
        match url {
            Value::Null => mode.url = None,
            Value::String(u) if reqwest::Url::parse(u).is_ok() => mode.url = Some(u.clone()),
            other => return Err(format!("notify_url {other} is not a URL")),
        }
    }
    if let Some(times) = request.get("notify_times") {
        mode.times = times
            .as_u64()
            .filter(|t| *t <= 100)
            .ok_or("notify_times must be 0 to 100")? as usize;
    }
    if let Some(concurrent) = request.get("concurrent") {
        mode.concurrent = concurrent
            .as_bool()
            .ok_or("concurrent must be true or false")?;
    }
    if let Some(lose) = request.get("lose") {
        mode.lose = lose.as_bool().ok_or("lose must be true or false")?;
    }
    Ok(())
}

fn mode_json(mode: &NotifyMode) -> Value {
    json!({"notify_url": mode.url, "notify_times": mode.times,
           "concurrent": mode.concurrent, "lose": mode.lose})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_mode_overrides() {
        let mut mode = NotifyMode::default();
        apply_mode(
            &mut mode,
            &json!({"notify_url": "http://127.0.0.1:1/pay/wechat/notify", "notify_times": 3,
                    "concurrent": true}),
        )
        .unwrap();
        assert_eq!(mode.times, 3);
        assert!(mode.concurrent && !mode.lose);
        assert!(apply_mode(&mut mode, &json!({"notify_times": -1})).is_err());
        assert!(apply_mode(&mut mode, &json!({"notify_url": "not a url"})).is_err());
        apply_mode(&mut mode, &json!({"notify_url": null, "lose": true})).unwrap();
        assert_eq!((mode.url, mode.lose), (None, true));
    }

    #[test]
    fn tokens_have_the_asked_length() {
        assert_eq!(random_token(12).len(), 12);
        assert_eq!(random_token(40).len(), 40);
    }
}
