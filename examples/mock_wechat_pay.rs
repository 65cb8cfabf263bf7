//! Mock WeChat Pay API v3 for trying recharge end to end without a merchant account (and
//! for `tests/pay_e2e.sh`):
//!
//! ```text
//! cargo run --example mock_wechat_pay -- --listen 127.0.0.1:9090 --keys-dir ./mock-pay-keys \
//!     --notify-url http://127.0.0.1:8080/pay/wechat/notify [--notify-times 3 --notify-concurrent]
//!     [--lose-notifications]
//! ```
//!
//! Prints `listening on http://ADDR`, then the `[wechat_pay]` settings for the gateway, and
//! serves until Ctrl-C. The key files in `--keys-dir` are read, or generated when missing:
//! `apiclient_key.pem` (the merchant's private key: the gateway's
//! `merchant_private_key_path`), `wechatpay_pub.pem` (the platform public key: the gateway's
//! `platform_public_key_path`) and `wechatpay_key.pem` (the mock's private platform key).
//! Point the gateway at the mock with `CHATGATE_WECHAT_PAY_API_BASE=http://ADDR`.
//!
//! `POST /mock/pay {"code_url": "weixin://…"}` is the user scanning the Native QR code and
//! paying (`{"out_trade_no": …}` for a JSAPI order): the order is marked paid and the
//! signed, encrypted notification is posted to `--notify-url` (not to the order's
//! `notify_url`, which a gateway requires to be https) as many times as asked, or not at
//! all, so that the gateway's order query has to find the payment.
//! `POST /mock/config {"notify_url", "notify_times", "concurrent", "lose"}` changes that at
//! run time; `GET /mock/orders` lists the orders and what their notifications got.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chatgate::pay::mock::{MockPay, MockPayConfig, NotifyMode};
use clap::Parser;
use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};

#[derive(Parser, Debug)]
#[command(about = "Mock WeChat Pay API v3 (orders, queries, signed notifications)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Where the key files are read from, or written to when missing.
    #[arg(long, default_value = "mock-wechat-pay-keys")]
    keys_dir: PathBuf,
    /// The merchant id (`mchid`) the gateway must use.
    #[arg(long, default_value = "1900000109")]
    mch_id: String,
    /// The app id the gateway must use.
    #[arg(long, default_value = "wxd678efh567hg6787")]
    app_id: String,
    /// The API v3 key (32 bytes) that encrypts notifications.
    #[arg(long, default_value = "a7cde1ZbH9sG3kLmN5pQ2rT8uV0wXy4F")]
    api_v3_key: String,
    /// The merchant certificate serial the gateway's requests must name.
    #[arg(long, default_value = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1")]
    merchant_serial: String,
    /// The platform key id sent as `Wechatpay-Serial`.
    #[arg(long, default_value = "PUB_KEY_ID_0114232134912410000000000000")]
    platform_serial: String,
    /// The gateway's notification endpoint: `http://127.0.0.1:PORT/pay/wechat/notify`.
    #[arg(long)]
    notify_url: Option<String>,
    /// How many times each notification is sent (WeChat Pay retries).
    #[arg(long, default_value_t = 1)]
    notify_times: usize,
    /// Send the copies of a notification all at once.
    #[arg(long)]
    notify_concurrent: bool,
    /// Send no notification at all: the gateway must find payments by querying.
    #[arg(long)]
    lose_notifications: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if args.api_v3_key.len() != 32 {
        return Err(format!(
            "--api-v3-key must be 32 bytes (got {})",
            args.api_v3_key.len()
        )
        .into());
    }
    if let Some(url) = &args.notify_url {
        reqwest::Url::parse(url).map_err(|e| format!("--notify-url {url:?}: {e}"))?;
    }
    let keys = KeyFiles::load_or_create(&args.keys_dir)?;
    let notify = NotifyMode {
        url: args.notify_url.clone(),
        times: args.notify_times,
        concurrent: args.notify_concurrent,
        lose: args.lose_notifications,
    };
    let config = MockPayConfig {
        mch_id: args.mch_id.clone(),
        app_id: args.app_id.clone(),
        api_v3_key: args.api_v3_key.clone(),
        merchant_serial_no: args.merchant_serial.clone(),
        platform_serial_no: args.platform_serial.clone(),
        merchant_public_key: keys.merchant.to_public_key(),
        platform_private_key: keys.platform,
        notify: notify.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mock = MockPay::start_on(listener, config).await?;
    let base = mock.base_url();
    println!("listening on {base}");
    let notifications = match (&notify.url, notify.lose) {
        (_, true) => "lost (none sent: the gateway's order query must find payments)".to_string(),
        (None, false) => {
            "not sent until a URL is set: POST /mock/config {\"notify_url\": …}".into()
        }
        (Some(url), false) => format!(
            "to {url}, {} time(s){}",
            notify.times,
            if notify.concurrent { " at once" } else { "" }
        ),
    };
    println!("notifications: {notifications}");
    println!("pay an order: curl -d '{{\"code_url\":\"weixin://…\"}}' {base}/mock/pay");
    println!("gateway settings (CHATGATE_WECHAT_PAY_API_BASE={base}):");
    println!(
        "  [wechat_pay]\n  mch_id = {:?}\n  app_id = {:?}\n  api_v3_key = {:?}\n  \
         merchant_serial_no = {:?}\n  merchant_private_key_path = {:?}\n  \
         platform_public_key_path = {:?}\n  platform_serial_no = {:?}\n  \
         notify_url = \"https://pay.example.com/pay/wechat/notify\"   # not used by the mock",
        args.mch_id,
        args.app_id,
        args.api_v3_key,
        args.merchant_serial,
        keys.merchant_path.display().to_string(),
        keys.platform_public_path.display().to_string(),
        args.platform_serial,
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// The merchant's and the platform's key pairs, as PEM files in one directory.
struct KeyFiles {
    merchant: RsaPrivateKey,
    platform: RsaPrivateKey,
    merchant_path: PathBuf,
    platform_public_path: PathBuf,
}

impl KeyFiles {
    fn load_or_create(dir: &Path) -> Result<KeyFiles, Box<dyn Error>> {
        std::fs::create_dir_all(dir).map_err(|e| format!("--keys-dir {}: {e}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let merchant_path = dir.join("apiclient_key.pem");
        let merchant = private_key(&merchant_path)?;
        let platform = private_key(&dir.join("wechatpay_key.pem"))?;
        let platform_public_path = dir.join("wechatpay_pub.pem");
        let public = platform.to_public_key().to_public_key_pem(LineEnding::LF)?;
        std::fs::write(&platform_public_path, public)
            .map_err(|e| format!("{}: {e}", platform_public_path.display()))?;
        Ok(KeyFiles {
            merchant,
            platform,
            merchant_path,
            platform_public_path,
        })
    }
}

/// Reads the PEM private key at `path` (PKCS#8 or PKCS#1), or generates a 2048-bit one and
/// writes it there (PKCS#8).
fn private_key(path: &Path) -> Result<RsaPrivateKey, Box<dyn Error>> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
                RsaPrivateKey::from_pkcs1_pem(&pem).map_err(|e| e.to_string())
            } else {
                RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| e.to_string())
            };
            Ok(key.map_err(|e| format!("{}: not an RSA private key ({e})", path.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
            let pem = key.to_pkcs8_pem(LineEnding::LF)?;
            std::fs::write(path, pem.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
            tracing::info!("generated {}", path.display());
            Ok(key)
        }
        Err(e) => Err(format!("{}: {e}", path.display()).into()),
    }
}
