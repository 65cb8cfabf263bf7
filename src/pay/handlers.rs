//! The pay endpoints: `GET /api/pay/packages`, `POST /api/pay/orders`,
//! `GET /api/pay/orders/{id}` and WeChat Pay's notification, `POST /pay/wechat/notify`.

use entity::pay_order;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::api::{NewOrder, PayError, Transaction, WechatPay};
use super::orders::{self, Settled};
use super::reconcile::{self, Checked};
use crate::app::App;
use crate::auth::users;
use crate::error::AppError;
use crate::response::{self, Body};

/// A notification signed longer ago (or further ahead) than this is refused.
const NOTIFY_MAX_SKEW_SECS: i64 = 300;

/// `GET /api/pay/packages`: `{packages:[{id,title,price_fen,credit_micros}], wechat_pay}`.
/// Listed whether or not WeChat Pay is configured; `wechat_pay` says whether they can
/// be bought online.
pub async fn packages(app: &App) -> Result<Response<Body>, AppError> {
    Ok(response::ok_json(&json!({
        "packages": app.config.recharge_packages,
        "wechat_pay": app.pay.is_some(),
    })))
}

fn configured(app: &App) -> Result<&WechatPay, AppError> {
    app.pay
        .as_ref()
        .ok_or_else(|| AppError::bad_request("服务器未开通微信支付（未配置 [wechat_pay]）"))
}

#[derive(Deserialize)]
struct NewOrderRequest {
    package_id: String,
    channel: String,
}

/// `POST /api/pay/orders {package_id, channel}`: a pending order, placed at WeChat Pay.
/// JSAPI → `{order_id, …, pay_params}`; Native → `{order_id, …, code_url}`.
pub async fn create_order(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let body: NewOrderRequest =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    let pay = configured(app)?;
    let package = app
        .config
        .recharge_packages
        .iter()
        .find(|p| p.id == body.package_id)
        .ok_or(AppError::NotFound("充值套餐不存在"))?;
    let channel = match body.channel.as_str() {
        orders::JSAPI => orders::JSAPI,
        orders::NATIVE => orders::NATIVE,
        _ => return Err(AppError::bad_request("channel 应为 jsapi 或 native")),
    };
    let user = users::by_id(&app.db, user_id)
        .await?
        .ok_or(AppError::Unauthorized("账号不存在，请重新登录"))?;
    if user.is_guest {
        return Err(AppError::bad_request(
            "游客账号不能充值，请先注册或用微信登录",
        ));
    }
    let openid = match (channel, user.mp_openid.as_deref()) {
        (orders::JSAPI, Some(openid)) if !openid.is_empty() => Some(openid.to_string()),
        (orders::JSAPI, _) => {
            return Err(AppError::bad_request(
                "该账号未绑定微信，无法在小程序内支付：请在小程序中用微信登录，或使用扫码支付",
            ));
        }
        _ => None,
    };
    let order = orders::create(&app.db, user.id, package, channel, pay.order_ttl_secs).await?;
    let time_expire =
        crate::ledger::day::rfc3339(order.expires_at, app.config.utc_offset_minutes());
    let new = NewOrder {
        out_trade_no: &order.out_trade_no,
        description: &order.description,
        price_fen: order.price_fen,
        time_expire: &time_expire,
    };
    let placed = match &openid {
        Some(openid) => pay
            .create_jsapi(&app.http, &new, openid)
            .await
            .map(|prepay_id| ("pay_params", json!(pay.pay_params(&prepay_id)))),
        None => pay
            .create_native(&app.http, &new)
            .await
            .map(|code_url| ("code_url", json!(code_url))),
    };
    let (key, value) = match placed {
        Ok(placed) => placed,
        Err(e) => {
            // Nobody can pay an order whose parameters never reached the client; should
            // WeChat Pay have placed it after all, a payment is still credited (closed
            // orders are).
            orders::close(&app.db, &order.out_trade_no, &format!("not placed: {e}")).await?;
            return Err(placing_failed(&e));
        }
    };
    let mut out = order_json(&order, None);
    out[key] = value;
    Ok(response::ok_json(&out))
}

fn placing_failed(e: &PayError) -> AppError {
    match e {
        PayError::BadSignature => {
            tracing::error!("WeChat Pay order: {e}; check wechat_pay.platform_public_key_path")
        }
        PayError::Refused { status, .. } if *status < 500 => {
            tracing::error!("WeChat Pay refused an order: {e}")
        }
        _ => tracing::warn!("WeChat Pay order: {e}"),
    }
    AppError::Upstream {
        timeout: matches!(e, PayError::Timeout),
        msg: "微信支付暂时不可用，请稍后再试".into(),
    }
}

/// The order as the client sees it.
fn order_json(order: &pay_order::Model, balance_micros: Option<i64>) -> serde_json::Value {
    let mut v = json!({
        "order_id": order.out_trade_no,
        "status": order.status,
        "package_id": order.package_id,
        "title": order.description,
        "channel": order.channel,
        "price_fen": order.price_fen,
        "credit_micros": order.credit_micros,
        "created_at": order.created_at,
        "expires_at": order.expires_at,
        "paid_at": order.paid_at,
    });
    if let Some(balance) = balance_micros {
        v["balance_micros"] = balance.into();
    }
    v
}

