//! The Official Account bot against a simulated WeChat: the simulator signs each
//! request, posts the message XML (encrypted in safe mode, with its own AES code),
//! abandons a delivery that gets no answer within its timeout and delivers the same
//! MsgId again, up to three times, and records what was replied.
//!
//! Timing: the gateway waits `oa_reply_deadline_ms` (800 ms here) per delivery and
//! WeChat `oa_wechat_timeout_ms` (1200 ms). Slow answers are slow by a wide margin on
//! either side of those, so a loaded machine does not change which delivery wins by
//! much, and the assertions accept any delivery the design allows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use base64::Engine;
use chatgate::config::{Channel, Config, ModelConfig};
use chatgate::mock_upstream::{MockConfig, MockUpstream, answer_for};
use chatgate::wechat_oa::crypto::{self, SafeMode};
use common::{Gateway, RawClient, databases};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

const MODEL: &str = "gpt-4o-mini";
const TOKEN: &str = "oa-test-token";
const ACCOUNT: &str = "gh_test";
const DEADLINE_MS: u64 = 800;
const WECHAT_TIMEOUT_MS: u64 = 1200;

/// A gateway config for the bot: the mock upstream (free), plenty of free messages,
/// short deadlines.
fn oa(config: &mut Config, mock: &MockUpstream) {
    config.channels = vec![Channel {
        models: vec![MODEL.into()],
        ..Channel::new("mock", mock.base_url())
    }];
    config.models.insert(MODEL.into(), ModelConfig::default());
    config.free_messages_per_day = 1000;
    config.wechat.oa_token = Some(TOKEN.into());
    config.wechat.oa_reply_deadline_ms = DEADLINE_MS;
    config.wechat.oa_wechat_timeout_ms = WECHAT_TIMEOUT_MS;
}

// ---------------------------------------------------------------------------------
// The simulated WeChat.

/// The test's own safe-mode code: AES-256 block by block with CBC chained here, not
/// the gateway's.
struct Sealer {
    key: [u8; 32],
    app_id: String,
}

fn lenient_base64() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

impl Sealer {
    fn new(encoding_aes_key: &str, app_id: &str) -> Self {
        let key = lenient_base64()
            .decode(format!("{encoding_aes_key}="))
            .unwrap();
        Sealer {
            key: key.try_into().unwrap(),
            app_id: app_id.into(),
        }
    }

