//! Image generation (`POST /api/images {prompt, size?, model?}`) and the files the
//! gateway keeps (`GET /files/{name}`).
//!
//! Mini-programs may only load images from the reseller's own registered domain, so
//! the gateway does not hand out the upstream's links: it stores the bytes (from
//! `b64_json`, or fetched from the URL the upstream returns) under an unguessable name,
//! in the database so every replica serves them, and deletes them after
//! `[images] ttl_secs`. The per-image price goes through hold and settle like an
//! answer; an upstream failure costs nothing.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use entity::file;
use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::app::App;
use crate::auth::users;
use crate::chat::store::{self, Finished};
use crate::config::ModelConfig;
use crate::error::AppError;
use crate::ledger::holds::{self, Settlement};
use crate::response::{self, Body};
use crate::upstream::chunk::Usage;

/// The largest image accepted from an upstream.
const MAX_IMAGE_BYTES: usize = 16 << 20;

#[derive(Deserialize)]
struct ImageRequest {
    prompt: String,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

/// `POST /api/images`.
pub async fn generate(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let body: ImageRequest =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    let prompt = body.prompt.trim();
    if prompt.is_empty() {
        return Err(AppError::bad_request("prompt 不能为空"));
    }
    if prompt.chars().count() > app.config.limits.max_message_chars {
        return Err(AppError::Refused {
            reason: crate::error::Refusal::InputTooLong,
            msg: "描述过长".into(),
            retry_after_secs: None,
        });
    }
    app.words.check_input(prompt)?;
    let size = body
        .size
        .unwrap_or_else(|| app.config.images.default_size.clone());
    if !size
        .split_once('x')
        .is_some_and(|(w, h)| w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok())
    {
        return Err(AppError::bad_request("size 格式应为 宽x高，例如 1024x1024"));
    }
    let model = body
        .model
        .unwrap_or_else(|| app.config.images.model.clone());
    // The configured image model, or another model priced per image: a chat model
    // (no image price) cannot be used to draw for free.
    let is_image_model =
        model == app.config.images.model || app.config.model(&model).image_micros > 0;
    if !is_image_model || (!app.upstream.is_demo() && !app.config.has_model(&model)) {
        return Err(AppError::NotFound("图片模型不存在"));
    }
    // One image at its flat price, held like an answer (the free chat quota does not apply).
    let image_micros = app.config.model(&model).image_micros;
    let price = ModelConfig {
        input_micros_per_million: 0,
        output_micros_per_million: 0,
        request_micros: image_micros,
        ..ModelConfig::default()
    };
    // A place among the user's and the upstream's open streams, like an answer.
    let permit = app.limiter.open_stream(user_id)?;
    app.limiter.check_chat(user_id).await?;
    let user = users::by_id(&app.db, user_id)
        .await?
        .ok_or(AppError::Unauthorized("账号不存在，请重新登录"))?;
    if user.is_guest && image_micros > 0 {
        return Err(AppError::bad_request("试用账号不能生成图片，请先注册账号"));
    }
    let started = Instant::now();
    let job_id = store::new_id();
    let day = app.config.today();
    let grant = holds::take(
        &app.db,
        holds::Request {
            user_id: user.id,
            message_id: &job_id,
            price: &price,
            prompt_tokens: 0,
            max_tokens: 0,
            free_per_day: 0,
            day: &day,
            with: Vec::new(),
        },
    )
    .await?;

    // The rest runs on a server task, so a client that gives up waiting (WeChat caps a
    // request at ~60 s) cannot leave the hold unsettled.
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let task_app = Arc::clone(app);
    let prompt = prompt.to_string();
    app.spawn(async move {
        let app = task_app;
        let produced = produce(&app, &model, &prompt, &size).await;
        drop(permit);
        let stored = match produced {
            Ok((bytes, content_type)) => store_file(&app, user_id, bytes, content_type).await,
            Err(e) => Err(e),
        };
        let failed = stored.is_err();
        let cost_micros = if failed { 0 } else { image_micros as i64 };
        let settled = holds::settle(
            &app.db,
            &Settlement {
                hold: &grant.hold,
                message_id: &job_id,
                model: &model,
                channel: "images",
                usage: Usage::default(),
                cost_micros,
                failed,
                first_token_ms: None,
                total_ms: started.elapsed().as_millis() as i64,
                answer: Finished {
                    status: if failed { store::FAILED } else { store::DONE },
                    content: "",
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    cost_micros,
                    error_code: failed.then_some(11000),
                },
            },
        )
        .await;
        let reply = settled.and_then(|settled| {
            let name = stored?;
            Ok(response::ok_json(&json!({
                "images": [{ "url": format!("/files/{name}") }],
                "cost_micros": settled.charged_micros,
                "balance_micros": settled.balance_micros,
            })))
        });
        let _ = reply_tx.send(reply);
    });
    reply_rx
        .await
        .unwrap_or_else(|_| Err(AppError::internal("the image task ended without a reply")))
}

/// The image's bytes and content type, from the upstream (or the demo).
async fn produce(
    app: &App,
    model: &str,
    prompt: &str,
    size: &str,
) -> Result<(Bytes, &'static str), AppError> {
    if app.upstream.is_demo() {
        return Ok((Bytes::from(demo_svg(prompt)), "image/svg+xml"));
    }
    let request = json!({ "model": model, "prompt": prompt, "size": size, "n": 1, "response_format": "b64_json" });
    let (response, channel) = app
        .upstream
        .post(model, "images/generations", request, false)
        .await?;
    let broken = || AppError::Upstream {
        timeout: false,
        msg: "图片生成失败，请稍后再试".into(),
    };
    let reply: Value = tokio::time::timeout(Duration::from_secs(300), response.json())
        .await
        .map_err(|_| AppError::Upstream {
            timeout: true,
            msg: "图片生成超时".into(),
        })?
        .map_err(|_| broken())?;
    let item = &reply["data"][0];
    let bytes = if let Some(b64) = item["b64_json"].as_str() {
        Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| broken())?,
        )
    } else if let Some(url) = item["url"].as_str() {
        let fetched = app
            .upstream
            .client()
            .get(url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|_| broken())?;
        fetched.bytes().await.map_err(|_| broken())?
    } else {
        tracing::warn!(%channel, "image reply without b64_json or url");
        return Err(broken());
    };
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(broken());
    }
    let content_type = sniff(&bytes).ok_or_else(broken)?;
    Ok((bytes, content_type))
}

