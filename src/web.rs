//! The built H5 page (`uniapp-client/dist/build/h5`), embedded in the binary at build
//! time and served at `/`, so `cargo run --release` shows a working chat page without
//! any npm step.

use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Response, StatusCode};
use rust_embed::RustEmbed;

use crate::response::{self, Body};

#[derive(RustEmbed)]
#[folder = "uniapp-client/dist/build/h5/"]
struct H5;

/// The file at `path` (`/` is `index.html`), or `None` when there is none.
pub fn serve(path: &str) -> Option<Response<Body>> {
    let name = match path.trim_start_matches('/') {
        "" => "index.html",
        name => name,
    };
    let file = H5::get(name)?;
    let mut resp = response::with_content_type(
        StatusCode::OK,
        content_type(name),
        response::full(file.data.into_owned()),
    );
    // Assets carry a content hash in their names; the page itself must be re-read.
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    Some(resp)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_and_its_assets_are_served_with_their_types() {
        let index = super::serve("/").expect("index.html is embedded");
        assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(index.headers()["cache-control"], "no-cache");
        assert!(super::serve("/nope.js").is_none());
        assert_eq!(
            super::content_type("assets/index-x.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            super::content_type("assets/x.css"),
            "text/css; charset=utf-8"
        );
    }
}