    fn seal_with(&self, xml: &str, random: [u8; 16]) -> String {
        let mut plain = random.to_vec();
        plain.extend_from_slice(&(xml.len() as u32).to_be_bytes());
        plain.extend_from_slice(xml.as_bytes());
        plain.extend_from_slice(self.app_id.as_bytes());
        let pad = 32 - plain.len() % 32;
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let cipher = aes::Aes256::new(&self.key.into());
        let mut prev: [u8; 16] = self.key[..16].try_into().unwrap();
        let mut out = Vec::new();
        for chunk in plain.chunks(16) {
            let mut block = aes::Block::default();
            for i in 0..16 {
                block[i] = chunk[i] ^ prev[i];
            }
            cipher.encrypt_block(&mut block);
            prev.copy_from_slice(&block);
            out.extend_from_slice(&block);
        }
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    fn seal(&self, xml: &str) -> String {
        self.seal_with(xml, rand::random())
    }

    fn open(&self, sealed: &str) -> String {
        let data = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .unwrap();
        assert_eq!(data.len() % 32, 0, "padded to 32-byte blocks");
        let cipher = aes::Aes256::new(&self.key.into());
        let mut prev: [u8; 16] = self.key[..16].try_into().unwrap();
        let mut plain = Vec::new();
        for chunk in data.chunks(16) {
            let mut block = aes::Block::default();
            block.copy_from_slice(chunk);
            cipher.decrypt_block(&mut block);
            for i in 0..16 {
                plain.push(block[i] ^ prev[i]);
            }
            prev.copy_from_slice(chunk);
        }
        let pad = *plain.last().unwrap() as usize;
        assert!((1..=32).contains(&pad));
        plain.truncate(plain.len() - pad);
        let len = u32::from_be_bytes(plain[16..20].try_into().unwrap()) as usize;
        assert_eq!(
            &plain[20 + len..],
            self.app_id.as_bytes(),
            "app id at the end"
        );
        String::from_utf8(plain[20..20 + len].to_vec()).unwrap()
    }
}

fn sha1_hex(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort();
    hex::encode(Sha1::digest(sorted.concat().as_bytes()))
}

/// The top-level fields of a reply, read with quick-xml (a real parser, so a reply
/// that is not well-formed fails here).
fn reply_fields(xml: &str) -> std::collections::HashMap<String, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut fields = std::collections::HashMap::new();
    let mut path: Vec<String> = Vec::new();
    loop {
        match reader.read_event().unwrap_or_else(|e| panic!("{e}: {xml}")) {
            Event::Start(s) => path.push(s.name().as_ref().to_string()),
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) if path.len() == 2 => {
                fields
                    .entry(path[1].clone())
                    .or_insert_with(String::new)
                    .push_str(&t.xml10_content());
            }
            Event::CData(c) if path.len() == 2 => {
                fields
                    .entry(path[1].clone())
                    .or_insert_with(String::new)
                    .push_str(&c.into_inner());
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(path.is_empty(), "unbalanced reply: {xml}");
    fields
}

/// What WeChat got for one message.
#[derive(Debug)]
struct Outcome {
    /// Which delivery was answered (1-based).
    delivery: usize,
    status: u16,
    /// The body (decrypted in safe mode).
    body: String,
}

impl Outcome {
    /// The text shown to the user.
    fn content(&self) -> String {
        assert_eq!(self.status, 200, "{}", self.body);
        let f = reply_fields(&self.body);
        assert_eq!(f["MsgType"], "text", "{}", self.body);
        assert_eq!(f["FromUserName"], ACCOUNT);
        f["Content"].clone()
    }
}

struct WeChat {
    /// Delivery n goes to `gateways[(n - 1) % len]` (a load balancer).
    gateways: Vec<SocketAddr>,
    token: String,
    timeout: Duration,
    deliveries: usize,
    safe: Option<Sealer>,
}

impl WeChat {
    fn new(gateways: &[&Gateway]) -> Self {
        WeChat {
            gateways: gateways.iter().map(|g| g.addr).collect(),
            token: TOKEN.into(),
            timeout: Duration::from_millis(WECHAT_TIMEOUT_MS),
            deliveries: 3,
            safe: None,
        }
    }

    fn signed_query(&self) -> (String, String, String) {
        let timestamp = (chatgate::clock::unix_millis() / 1000).to_string();
        let nonce = format!("{}", rand::random::<u32>());
        let signature = sha1_hex(&[&self.token, &timestamp, &nonce]);
        (timestamp, nonce, signature)
    }

    /// One delivery; `None` when it was abandoned at the timeout.
    async fn post_once(&self, addr: SocketAddr, xml: &str) -> Option<(u16, String)> {
        let (timestamp, nonce, signature) = self.signed_query();
        let (path, body) = match &self.safe {
            None => (
                format!(
                    "/wechat/oa?signature={signature}&timestamp={timestamp}&nonce={nonce}&openid=x"
                ),
                xml.to_string(),
            ),
            Some(sealer) => {
                let encrypted = sealer.seal(xml);
                let msg_signature = sha1_hex(&[&self.token, &timestamp, &nonce, &encrypted]);
                (
                    format!(
                        "/wechat/oa?signature={signature}&timestamp={timestamp}&nonce={nonce}\
                         &encrypt_type=aes&msg_signature={msg_signature}"
                    ),
                    format!(
                        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>\
                         <Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
                    ),
                )
            }
        };
        let sent = async {
            RawClient::send(addr, "POST", &path, None, &[], body.as_bytes())
                .await
                .read_all()
                .await
        };
        let resp = tokio::time::timeout(self.timeout, sent).await.ok()?;
        let text = resp.text();
        let body = match &self.safe {
            Some(sealer) if text.starts_with("<xml>") => {
                let f = reply_fields(&text);
                let expected =
                    sha1_hex(&[&self.token, &f["TimeStamp"], &f["Nonce"], &f["Encrypt"]]);
                assert_eq!(f["MsgSignature"], expected, "the reply is signed");
                sealer.open(&f["Encrypt"])
            }
            _ => text,
        };
        Some((resp.status, body))
    }

    /// Delivers `xml` as WeChat does: again on each timeout, up to `deliveries` times.
    async fn deliver(&self, xml: &str) -> Option<Outcome> {
        for n in 1..=self.deliveries {
            let addr = self.gateways[(n - 1) % self.gateways.len()];
            if let Some((status, body)) = self.post_once(addr, xml).await {
                return Some(Outcome {
                    delivery: n,
                    status,
                    body,
                });
            }
        }
        None
    }

    async fn text(&self, openid: &str, msg_id: u64, content: &str) -> Outcome {
        self.deliver(&text_xml(openid, msg_id, content))
            .await
            .expect("WeChat got an answer within its deliveries")
    }
}

fn text_xml(openid: &str, msg_id: u64, content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        chatgate::clock::unix_millis() / 1000,
        content.replace("]]>", "]]]]><![CDATA[>")
    )
}

fn event_xml(openid: &str, event: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[{event}]]></Event></xml>"
    )
}

/// The `http://…` link in a reply, as a path on the gateway.
fn link_path(content: &str) -> String {
    let start = content.find("http://").expect("a link") + "http://".len();
    let url: String = content[start..]
        .chars()
        .take_while(|c| c.is_ascii_graphic())
        .collect();
    let path = &url[url.find('/').unwrap()..];
    path.to_string()
}

