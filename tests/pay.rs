//! Online recharge against a simulated WeChat Pay API v3 with its own RSA key pair
//! (`chatgate::pay::mock`, also run as the `mock_wechat_pay` example). The mock checks
//! every request's `Authorization` signature against the merchant's public key (with the
//! RSA crate directly, independently of the gateway's `pay::crypto`), signs its answers
//! with its platform key, records orders, and sends notifications signed with the platform
//! key and encrypted with the API v3 key. A paid order credits exactly once — one
//! notification, the same one ten times at once, on two gateways sharing a database, three
//! at once or two in a row from the mock's `/mock/pay` hook, or none (the order query and
//! the sweep find it); forged, tampered, stale, unknown and
//! wrong-amount notifications credit nothing; expired orders are closed; the ledger
//! invariant holds on SQLite, PostgreSQL and MySQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;

use chatgate::config::{Config, RechargePackage, WechatPayConfig};
use chatgate::pay::mock::{
    MockPay, MockPayConfig, Notification, NotifyMode, Sealing, seal_notification, verifies,
};
use common::{Gateway, RawClient, databases};
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

const MCH_ID: &str = "1900000109";
const APP_ID: &str = "wxd678efh567hg6787";
const API_V3_KEY: &str = "a7cde1ZbH9sG3kLmN5pQ2rT8uV0wXy4F";
const MERCHANT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
const PLATFORM_SERIAL: &str = "PUB_KEY_ID_0114232134912410000000000000";

/// 10 yuan buys 10 units; 30 yuan buys 33.
const P10: (&str, i64, i64) = ("p10", 1000, 10_000_000);
const P30: (&str, i64, i64) = ("p30", 3000, 33_000_000);

struct Keys {
    merchant: RsaPrivateKey,
    platform: RsaPrivateKey,
    /// Neither the merchant's nor WeChat Pay's: signs forgeries.
    stranger: RsaPrivateKey,
}

/// Generated once per test binary (2048-bit, as WeChat Pay's keys are).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rsa::rand_core::OsRng;
        let mut new = || RsaPrivateKey::new(&mut rng, 2048).unwrap();
        Keys {
            merchant: new(),
            platform: new(),
            stranger: new(),
        }
    })
}

/// Signing and verifying come from the mock WeChat Pay (`pay::mock`), which uses the RSA
/// crate directly — independently of the gateway's `pay::crypto`.
fn sign(key: &RsaPrivateKey, message: &str) -> String {
    chatgate::pay::mock::sign(key, message).unwrap()
}

fn now_secs() -> i64 {
    chatgate::pay::mock::now_secs()
}

/// The simulated WeChat Pay API v3 (`chatgate::pay::mock`, also the `mock_wechat_pay`
/// example) for the merchant account of these tests. It checks every request's signature
/// with the merchant's public key and signs its answers with the platform key.
async fn start_mock(notify: NotifyMode) -> MockPay {
    MockPay::start(MockPayConfig {
        mch_id: MCH_ID.into(),
        app_id: APP_ID.into(),
        api_v3_key: API_V3_KEY.into(),
        merchant_serial_no: MERCHANT_SERIAL.into(),
        platform_serial_no: PLATFORM_SERIAL.into(),
        merchant_public_key: keys().merchant.to_public_key(),
        platform_private_key: keys().platform.clone(),
        notify,
    })
    .await
    .unwrap()
}

/// A mock whose payments are notified only by the tests themselves.
async fn mock_pay() -> MockPay {
    start_mock(NotifyMode::default()).await
}

/// Every request the gateway sent the mock was signed right and well-formed.
fn assert_all_accepted(mock: &MockPay) {
    assert_eq!(mock.bad_signatures(), 0, "every request verified");
    assert_eq!(
        mock.bad_requests(),
        Vec::<String>::new(),
        "every request well-formed"
    );
}

/// How to spoil a notification.
#[derive(Clone, Copy, PartialEq)]
enum Spoil {
    None,
    /// Signed with a key that is not WeChat Pay's.
    ForgedSignature,
    /// The body changed after signing.
    AlteredBody,
    /// The ciphertext altered, then signed properly (it must not decrypt).
    TamperedCiphertext,
    /// Encrypted with another API v3 key.
    OtherApiKey,
    /// Signed ten minutes ago.
    Stale,
}