/// The image type of `bytes` by its magic number (never trusting a header).
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => Some("image/png"),
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [b'G', b'I', b'F', b'8', ..] => Some("image/gif"),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some("image/webp"),
        _ => None,
    }
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => "svg",
    }
}

async fn store_file(
    app: &App,
    user_id: i64,
    bytes: Bytes,
    content_type: &str,
) -> Result<String, AppError> {
    let name = format!("{}.{}", store::random_id(), extension(content_type));
    let now = crate::clock::unix_millis();
    file::ActiveModel {
        name: Set(name.clone()),
        user_id: Set(user_id),
        content_type: Set(content_type.to_string()),
        data: Set(bytes.to_vec()),
        created_at: Set(now),
        expires_at: Set(now + app.config.images.ttl_secs as i64 * 1000),
    }
    .insert(&app.db)
    .await?;
    Ok(name)
}

/// `GET /files/{name}`: the bytes with their type, cacheable until they expire.
pub async fn serve(app: &App, name: &str) -> Result<Response<Body>, AppError> {
    let now = crate::clock::unix_millis();
    let row = file::Entity::find_by_id(name.to_string())
        .one(&app.db)
        .await?
        .filter(|f| f.expires_at > now)
        .ok_or(AppError::NotFound("文件不存在或已过期"))?;
    let content_type = match row.content_type.as_str() {
        "image/png" => "image/png",
        "image/jpeg" => "image/jpeg",
        "image/gif" => "image/gif",
        "image/webp" => "image/webp",
        _ => "image/svg+xml",
    };
    let max_age = ((row.expires_at - now) / 1000).max(0);
    let mut resp =
        response::with_content_type(StatusCode::OK, content_type, response::full(row.data));
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}, immutable")) {
        resp.headers_mut().insert(CACHE_CONTROL, v);
    }
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// Deletes expired files; returns how many.
pub async fn sweep(app: &App) -> Result<u64, AppError> {
    let result = file::Entity::delete_many()
        .filter(file::Column::ExpiresAt.lte(crate::clock::unix_millis()))
        .exec(&app.db)
        .await?;
    Ok(result.rows_affected)
}

/// The demo model's picture: a labelled card with the prompt.
fn demo_svg(prompt: &str) -> String {
    let text: String = prompt
        .chars()
        .take(40)
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"512\" height=\"512\" viewBox=\"0 0 512 512\">\
         <rect width=\"512\" height=\"512\" fill=\"#e8f0fe\"/>\
         <text x=\"256\" y=\"220\" font-size=\"28\" text-anchor=\"middle\" fill=\"#1a73e8\">【演示模型】示例图片</text>\
         <text x=\"256\" y=\"280\" font-size=\"20\" text-anchor=\"middle\" fill=\"#333\">{text}</text></svg>"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn images_are_typed_by_their_bytes() {
        assert_eq!(
            super::sniff(crate::mock_upstream::MOCK_PNG),
            Some("image/png")
        );
        assert_eq!(super::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(super::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(super::sniff(b"<html>"), None);
        assert!(super::demo_svg("<script>").contains("&lt;script&gt;"));
    }
}