async fn get_page(gw: &Gateway, path: &str) -> (u16, String) {
    let resp = RawClient::send(gw.addr, "GET", path, None, &[], b"")
        .await
        .read_all()
        .await;
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{path}"
    );
    (resp.status, resp.text())
}

async fn oa_row(gw: &Gateway, openid: &str, msg_id: u64) -> entity::oa_message::Model {
    entity::oa_message::Entity::find()
        .filter(entity::oa_message::Column::Openid.eq(openid))
        .filter(entity::oa_message::Column::MsgId.eq(msg_id.to_string()))
        .one(&gw.app.db)
        .await
        .unwrap()
        .expect("the message was claimed")
}

async fn oa_user(gw: &Gateway, openid: &str) -> Option<entity::user::Model> {
    entity::user::Entity::find()
        .filter(entity::user::Column::OaOpenid.eq(openid))
        .one(&gw.app.db)
        .await
        .unwrap()
}

/// Loads the tokenizer (once per process) before anything is timed: the first
/// question would otherwise wait for it.
async fn warm() {
    tokio::task::spawn_blocking(chatgate::tokens::warm_up)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_check_echoes_only_when_signed() {
    warm().await;
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let gw = Gateway::start(|c| oa(c, &mock)).await;
    let sim = WeChat::new(&[&gw]);
    let (timestamp, nonce, signature) = sim.signed_query();
    let path = format!(
        "/wechat/oa?signature={signature}&timestamp={timestamp}&nonce={nonce}&echostr=echo%2042"
    );
    let resp = RawClient::send(gw.addr, "GET", &path, None, &[], b"")
        .await
        .read_all()
        .await;
    assert_eq!((resp.status, resp.text()), (200, "echo 42".to_string()));

    let forged = format!(
        "/wechat/oa?signature={}&timestamp={timestamp}&nonce={nonce}&echostr=x",
        sha1_hex(&["wrong-token", &timestamp, &nonce])
    );
    let resp = RawClient::send(gw.addr, "GET", &forged, None, &[], b"")
        .await
        .read_all()
        .await;
    assert_eq!(resp.status, 401);
    assert_ne!(resp.text(), "x", "no echo");
    let resp = RawClient::send(gw.addr, "GET", "/wechat/oa?echostr=x", None, &[], b"")
        .await
        .read_all()
        .await;
    assert_eq!(resp.status, 401, "no signature at all");

    // A message with a wrong signature is refused before anything is stored.
    let xml = text_xml("o-forger", 1, "hi");
    let resp = RawClient::send(gw.addr, "POST", &forged, None, &[], xml.as_bytes())
        .await
        .read_all()
        .await;
    assert_eq!(resp.status, 401);
    assert!(oa_user(&gw, "o-forger").await.is_none());
    assert_eq!(mock.request_count(), 0);

    // Not configured: the webhook does not exist.
    let plain = Gateway::start(|_| {}).await;
    let resp = RawClient::send(plain.addr, "GET", &path, None, &[], b"")
        .await
        .read_all()
        .await;
    assert_eq!(resp.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_answer_comes_in_the_first_delivery() {
    warm().await;
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let gw = Gateway::start(|c| oa(c, &mock)).await;
    let sim = WeChat::new(&[&gw]);
    let started = Instant::now();
    let out = sim.text("o-fast", 1001, "你好").await;
    assert_eq!(out.delivery, 1, "{out:?}");
    assert!(started.elapsed() < Duration::from_millis(DEADLINE_MS + 300));
    assert_eq!(out.content(), answer_for("你好"));
    let f = reply_fields(&out.body);
    assert_eq!(f["ToUserName"], "o-fast");
    assert_eq!(mock.request_count(), 1);
    let user = oa_user(&gw, "o-fast").await.expect("the user was created");
    assert!(!user.is_guest);
    assert_eq!(oa_row(&gw, "o-fast", 1001).await.deliveries, 1);

    // Subscribing gets the welcome; pictures a polite refusal; other events `success`.
    let welcome = sim
        .deliver(&event_xml("o-fast", "subscribe"))
        .await
        .unwrap();
    assert_eq!(welcome.content(), gw.app.config.wechat.oa_welcome);
    let image = format!(
        "<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>o-fast</FromUserName>\
         <CreateTime>1</CreateTime><MsgType>image</MsgType><PicUrl>http://x/y.jpg</PicUrl>\
         <MsgId>1002</MsgId></xml>"
    );
    let out = sim.deliver(&image).await.unwrap();
    assert!(out.content().contains("文字"), "{out:?}");
    let out = sim
        .deliver(&event_xml("o-fast", "unsubscribe"))
        .await
        .unwrap();
    assert_eq!((out.status, out.body.as_str()), (200, "success"));
    assert_eq!(mock.request_count(), 1, "none of these asked the model");
    gw.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_is_caught_by_a_later_delivery_with_one_upstream_call() {
    warm().await;
    let mock = MockUpstream::start(MockConfig {
        first_token_delay: Duration::from_millis(1500),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| oa(c, &mock)).await;
    let sim = WeChat::new(&[&gw]);
    let out = sim.text("o-slow", 2001, "慢一点").await;
    assert!(
        out.delivery == 2 || out.delivery == 3,
        "caught on a retry: {out:?}"
    );
    assert_eq!(out.content(), answer_for("慢一点"));
    assert_eq!(
        mock.request_count(),
        1,
        "one upstream call for every delivery"
    );
    assert_eq!(
        oa_row(&gw, "o-slow", 2001).await.deliveries as usize,
        out.delivery
    );
    gw.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_answer_gets_a_link_to_a_page_that_refreshes_until_it_is_whole() {
    warm().await;
    let answer = format!("<b>粗体</b> & “引号” {}", "这是一段很长的回答。".repeat(20));
    let mock = MockUpstream::start(MockConfig {
        answer: Some(answer.clone()),
        chunks: 20,
        chunk_delay: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| oa(c, &mock)).await;
    let sim = WeChat::new(&[&gw]);
    let out = sim.text("o-slower", 3001, "写长一点").await;
    assert_eq!(out.delivery, 3, "only the last delivery replies: {out:?}");
    let content = out.content();
    assert!(content.contains("/a/"), "{content}");
    let (so_far, _) = content
        .split_once("……")
        .expect("the part so far, then the link");
    assert!(
        !so_far.is_empty() && answer.starts_with(so_far),
        "{content}"
    );
    assert!(so_far.len() < answer.len());

    let path = link_path(&content);
    let (status, page) = get_page(&gw, &path).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("http-equiv=\"refresh\""),
        "refreshes while streaming"
    );
    assert!(page.contains("写长一点"), "shows the question");
    assert!(!page.contains("<b>粗体"), "text is escaped");
    let escaped = quick_xml::escape::escape(answer.as_str()).into_owned();
    let mut done = None;
    for _ in 0..300 {
        let (_, page) = get_page(&gw, &path).await;
        if !page.contains("http-equiv=\"refresh\"") {
            done = Some(page);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = done.expect("the page stops refreshing once the answer is done");
    assert!(done.contains(&escaped), "the whole answer: {done}");
    assert!(done.contains("<meta name=\"viewport\""));
    assert_eq!(mock.request_count(), 1);

    let (status, _) = get_page(&gw, "/a/00000000000000000000000000000000").await;
    assert_eq!(status, 404);
    let (status, _) = get_page(&gw, "/a/h/00000000000000000000000000000000").await;
    assert_eq!(status, 404);

    // Past `oa_keep_days` the sweep deletes the message row: the link is gone, the
    // answer itself stays in the user's conversation.
    let young = chatgate::wechat_oa::store::delete_older_than(&gw.app.db, 0)
        .await
        .unwrap();
    assert_eq!(young, 0, "nothing is older than the epoch");
    let now = chatgate::clock::unix_millis() + 1;
    let deleted = chatgate::wechat_oa::store::delete_older_than(&gw.app.db, now)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let (status, _) = get_page(&gw, &path).await;
    assert_eq!(status, 404);
    gw.assert_ledger_ok().await;
}

/// One micro-priced request per answer, nothing free: a charge is exactly 1000.
fn priced(config: &mut Config, mock: &MockUpstream) {
    oa(config, mock);
    config.free_messages_per_day = 0;
    config.models.insert(
        MODEL.into(),
        ModelConfig {
            input_micros_per_million: 0,
            output_micros_per_million: 0,
            request_micros: 1000,
            ..ModelConfig::default()
        },
    );
}

async fn settled_balance(gw: &Gateway, user_id: i64) -> i64 {
    for _ in 0..500 {
        let (_, user) = gw
            .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
            .await;
        if user["held_micros"] == 0 {
            return user["balance_micros"].as_i64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the hold was never settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_call_and_one_charge_per_message_across_two_replicas() {
    warm().await;
    for (db, url) in databases().await {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let a = Gateway::start_on(url, |c| priced(c, &mock)).await;
        let shared = a.app.config.database_url.clone();
        let b = Gateway::start_on(Some(shared), |c| priced(c, &mock)).await;
        let sim = WeChat::new(&[&a, &b]);

        // A new user with no money: a friendly refusal, every delivery the same.
        let out = sim.text("o-two", 4001, "在吗").await;
        assert_eq!(out.delivery, 1);
        assert!(out.content().contains("余额不足"), "{db}: {out:?}");
        let again = sim.text("o-two", 4001, "在吗").await;
        assert_eq!(again.content(), out.content(), "{db}");
        assert_eq!(mock.request_count(), 0, "{db}: a refusal calls no upstream");

        let user = oa_user(&a, "o-two").await.unwrap();
        a.credit(user.id, 1_000_000).await;

        // Slow: delivery 1 on A starts it, 2 on B follows it through the database,
        // 3 (if needed) on A again.
        mock.set_config(MockConfig {
            first_token_delay: Duration::from_millis(1500),
            ..MockConfig::default()
        });
        let out = sim.text("o-two", 4002, "两个副本").await;
        assert!(out.delivery >= 2, "{db}: {out:?}");
        assert_eq!(out.content(), answer_for("两个副本"), "{db}");
        assert_eq!(mock.request_count(), 1, "{db}");

        // Three deliveries of one message at once, to both replicas: still one.
        mock.set_config(MockConfig {
            first_token_delay: Duration::from_millis(300),
            ..MockConfig::default()
        });
        let xml = text_xml("o-two", 4003, "同时");
        let burst: Vec<_> = [a.addr, b.addr, a.addr]
            .into_iter()
            .map(|addr| {
                let sim = WeChat {
                    gateways: vec![addr],
                    token: TOKEN.into(),
                    timeout: Duration::from_millis(WECHAT_TIMEOUT_MS),
                    deliveries: 1,
                    safe: None,
                };
                let xml = xml.clone();
                tokio::spawn(async move { sim.deliver(&xml).await })
            })
            .collect();
        let mut replies = Vec::new();
        for task in burst {
            if let Some(out) = task.await.unwrap() {
                replies.push(out.content());
            }
        }
        assert!(!replies.is_empty(), "{db}: someone got the answer");
        for reply in &replies {
            assert_eq!(reply, &answer_for("同时"), "{db}");
        }
        assert_eq!(mock.request_count(), 2, "{db}: one call per message");
        assert_eq!(oa_row(&a, "o-two", 4003).await.deliveries, 3, "{db}");

        assert_eq!(
            settled_balance(&a, user.id).await,
            1_000_000 - 2 * 1000,
            "{db}: charged once per message"
        );
        a.assert_ledger_ok().await;
        b.assert_ledger_ok().await;
    }
}

// Safe mode. The vector below was computed outside the gateway, with Python's
// `cryptography` package (AES-256-CBC, key = base64(KEY + "="), IV = key[:16], the
// plaintext built and padded to 32 bytes by hand), and `hashlib.sha1` for the signature.
const VECTOR_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const VECTOR_APP_ID: &str = "wxb11529c136998cb6";
const VECTOR_TOKEN: &str = "vector-token";
const VECTOR_RANDOM: &[u8; 16] = b"0123456789abcdef";
const VECTOR_XML: &str = "<xml><ToUserName><![CDATA[gh_oa]]></ToUserName><FromUserName><![CDATA[o-vector]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content><MsgId>1234567890</MsgId></xml>";
const VECTOR_ENCRYPT: &str = "Q3stYC6hdFzMh9T8HCvyDLBdxlyHiALZmW3U7s1kRVp9siBd3s8wZEu96L42GZClGR/Y1APrnu754fPYR5GNo4FjjW8hUwClX/IdsGHWsqJa8UTxh7tRFV7fwwqyDIha0C17gIPefIgowgvYmAgcEV4HrY1hk2C4FbnOpamnobqjvRjqex4lW869n6a2RHk2/6iR3OPk3Bd1T6sflrlrdIOcq/2lPZmTazEpo8RCOOq0paunpCZlO5h8VsqNeO0oA/c40QbnwN9Gaq1VeZ2wpbOIWxQYAqV3BEWyetRPWfytk+ZnYqk6a9QLWBbnK8AS2cWYrVEE5DKDsmmc4vhOzDwXl1smiK0Xp5JUOsoWr7u3EAqH+RfjhNrLFJnz5zjF";
const VECTOR_TIMESTAMP: &str = "1700000001";
const VECTOR_NONCE: &str = "nonce42";
const VECTOR_SIGNATURE: &str = "e2a0bcc026ac5312bfc590aa7c714e59000b909d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_matches_an_independent_vector_and_round_trips() {
    warm().await;
    // The gateway's code against the vector, both ways.
    let mode = SafeMode::new(VECTOR_KEY, VECTOR_APP_ID).unwrap();
    assert_eq!(mode.decrypt(VECTOR_ENCRYPT).unwrap(), VECTOR_XML);
    assert_eq!(
        mode.encrypt_with(VECTOR_XML, *VECTOR_RANDOM),
        VECTOR_ENCRYPT
    );
    assert_eq!(
        crypto::signature(&[VECTOR_TOKEN, VECTOR_TIMESTAMP, VECTOR_NONCE, VECTOR_ENCRYPT]),
        VECTOR_SIGNATURE
    );
    // The test's own AES agrees with the vector too.
    let sealer = Sealer::new(VECTOR_KEY, VECTOR_APP_ID);
    assert_eq!(sealer.seal_with(VECTOR_XML, *VECTOR_RANDOM), VECTOR_ENCRYPT);

    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let gw = Gateway::start(|c| {
        oa(c, &mock);
        c.wechat.oa_token = Some(VECTOR_TOKEN.into());
        c.wechat.oa_app_id = Some(VECTOR_APP_ID.into());
        c.wechat.oa_encoding_aes_key = Some(VECTOR_KEY.into());
    })
    .await;

    // The vector's own message, posted as WeChat would.
    let signature = sha1_hex(&[VECTOR_TOKEN, VECTOR_TIMESTAMP, VECTOR_NONCE]);
    let path = format!(
        "/wechat/oa?signature={signature}&timestamp={VECTOR_TIMESTAMP}&nonce={VECTOR_NONCE}\
         &encrypt_type=aes&msg_signature={VECTOR_SIGNATURE}"
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_oa]]></ToUserName><Encrypt><![CDATA[{VECTOR_ENCRYPT}]]></Encrypt></xml>"
    );
    let resp = RawClient::send(gw.addr, "POST", &path, None, &[], body.as_bytes())
        .await
        .read_all()
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let envelope = reply_fields(&resp.text());
    assert_eq!(
        envelope["MsgSignature"],
        sha1_hex(&[
            VECTOR_TOKEN,
            &envelope["TimeStamp"],
            &envelope["Nonce"],
            &envelope["Encrypt"]
        ])
    );
    let inner = reply_fields(&sealer.open(&envelope["Encrypt"]));
    assert_eq!(inner["Content"], answer_for("你好"));
    assert_eq!(inner["ToUserName"], "o-vector");
    assert_eq!(inner["FromUserName"], "gh_oa");

    // A round trip through the simulator (its own AES both ways).
    let mut sim = WeChat::new(&[&gw]);
    sim.token = VECTOR_TOKEN.into();
    sim.safe = Some(Sealer::new(VECTOR_KEY, VECTOR_APP_ID));
    let out = sim.text("o-safe", 5001, "加密 ]]> 测试").await;
    assert_eq!(out.content(), answer_for("加密 ]]> 测试"));

    // A wrong msg_signature, and a message sealed for another app, are refused.
    let bad_sig = path.replace(VECTOR_SIGNATURE, &"0".repeat(40));
    let resp = RawClient::send(gw.addr, "POST", &bad_sig, None, &[], body.as_bytes())
        .await
        .read_all()
        .await;
    assert_eq!(resp.status, 401);
    let mut other = WeChat::new(&[&gw]);
    other.token = VECTOR_TOKEN.into();
    other.safe = Some(Sealer::new(VECTOR_KEY, "wx-some-other-app"));
    other.deliveries = 1;
    let out = other
        .deliver(&text_xml("o-other", 5002, "hi"))
        .await
        .unwrap();
    assert_eq!(out.status, 400, "{out:?}");
    gw.assert_ledger_ok().await;
}

// ---------------------------------------------------------------------------------
// Push mode, against a simulated WeChat API.

#[derive(Default)]
struct Api {
    token: common::StableToken,
    /// Every `custom/send`: the access token used, the JSON body, the errcode answered.
    sends: Vec<(String, Value, i64)>,
    /// Sends with this token answer 40001 (invalid credential).
    revoked: Option<String>,
    /// The next N sends fail (45015: the user has not written for too long).
    fail_next: usize,
}

async fn mock_wechat_api(state: Arc<Mutex<Api>>) -> String {
    common::mock_json_api(move |call| {
        let mut api = state.lock().unwrap();
        match call.path.as_str() {
            "/cgi-bin/stable_token" => api.token.answer(call.json()),
            "/cgi-bin/message/custom/send" => {
                let token = call.param("access_token").unwrap_or_default().to_string();
                let errcode = if api.revoked.as_deref() == Some(token.as_str()) {
                    40001
                } else if api.fail_next > 0 {
                    api.fail_next -= 1;
                    45015
                } else {
                    0
                };
                api.sends.push((token, call.json(), errcode));
                json!({"errcode": errcode, "errmsg": if errcode == 0 { "ok" } else { "refused" }})
            }
            _ => json!({"errcode": 404}),
        }
    })
    .await
}

async fn wait_sends(api: &Arc<Mutex<Api>>, n: usize) -> Vec<(String, Value, i64)> {
    for _ in 0..500 {
        let sends = api.lock().unwrap().sends.clone();
        if sends.len() >= n {
            return sends;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} pushes arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mode_answers_at_once_pushes_the_answer_and_falls_back_to_the_link() {
    warm().await;
    let api = Arc::new(Mutex::new(Api::default()));
    let api_base = mock_wechat_api(Arc::clone(&api)).await;
    let mock = MockUpstream::start(MockConfig {
        first_token_delay: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| {
        oa(c, &mock);
        c.wechat.oa_push = true;
        c.wechat.api_base = api_base.clone();
        c.wechat.oa_app_id = Some("wx-oa".into());
        c.wechat.oa_app_secret = Some("oa-secret".into());
    })
    .await;
    let sim = WeChat::new(&[&gw]);

    let started = Instant::now();
    let out = sim.text("o-push", 6001, "推送").await;
    assert_eq!((out.delivery, out.body.as_str()), (1, "success"));
    assert!(
        started.elapsed() < Duration::from_millis(DEADLINE_MS),
        "at once"
    );
    let sends = wait_sends(&api, 1).await;
    assert_eq!(sends[0].0, "T1");
    assert_eq!(sends[0].1["touser"], "o-push");
    assert_eq!(sends[0].1["msgtype"], "text");
    assert_eq!(sends[0].1["text"]["content"], answer_for("推送"));
    let asked = api.lock().unwrap().token.requests[0].clone();
    assert_eq!(
        asked,
        json!({"grant_type": "client_credential", "appid": "wx-oa", "secret": "oa-secret", "force_refresh": false})
    );

    // The token is cached: a second answer needs no new one.
    sim.text("o-push", 6002, "第二个").await;
    let sends = wait_sends(&api, 2).await;
    assert_eq!(sends[1].0, "T1");
    assert_eq!(api.lock().unwrap().token.requests.len(), 1);

    // WeChat revokes the token: refreshed once, the push goes through.
    api.lock().unwrap().revoked = Some("T1".into());
    sim.text("o-push", 6003, "换令牌").await;
    let sends = wait_sends(&api, 4).await;
    assert_eq!((sends[2].0.as_str(), sends[2].2), ("T1", 40001));
    assert_eq!((sends[3].0.as_str(), sends[3].2), ("T2", 0));
    assert_eq!(sends[3].1["text"]["content"], answer_for("换令牌"));
    // The stable token came back refused once more, so a new one was forced — once.
    let asked = api.lock().unwrap().token.requests.clone();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert_eq!(
        (
            asked[1]["force_refresh"].as_bool(),
            asked[2]["force_refresh"].as_bool()
        ),
        (Some(false), Some(true))
    );

    // The answer cannot be pushed: the link is, and its page has the answer.
    api.lock().unwrap().fail_next = 1;
    sim.text("o-push", 6004, "回退").await;
    let sends = wait_sends(&api, 6).await;
    assert_eq!(sends[4].2, 45015);
    assert_eq!(sends[4].1["text"]["content"], answer_for("回退"));
    let fallback = sends[5].1["text"]["content"].as_str().unwrap().to_string();
    assert_eq!(sends[5].2, 0);
    assert!(fallback.contains("/a/"), "{fallback}");
    let (status, page) = get_page(&gw, &link_path(&fallback)).await;
    assert_eq!(status, 200);
    assert!(page.contains("回答完毕"), "{page}");

    // Nothing can be pushed: logged, nothing breaks, the answer is still on its page.
    api.lock().unwrap().fail_next = 2;
    sim.text("o-push", 6005, "都失败").await;
    let sends = wait_sends(&api, 8).await;
    assert_eq!((sends[6].2, sends[7].2), (45015, 45015));
    let row = oa_row(&gw, "o-push", 6005).await;
    let (status, page) = get_page(&gw, &format!("/a/{}", row.token)).await;
    assert_eq!(status, 200);
    assert!(page.contains("都失败"));

    // A repeated delivery of a pushed message only acknowledges.
    let again = sim.text("o-push", 6005, "都失败").await;
    assert_eq!(again.body, "success");
    assert_eq!(mock.request_count(), 5, "one upstream call per message");
    gw.assert_ledger_ok().await;
}

// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_replies_are_cut_at_a_character_boundary_with_the_link() {
    warm().await;
    let long = "答😀".repeat(600);
    let mock = MockUpstream::start(MockConfig {
        answer: Some(long.clone()),
        chunks: 4,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| {
        oa(c, &mock);
        c.wechat.oa_reply_max_bytes = 1000;
    })
    .await;
    let sim = WeChat::new(&[&gw]);
    let out = sim.text("o-long", 7001, "长").await;
    assert_eq!(out.delivery, 1);
    let content = out.content();
    assert!(content.len() <= 1000, "{} bytes", content.len());
    assert!(content.len() > 800, "the cap is used, not wasted");
    let (kept, tail) = content.split_once("……").unwrap();
    assert!(long.starts_with(kept));
    assert!(tail.contains("/a/"));
    let (_, page) = get_page(&gw, &link_path(&content)).await;
    assert!(page.contains(&long), "the page has all of it");

    // The answer may hold what ends a CDATA section.
    mock.set_config(MockConfig {
        answer: Some("a]]>b <c> & ]]]]> d".into()),
        chunks: 3,
        ..MockConfig::default()
    });
    let out = sim.text("o-long", 7002, "cdata").await;
    assert_eq!(out.content(), "a]]>b <c> & ]]]]> d");
    gw.assert_ledger_ok().await;
}

/// The conversation text the upstream was sent for request `i`.
fn sent_messages(mock: &MockUpstream, i: usize) -> Vec<String> {
    mock.requests()[i].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_continue_until_idle_or_new() {
    warm().await;
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let gw = Gateway::start(|c| {
        oa(c, &mock);
        c.wechat.oa_session_idle_secs = 2;
    })
    .await;
    let sim = WeChat::new(&[&gw]);
    sim.text("o-sess", 8001, "第一问").await;
    sim.text("o-sess", 8002, "第二问").await;
    assert!(
        sent_messages(&mock, 1).contains(&"第一问".to_string()),
        "the second question continues the conversation"
    );
    let out = sim.text("o-sess", 8003, "/new").await;
    assert!(out.content().contains("新的对话"));
    sim.text("o-sess", 8004, "第三问").await;
    let sent = sent_messages(&mock, 2);
    assert!(!sent.contains(&"第一问".to_string()), "{sent:?}");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    sim.text("o-sess", 8005, "第四问").await;
    let sent = sent_messages(&mock, 3);
    assert!(
        !sent.contains(&"第三问".to_string()),
        "an idle conversation is not continued: {sent:?}"
    );
    sim.text("o-sess", 8006, "第五问").await;
    assert!(sent_messages(&mock, 4).contains(&"第四问".to_string()));
    assert_eq!(mock.request_count(), 5, "/new asked nothing");

    // /history links to a page listing the answers.
    let out = sim.text("o-sess", 8007, "/history").await;
    let path = link_path(&out.content());
    assert!(path.starts_with("/a/h/"), "{path}");
    let (status, page) = get_page(&gw, &path).await;
    assert_eq!(status, 200);
    for q in ["第一问", "第五问"] {
        assert!(page.contains(q), "{q} in {page}");
    }
    gw.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_only_mode_sends_only_chat_commands_to_the_model() {
    warm().await;
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let gw = Gateway::start(|c| {
        oa(c, &mock);
        c.wechat.oa_command_only = true;
    })
    .await;
    let sim = WeChat::new(&[&gw]);
    let out = sim.text("o-cmd", 9001, "随便聊聊").await;
    assert!(out.content().contains("/chat"), "help: {out:?}");
    assert_eq!(mock.request_count(), 0);
    let out = sim.text("o-cmd", 9002, "/chat 讲个笑话").await;
    assert_eq!(out.content(), answer_for("讲个笑话"));
    assert_eq!(mock.request_count(), 1);
    let out = sim.text("o-cmd", 9003, "/chat").await;
    assert!(out.content().contains("/chat"));
    assert_eq!(mock.request_count(), 1);
    gw.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_malformed_bodies_are_refused_cleanly() {
    warm().await;
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let gw = Gateway::start(|c| oa(c, &mock)).await;
    let mut sim = WeChat::new(&[&gw]);
    sim.deliveries = 1;
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">\
        <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\
        <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">]>\
        <xml><ToUserName>gh</ToUserName><FromUserName>o-evil</FromUserName><MsgType>text</MsgType>\
        <Content>&lol2;</Content><MsgId>1</MsgId></xml>"
        .to_string();
    let external = "<!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\
        <xml><FromUserName>o-evil</FromUserName><MsgType>text</MsgType><Content>&xxe;</Content>\
        <MsgId>2</MsgId></xml>"
        .to_string();
    let undeclared = "<xml><FromUserName>o-evil</FromUserName><MsgType>text</MsgType>\
        <Content>&xxe;</Content><MsgId>3</MsgId></xml>"
        .to_string();
    let oversize = text_xml("o-evil", 4, &"长".repeat(40_000));
    let cases = [
        laughs,
        external,
        undeclared,
        oversize,
        "not xml at all".to_string(),
        "{\"json\": true}".to_string(),
        String::new(),
        "<xml><FromUserName>o-evil</FromUserName><MsgType>text".to_string(),
        "<xml><MsgType>text</MsgType><Content>no sender</Content></xml>".to_string(),
        "<xml><FromUserName>o-evil</FromUserName><Content>no type</Content></xml>".to_string(),
    ];
    for body in &cases {
        let out = sim.deliver(body).await.expect("refused at once");
        assert_eq!(out.status, 400, "{body:.80}: {}", out.body);
        let err: Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(err["code"], 10001);
    }
    // Invalid UTF-8.
    let (timestamp, nonce, signature) = sim.signed_query();
    let path = format!("/wechat/oa?signature={signature}&timestamp={timestamp}&nonce={nonce}");
    let resp = RawClient::send(gw.addr, "POST", &path, None, &[], b"<xml>\xff\xfe</xml>")
        .await
        .read_all()
        .await;
    assert_eq!(resp.status, 400);

    assert!(oa_user(&gw, "o-evil").await.is_none(), "nothing was stored");
    assert_eq!(mock.request_count(), 0);
    // Still serving.
    let out = sim.text("o-fine", 10, "还好吗").await;
    assert_eq!(out.content(), answer_for("还好吗"));
    gw.assert_ledger_ok().await;
}