/// `GET /api/pay/orders/{id}`: the user's own order; a pending one is first checked
/// with WeChat Pay (its notification may be lost) and settled through the same
/// exactly-once path.
pub async fn get_order(
    app: &App,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let not_found = AppError::NotFound("订单不存在");
    if id.len() > 64 {
        return Err(not_found);
    }
    let mut order = orders::of_user(&app.db, id, user_id)
        .await?
        .ok_or(not_found)?;
    if order.status == orders::PENDING
        && let Some(pay) = app.pay.as_ref()
        && reconcile::check(app, pay, &order).await? != Checked::StillPending
        && let Some(now) = orders::by_id(&app.db, id).await?
    {
        order = now;
    }
    let balance = users::by_id(&app.db, user_id)
        .await?
        .map_or(0, |u| u.balance_micros);
    Ok(response::ok_json(&order_json(&order, Some(balance))))
}

/// WeChat Pay's notification envelope.
#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    id: String,
    #[serde(default)]
    event_type: String,
    resource: Option<Resource>,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(default)]
    algorithm: String,
    ciphertext: String,
    nonce: String,
    #[serde(default)]
    associated_data: String,
}

/// `POST /pay/wechat/notify`. Answered per WeChat Pay's rules: 204 when the
/// notification is handled — credited now, credited before, or never creditable
/// (unknown order, wrong amount: logged loudly) — so WeChat Pay stops sending it;
/// 4xx/5xx with `{"code":"FAIL","message":…}` when it must come again (signature,
/// timestamp or decryption failed, the database failed).
pub async fn notify(app: &App, req: Request<Incoming>) -> Response<Body> {
    match handle_notification(app, req).await {
        Ok(()) => {
            metrics::counter!(crate::metrics::PAY_NOTIFICATIONS, "outcome" => "handled")
                .increment(1);
            let mut resp = Response::new(response::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Err((status, message)) => {
            metrics::counter!(crate::metrics::PAY_NOTIFICATIONS, "outcome" => "failed")
                .increment(1);
            response::json(status, &json!({ "code": "FAIL", "message": message }))
        }
    }
}

type Fail = (StatusCode, &'static str);

async fn handle_notification(app: &App, req: Request<Incoming>) -> Result<(), Fail> {
    let Some(pay) = app.pay.as_ref() else {
        tracing::warn!("a WeChat Pay notification arrived but [wechat_pay] is not configured");
        return Err((StatusCode::NOT_FOUND, "WeChat Pay is not configured"));
    };
    let headers = req.headers().clone();
    let body = response::read_body(req.into_body(), app.config.limits.max_body_bytes)
        .await
        .map_err(|_| (StatusCode::BAD_REQUEST, "unreadable body"))?;
    let Some(signed_at) = pay.verify(&headers, &body) else {
        tracing::warn!("a WeChat Pay notification failed signature verification; refused");
        return Err((StatusCode::UNAUTHORIZED, "signature verification failed"));
    };
    let now = i64::try_from(crate::clock::unix_secs()).unwrap_or(i64::MAX);
    if (now - signed_at).abs() > NOTIFY_MAX_SKEW_SECS {
        tracing::warn!(signed_at, now, "a stale WeChat Pay notification; refused");
        return Err((StatusCode::BAD_REQUEST, "timestamp out of range"));
    }
    let Ok(notification) = serde_json::from_slice::<Notification>(&body) else {
        tracing::error!("a signed WeChat Pay notification is not the expected JSON");
        return Err((StatusCode::BAD_REQUEST, "malformed notification"));
    };
    if notification.event_type != "TRANSACTION.SUCCESS" {
        tracing::info!(
            id = %notification.id,
            event_type = %notification.event_type,
            "WeChat Pay notification ignored"
        );
        return Ok(());
    }
    let Some(resource) = notification.resource else {
        return Err((StatusCode::BAD_REQUEST, "no resource"));
    };
    if resource.algorithm != "AEAD_AES_256_GCM" {
        tracing::error!(algorithm = %resource.algorithm, "WeChat Pay notification with an unknown algorithm");
        return Err((StatusCode::BAD_REQUEST, "unsupported algorithm"));
    }
    // Signed by WeChat Pay but not decryptable: our API v3 key is not the one WeChat
    // Pay uses. Refused, so it is sent again once the key is fixed.
    let plain = pay
        .decrypt(
            &resource.nonce,
            &resource.associated_data,
            &resource.ciphertext,
        )
        .map_err(|e| {
            tracing::error!(id = %notification.id, "WeChat Pay notification: {e}; check wechat_pay.api_v3_key");
            (StatusCode::BAD_REQUEST, "decryption failed")
        })?;
    let Ok(tx) = serde_json::from_slice::<Transaction>(&plain) else {
        tracing::error!(id = %notification.id, "WeChat Pay notification resource is not a transaction");
        return Err((StatusCode::BAD_REQUEST, "malformed resource"));
    };
    if tx.trade_state != "SUCCESS" {
        tracing::info!(out_trade_no = %tx.out_trade_no, trade_state = %tx.trade_state, "WeChat Pay notification without payment");
        return Ok(());
    }
    match orders::settle_paid(&app.db, pay, &tx).await {
        Ok(Settled::Credited | Settled::AlreadyPaid) => Ok(()),
        // Logged where it was decided; a repeat would be refused the same way.
        Ok(Settled::Refused(_)) => Ok(()),
        Err(e) => {
            tracing::error!(out_trade_no = %tx.out_trade_no, "WeChat Pay notification not settled; WeChat Pay will send it again");
            e.log();
            Err((StatusCode::INTERNAL_SERVER_ERROR, "temporary failure"))
        }
    }
}