/// A `TRANSACTION.SUCCESS` notification carrying `tx`.
fn notice(tx: &Value, spoil: Spoil) -> Notification {
    let mut notification = seal_notification(
        tx,
        &Sealing {
            api_v3_key: if spoil == Spoil::OtherApiKey {
                b"00000000000000000000000000000000"
            } else {
                API_V3_KEY.as_bytes()
            },
            signer: if spoil == Spoil::ForgedSignature {
                &keys().stranger
            } else {
                &keys().platform
            },
            serial: PLATFORM_SERIAL,
            timestamp: if spoil == Spoil::Stale {
                now_secs() - 600
            } else {
                now_secs()
            },
            tamper_ciphertext: spoil == Spoil::TamperedCiphertext,
        },
    )
    .unwrap();
    if spoil == Spoil::AlteredBody {
        let body = String::from_utf8(notification.body).unwrap();
        assert!(body.contains("支付成功"));
        notification.body = body.replace("支付成功", "支付成功 ").into_bytes();
    }
    notification
}

/// Posts a notification to a gateway; the status and the body.
async fn deliver(addr: std::net::SocketAddr, notice: &Notification) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = notice
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let resp = RawClient::send(
        addr,
        "POST",
        "/pay/wechat/notify",
        None,
        &headers,
        &notice.body,
    )
    .await
    .read_all()
    .await;
    (
        resp.status,
        serde_json::from_slice(&resp.body()).unwrap_or(Value::Null),
    )
}

/// The key files of the merchant (PKCS#8) and WeChat Pay (SPKI).
fn key_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("apiclient_key.pem"),
        keys()
            .merchant
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wechatpay_pub.pem"),
        keys()
            .platform
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    dir
}

fn packages() -> Vec<RechargePackage> {
    [P10, P30]
        .iter()
        .map(|(id, price, credit)| RechargePackage {
            id: id.to_string(),
            title: format!("{} 元", price / 100),
            price_fen: *price,
            credit_micros: *credit,
        })
        .collect()
}

/// Points the gateway at the mock with the merchant account of these tests.
fn with_pay(config: &mut Config, mock: &MockPay, files: &tempfile::TempDir) {
    config.wechat.pay_api_base = mock.base_url();
    config.wechat_pay = Some(WechatPayConfig {
        mch_id: MCH_ID.into(),
        app_id: APP_ID.into(),
        api_v3_key: API_V3_KEY.into(),
        merchant_serial_no: MERCHANT_SERIAL.into(),
        merchant_private_key_path: files.path().join("apiclient_key.pem"),
        platform_public_key_path: files.path().join("wechatpay_pub.pem"),
        platform_serial_no: PLATFORM_SERIAL.into(),
        notify_url: "https://pay.example.com/pay/wechat/notify".into(),
        order_ttl_secs: 1800,
        query_after_secs: 0,
    });
    config.recharge_packages = packages();
    // The tests run the sweep themselves, when they mean to.
    config.sweep_interval_secs = 3600.0;
}

async fn start(url: Option<String>, mock: &MockPay) -> Gateway {
    let files = key_files();
    Gateway::start_on(url, |c| with_pay(c, mock, &files)).await
}

/// A registered user with no balance; with a mini-program openid when `openid` is set.
async fn user(gw: &Gateway, name: &str, openid: Option<&str>) -> (String, i64) {
    let (token, id) = gw.register_with(name, 0).await;
    if let Some(openid) = openid {
        entity::user::Entity::update_many()
            .col_expr(
                entity::user::Column::MpOpenid,
                sea_orm::sea_query::Expr::value(openid),
            )
            .filter(entity::user::Column::Id.eq(id))
            .exec(&gw.app.db)
            .await
            .unwrap();
    }
    (token, id)
}

async fn balance(gw: &Gateway, token: &str) -> i64 {
    let (status, me) = gw.json("GET", "/api/me", Some(token), &Value::Null).await;
    assert_eq!(status, 200, "{me}");
    me["balance_micros"].as_i64().unwrap()
}

/// `pay` ledger entries of a user.
async fn pay_entries(gw: &Gateway, user_id: i64) -> Vec<entity::ledger_entry::Model> {
    entity::ledger_entry::Entity::find()
        .filter(entity::ledger_entry::Column::UserId.eq(user_id))
        .filter(entity::ledger_entry::Column::Kind.eq("pay"))
        .all(&gw.app.db)
        .await
        .unwrap()
}

async fn order(gw: &Gateway, token: &str, package: &str, channel: &str) -> (u16, Value) {
    gw.json(
        "POST",
        "/api/pay/orders",
        Some(token),
        &json!({"package_id": package, "channel": channel}),
    )
    .await
}

/// A Native order of `package`; its order id.
async fn native_order(gw: &Gateway, token: &str, package: &str) -> String {
    let (status, body) = order(gw, token, package, "native").await;
    assert_eq!(status, 200, "{body}");
    body["order_id"].as_str().unwrap().to_string()
}

async fn order_status(gw: &Gateway, token: &str, id: &str) -> Value {
    let (status, body) = gw
        .json(
            "GET",
            &format!("/api/pay/orders/{id}"),
            Some(token),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn stored_status(gw: &Gateway, id: &str) -> String {
    entity::pay_order::Entity::find_by_id(id.to_string())
        .one(&gw.app.db)
        .await
        .unwrap()
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsapi_and_native_orders_are_signed_both_ways() {
    let mock = mock_pay().await;
    let gw = start(None, &mock).await;
    let (token, _) = user(&gw, "mp-user", Some("o-mp-user")).await;

    let (status, packages) = gw
        .json("GET", "/api/pay/packages", None, &Value::Null)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        packages,
        json!({"wechat_pay": true, "packages": [
            {"id": "p10", "title": "10 元", "price_fen": 1000, "credit_micros": 10_000_000},
            {"id": "p30", "title": "30 元", "price_fen": 3000, "credit_micros": 33_000_000},
        ]})
    );

    // JSAPI: the order placed at WeChat Pay is the package's, for this payer.
    let (status, jsapi) = order(&gw, &token, "p30", "jsapi").await;
    assert_eq!(status, 200, "{jsapi}");
    let id = jsapi["order_id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(jsapi["status"], "pending");
    assert_eq!(jsapi["price_fen"], 3000);
    assert_eq!(jsapi["credit_micros"], 33_000_000);
    let placed = mock.order(id).expect("placed at WeChat Pay");
    assert_eq!(placed.trade_type, "JSAPI");
    let request = &placed.request;
    assert_eq!(request["mchid"], MCH_ID);
    assert_eq!(request["appid"], APP_ID);
    assert_eq!(request["out_trade_no"], id);
    assert_eq!(request["amount"], json!({"total": 3000, "currency": "CNY"}));
    assert_eq!(request["payer"]["openid"], "o-mp-user");
    assert_eq!(request["description"], "30 元");
    assert_eq!(
        request["notify_url"],
        "https://pay.example.com/pay/wechat/notify"
    );
    assert!(
        request["time_expire"].as_str().unwrap().ends_with("+08:00"),
        "{request}"
    );

    // pay_params: what uni.requestPayment takes, signed with the merchant key.
    let params = &jsapi["pay_params"];
    assert_eq!(params["signType"], "RSA");
    assert_eq!(
        params["package"],
        format!("prepay_id={}", placed.prepay_id).as_str()
    );
    let ts = params["timeStamp"].as_str().unwrap();
    assert!((ts.parse::<i64>().unwrap() - now_secs()).abs() < 60);
    let nonce = params["nonceStr"].as_str().unwrap();
    assert!(!nonce.is_empty() && nonce.len() <= 32);
    let message = format!(
        "{APP_ID}\n{ts}\n{nonce}\n{}\n",
        params["package"].as_str().unwrap()
    );
    let merchant_public = keys().merchant.to_public_key();
    assert!(verifies(
        &merchant_public,
        &message,
        params["paySign"].as_str().unwrap()
    ));
    assert!(
        !verifies(
            &merchant_public,
            &message.replace(APP_ID, "wx-other"),
            params["paySign"].as_str().unwrap()
        ),
        "the check can fail"
    );

    // Native: a code URL for the QR code; no payer.
    let (status, native) = order(&gw, &token, "p10", "native").await;
    assert_eq!(status, 200, "{native}");
    let id = native["order_id"].as_str().unwrap();
    let placed = mock.order(id).unwrap();
    assert_eq!(placed.trade_type, "NATIVE");
    assert!(placed.request.get("payer").is_none());
    assert_eq!(placed.request["amount"]["total"], 1000);
    assert!(
        native["code_url"]
            .as_str()
            .unwrap()
            .starts_with("weixin://wxpay/bizpayurl?pr="),
        "{native}"
    );
    assert!(native.get("pay_params").is_none());
    assert_eq!(order_status(&gw, &token, id).await["status"], "pending");
    assert_all_accepted(&mock);

    // Refusals: no openid for JSAPI, unknown package, bad channel, someone else's order.
    let (plain_token, _) = user(&gw, "h5-user", None).await;
    let (status, body) = order(&gw, &plain_token, "p10", "jsapi").await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (400, Some(10001)),
        "{body}"
    );
    let (status, body) = order(&gw, &plain_token, "p99", "native").await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(404)), "{body}");
    let (status, body) = order(&gw, &plain_token, "p10", "alipay").await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (400, Some(10001)),
        "{body}"
    );
    let (status, _) = gw
        .json(
            "GET",
            &format!("/api/pay/orders/{id}"),
            Some(&plain_token),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 404, "users see only their own orders");
    let (status, _) = gw
        .json(
            "POST",
            "/api/pay/orders",
            None,
            &json!({"package_id": "p10", "channel": "native"}),
        )
        .await;
    assert_eq!(status, 401);

    // An answer not signed by WeChat Pay is not believed: the order fails and is closed.
    mock.sign_answers_with(Some(keys().stranger.clone()));
    let (status, body) = order(&gw, &token, "p10", "native").await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (502, Some(11000)),
        "{body}"
    );
    mock.sign_answers_with(None);
    let closed = entity::pay_order::Entity::find()
        .filter(entity::pay_order::Column::Status.eq("closed"))
        .all(&gw.app.db)
        .await
        .unwrap();
    assert_eq!(closed.len(), 1);
    gw.assert_ledger_ok().await;

    // The mock's own check can fail: a request signed with another key is refused.
    let ts = now_secs();
    let path = "/v3/pay/transactions/native";
    let signature = sign(
        &keys().stranger,
        &format!("POST\n{path}\n{ts}\nNONCE\n{{}}\n"),
    );
    let probe = reqwest::Client::new()
        .post(format!("{}{path}", mock.base_url()))
        .header("User-Agent", "probe")
        .header(
            "Authorization",
            format!(
                "WECHATPAY2-SHA256-RSA2048 mchid=\"{MCH_ID}\",nonce_str=\"NONCE\",signature=\"{signature}\",timestamp=\"{ts}\",serial_no=\"{MERCHANT_SERIAL}\""
            ),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 401);
    assert_eq!(mock.bad_signatures(), 1);
    assert!(mock.bad_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_ten_times_at_once_credits_once() {
    for (db, url) in databases().await {
        let mock = mock_pay().await;
        let gw = start(url, &mock).await;
        let (token, user_id) = user(&gw, "payer", None).await;
        let id = native_order(&gw, &token, "p10").await;
        assert!(mock.pay(&id));
        let tx = mock.transaction(&id, None).unwrap();

        let (status, _) = deliver(gw.addr, &notice(&tx, Spoil::None)).await;
        assert_eq!(status, 204, "{db}");
        assert_eq!(balance(&gw, &token).await, P10.2, "{db}");

        // WeChat Pay retries: the same notification (and fresh signatures of it), ten
        // times at once.
        let same = notice(&tx, Spoil::None);
        let mut tasks = Vec::new();
        for i in 0..10 {
            let n = if i % 2 == 0 {
                same.clone()
            } else {
                notice(&tx, Spoil::None)
            };
            let addr = gw.addr;
            tasks.push(tokio::spawn(async move { deliver(addr, &n).await.0 }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 204, "{db}: handled, so WeChat Pay stops");
        }
        assert_eq!(balance(&gw, &token).await, P10.2, "{db}: credited once");
        let entries = pay_entries(&gw, user_id).await;
        assert_eq!(entries.len(), 1, "{db}");
        assert_eq!(entries[0].reference, format!("pay:{id}"));
        assert_eq!(entries[0].amount_micros, P10.2);
        let view = order_status(&gw, &token, &id).await;
        assert_eq!(view["status"], "paid", "{db}");
        assert_eq!(view["balance_micros"], P10.2, "{db}");
        assert!(view["paid_at"].as_i64().is_some());
        gw.assert_ledger_ok().await;
        assert_all_accepted(&mock);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_notifications_on_two_gateways_credit_once() {
    for (db, url) in databases().await {
        let dir = tempfile::tempdir().unwrap();
        let url = url.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("shared.db").display()
            )
        });
        let mock = mock_pay().await;
        let a = start(Some(url.clone()), &mock).await;
        let b = start(Some(url), &mock).await;
        let (token, user_id) = user(&a, "two-replicas", None).await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let id = native_order(&a, &token, "p30").await;
            assert!(mock.pay(&id));
            ids.push(id);
        }
        // Every order: five notifications to each replica, and order queries on both,
        // all at once.
        let mut tasks = Vec::new();
        for id in &ids {
            let tx = mock.transaction(id, None).unwrap();
            for i in 0..10 {
                let addr = if i % 2 == 0 { a.addr } else { b.addr };
                let n = notice(&tx, Spoil::None);
                tasks.push(tokio::spawn(
                    async move { (204, deliver(addr, &n).await.0) },
                ));
            }
            for addr in [a.addr, b.addr] {
                let (token, path) = (token.clone(), format!("/api/pay/orders/{id}"));
                tasks.push(tokio::spawn(async move {
                    let (status, _) =
                        common::call_json(addr, "GET", &path, Some(&token), &Value::Null).await;
                    (200, status)
                }));
            }
        }
        for t in tasks {
            let (expected, status) = t.await.unwrap();
            assert_eq!(status, expected, "{db}");
        }
        assert_eq!(
            balance(&b, &token).await,
            3 * P30.2,
            "{db}: each order once"
        );
        assert_eq!(pay_entries(&a, user_id).await.len(), 3, "{db}");
        for id in &ids {
            assert_eq!(stored_status(&b, id).await, "paid");
        }
        a.assert_ledger_ok().await;
        b.assert_ledger_ok().await;
        assert_all_accepted(&mock);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_notifications_credit_nothing() {
    for (db, url) in databases().await {
        let mock = mock_pay().await;
        let gw = start(url, &mock).await;
        let (token, user_id) = user(&gw, "victim", None).await;
        let id = native_order(&gw, &token, "p10").await;
        assert!(mock.pay(&id));
        let tx = mock.transaction(&id, None).unwrap();

        // Must come again (4xx + FAIL): not from WeChat Pay, or not readable.
        for spoil in [
            Spoil::ForgedSignature,
            Spoil::AlteredBody,
            Spoil::TamperedCiphertext,
            Spoil::OtherApiKey,
            Spoil::Stale,
        ] {
            let (status, body) = deliver(gw.addr, &notice(&tx, spoil)).await;
            assert!((400..500).contains(&status), "{db}: {status}");
            assert_eq!(body["code"], "FAIL", "{db}");
            assert!(body["message"].is_string());
        }
        let mut unsigned = notice(&tx, Spoil::None);
        unsigned.headers.retain(|(k, _)| k != "Wechatpay-Signature");
        assert_eq!(deliver(gw.addr, &unsigned).await.0, 401, "{db}");
        assert_eq!(stored_status(&gw, &id).await, "pending", "{db}");

        // Handled (204) but never creditable: unknown order, another merchant, another
        // amount.
        let mut unknown = tx.clone();
        unknown["out_trade_no"] = json!("0123456789abcdef0123456789abcdef");
        let mut other_merchant = tx.clone();
        other_merchant["mchid"] = json!("1999999999");
        let mut other_app = tx.clone();
        other_app["appid"] = json!("wx-another-app");
        let cheaper = mock.transaction(&id, Some(1)).unwrap();
        for bad in [&unknown, &other_merchant, &other_app, &cheaper] {
            let (status, _) = deliver(gw.addr, &notice(bad, Spoil::None)).await;
            assert_eq!(status, 204, "{db}: {bad}");
        }
        assert_eq!(balance(&gw, &token).await, 0, "{db}: nothing credited");
        assert!(pay_entries(&gw, user_id).await.is_empty(), "{db}");
        gw.assert_ledger_ok().await;

        // The wrong amount put the order aside (closed, with a note); the genuine
        // notification still credits it, once.
        let row = entity::pay_order::Entity::find_by_id(id.clone())
            .one(&gw.app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, "closed", "{db}");
        assert!(row.note.unwrap().contains("1000 fen"), "{db}");
        for _ in 0..2 {
            assert_eq!(deliver(gw.addr, &notice(&tx, Spoil::None)).await.0, 204);
        }
        assert_eq!(balance(&gw, &token).await, P10.2, "{db}");
        assert_eq!(pay_entries(&gw, user_id).await.len(), 1, "{db}");
        gw.assert_ledger_ok().await;
        assert_all_accepted(&mock);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_found_by_the_query_and_the_sweep() {
    for (db, url) in databases().await {
        let mock = mock_pay().await;
        let gw = start(url, &mock).await;
        let (token, user_id) = user(&gw, "lost", None).await;

        // The order query finds the payment.
        let a = native_order(&gw, &token, "p10").await;
        assert_eq!(order_status(&gw, &token, &a).await["status"], "pending");
        assert!(mock.pay(&a));
        for _ in 0..3 {
            let view = order_status(&gw, &token, &a).await;
            assert_eq!(view["status"], "paid", "{db}");
            assert_eq!(view["credit_micros"], P10.2);
            assert_eq!(view["balance_micros"], P10.2, "{db}: credited once");
        }

        // The sweep finds another; a late notification then changes nothing.
        let b = native_order(&gw, &token, "p30").await;
        let swept = chatgate::pay::reconcile::run_once(&gw.app).await.unwrap();
        assert_eq!(
            swept,
            Default::default(),
            "{db}: unpaid orders stay pending"
        );
        assert!(mock.pay(&b));
        let swept = chatgate::pay::reconcile::run_once(&gw.app).await.unwrap();
        assert_eq!((swept.paid, swept.closed), (1, 0), "{db}");
        assert_eq!(stored_status(&gw, &b).await, "paid");
        let again = chatgate::pay::reconcile::run_once(&gw.app).await.unwrap();
        assert_eq!(
            again,
            Default::default(),
            "{db}: paid orders are left alone"
        );
        let late = notice(&mock.transaction(&b, None).unwrap(), Spoil::None);
        assert_eq!(deliver(gw.addr, &late).await.0, 204);

        assert_eq!(balance(&gw, &token).await, P10.2 + P30.2, "{db}");
        assert_eq!(pay_entries(&gw, user_id).await.len(), 2, "{db}");
        assert_all_accepted(&mock);
        gw.assert_ledger_ok().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_orders_are_closed_and_a_late_payment_still_credits() {
    for (db, url) in databases().await {
        let mock = mock_pay().await;
        let gw = start(url, &mock).await;
        let (token, user_id) = user(&gw, "slow-payer", None).await;
        let expired = native_order(&gw, &token, "p10").await;
        let fresh = native_order(&gw, &token, "p10").await;
        entity::pay_order::Entity::update_many()
            .col_expr(
                entity::pay_order::Column::ExpiresAt,
                sea_orm::sea_query::Expr::value(chatgate::clock::unix_millis() - 1000),
            )
            .filter(entity::pay_order::Column::OutTradeNo.eq(expired.as_str()))
            .exec(&gw.app.db)
            .await
            .unwrap();

        let swept = chatgate::pay::reconcile::run_once(&gw.app).await.unwrap();
        assert_eq!((swept.paid, swept.closed), (0, 1), "{db}");
        assert!(
            mock.saw(&format!(
                "POST /v3/pay/transactions/out-trade-no/{expired}/close"
            )),
            "{db}: closed at WeChat Pay first"
        );
        assert!(mock.order(&expired).unwrap().closed);
        assert_eq!(
            order_status(&gw, &token, &expired).await["status"],
            "closed"
        );
        assert_eq!(order_status(&gw, &token, &fresh).await["status"], "pending");

        // The payer paid just as it closed: WeChat Pay took the money, so it credits.
        assert!(mock.set_closed(&expired, false));
        assert!(mock.pay(&expired));
        let tx = mock.transaction(&expired, None).unwrap();
        assert_eq!(deliver(gw.addr, &notice(&tx, Spoil::None)).await.0, 204);
        assert_eq!(deliver(gw.addr, &notice(&tx, Spoil::None)).await.0, 204);
        assert_eq!(order_status(&gw, &token, &expired).await["status"], "paid");
        assert_eq!(balance(&gw, &token).await, P10.2, "{db}");
        assert_eq!(pay_entries(&gw, user_id).await.len(), 1);
        gw.assert_ledger_ok().await;
        assert_all_accepted(&mock);
    }
}

/// The `/mock/pay` hook, as the `mock_wechat_pay` example, `tests/pay_e2e.sh` and the
/// browser test use it: the payer scans the code URL (or `requestPayment` succeeds) and the
/// mock sends the notification to the gateway three times at once, twice in a row, or never
/// — each payment credits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_pay_hook_credits_once_whatever_the_notifications_do() {
    let mock = start_mock(NotifyMode {
        url: None,
        times: 3,
        concurrent: true,
        lose: false,
    })
    .await;
    let gw = start(None, &mock).await;
    let client = reqwest::Client::new();
    let hook = |path: &str, body: Value| {
        let request = client
            .post(format!("{}/mock/{path}", mock.base_url()))
            .json(&body);
        async move {
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    // The gateway's address is known after the mock started: tell it where to notify.
    let notify_url = format!("http://{}/pay/wechat/notify", gw.addr);
    let (status, mode) = hook("config", json!({ "notify_url": notify_url })).await;
    assert_eq!(status, 200, "{mode}");
    assert_eq!(mode["notify_times"], 3);
    assert_eq!(mock.notify_mode().url.as_deref(), Some(notify_url.as_str()));
    let (token, user_id) = user(&gw, "scanner", None).await;

    // Scanned and paid: three notifications at once, all handled, one credit.
    let (status, native) = order(&gw, &token, "p10", "native").await;
    assert_eq!(status, 200, "{native}");
    let a = native["order_id"].as_str().unwrap().to_string();
    let (status, paid) = hook("pay", json!({ "code_url": native["code_url"] })).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["out_trade_no"], a.as_str());
    assert_eq!(paid["amount"], 1000);
    assert_eq!(
        paid["notifications"],
        json!([{"status": 204}, {"status": 204}, {"status": 204}])
    );
    assert_eq!(stored_status(&gw, &a).await, "paid");
    assert_eq!(balance(&gw, &token).await, P10.2);
    assert_eq!(order_status(&gw, &token, &a).await["status"], "paid");

    // Lost: nothing is sent, the order stays pending until the order query finds it.
    let (_, native) = order(&gw, &token, "p30", "native").await;
    let b = native["order_id"].as_str().unwrap().to_string();
    let (status, paid) = hook(
        "pay",
        json!({ "code_url": native["code_url"], "lose": true }),
    )
    .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["notifications"], json!([]));
    assert_eq!(stored_status(&gw, &b).await, "pending");
    assert_eq!(balance(&gw, &token).await, P10.2);
    for _ in 0..2 {
        assert_eq!(order_status(&gw, &token, &b).await["status"], "paid");
    }
    assert_eq!(balance(&gw, &token).await, P10.2 + P30.2);
    let entries = pay_entries(&gw, user_id).await;
    assert_eq!(entries.len(), 2);

    // JSAPI, by out_trade_no: two notifications one after another.
    let (mp_token, mp_user) = user(&gw, "mp-payer", Some("o-mp-payer")).await;
    let (status, jsapi) = order(&gw, &mp_token, "p10", "jsapi").await;
    assert_eq!(status, 200, "{jsapi}");
    let c = jsapi["order_id"].as_str().unwrap().to_string();
    let (status, paid) = hook(
        "pay",
        json!({ "out_trade_no": c, "notify_times": 2, "concurrent": false }),
    )
    .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(
        paid["notifications"],
        json!([{"status": 204}, {"status": 204}])
    );
    assert_eq!(balance(&gw, &mp_token).await, P10.2);
    assert_eq!(pay_entries(&gw, mp_user).await.len(), 1);
    assert_eq!(
        mock.order(&c).unwrap().notifications,
        vec![Ok(204), Ok(204)]
    );

    // Refusals: an unknown code URL, a bad mode, a closed order.
    let (status, _) = hook(
        "pay",
        json!({ "code_url": "weixin://wxpay/bizpayurl?pr=nope" }),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = hook("pay", json!({ "out_trade_no": c, "notify_times": "x" })).await;
    assert_eq!(status, 400);
    let (_, native) = order(&gw, &token, "p10", "native").await;
    let d = native["order_id"].as_str().unwrap().to_string();
    assert!(mock.set_closed(&d, true));
    let (status, _) = hook("pay", json!({ "out_trade_no": d })).await;
    assert_eq!(status, 409);
    assert_eq!(order_status(&gw, &token, &d).await["status"], "closed");

    let listed = client
        .get(format!("{}/mock/orders", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(listed["orders"].as_array().unwrap().len(), 4, "{listed}");
    assert_eq!(listed["bad_signatures"], 0);
    assert_eq!(
        balance(&gw, &token).await,
        P10.2 + P30.2,
        "each payment once"
    );
    assert_all_accepted(&mock);
    gw.assert_ledger_ok().await;
}

#[tokio::test]
async fn without_wechat_pay_packages_are_listed_and_orders_refused() {
    let gw = Gateway::start(|c| c.recharge_packages = packages()).await;
    let (status, body) = gw
        .json("GET", "/api/pay/packages", None, &Value::Null)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["wechat_pay"], false);
    assert_eq!(body["packages"][1]["id"], "p30");
    let (token, _) = user(&gw, "no-pay", None).await;
    let (status, body) = order(&gw, &token, "p10", "native").await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (400, Some(10001)),
        "{body}"
    );
    assert!(body["msg"].as_str().unwrap().contains("微信支付"));
    let resp = gw.raw("POST", "/pay/wechat/notify", None, &[], b"{}").await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn bad_key_files_stop_the_start_with_one_line() {
    let mock = mock_pay().await;
    let files = key_files();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&dir);
    with_pay(&mut config, &mock, &files);
    // PKCS#1 works as well as PKCS#8.
    std::fs::write(
        files.path().join("apiclient_key.pem"),
        rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_pem(&keys().merchant, LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    assert!(chatgate::app::App::new(config.clone()).await.is_ok());

    type Change = Box<dyn Fn(&mut WechatPayConfig)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "merchant_private_key_path",
            Box::new(|p| p.merchant_private_key_path = "/nonexistent/key.pem".into()),
        ),
        (
            "platform_public_key_path",
            Box::new(|p| p.platform_public_key_path = p.merchant_private_key_path.clone()),
        ),
        ("api_v3_key", Box::new(|p| p.api_v3_key = "short".into())),
    ];
    for (says, change) in cases {
        let mut c = config.clone();
        change(c.wechat_pay.as_mut().unwrap());
        let err = chatgate::app::App::new(c).await.err().unwrap().to_string();
        assert!(err.contains(says), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
