//! The Official Account's XML (pure): reading a pushed message into its fields, and
//! writing replies.
//!
//! Reading is deliberately narrow: the document must be `<xml>…</xml>`; a DOCTYPE (and
//! so any entity declaration) is refused outright, so no entity is ever expanded; only
//! the five predefined entities and character references are resolved; nesting and the
//! number of elements are bounded. Whatever is refused is an error, never a panic.

use std::collections::HashMap;

use quick_xml::Reader;
use quick_xml::events::Event;

/// How deep elements may nest under `<xml>` (some events carry small nested lists).
const MAX_DEPTH: usize = 4;
/// How many elements one message may hold.
const MAX_ELEMENTS: usize = 256;

/// Why a body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    Syntax(String),
    #[error("DOCTYPE is not accepted")]
    Doctype,
    #[error("unknown entity &{0};")]
    Entity(String),
    #[error("the root element must be <xml>")]
    Root,
    #[error("too deep or too many elements")]
    TooBig,
}

/// The top-level fields of a message (`ToUserName`, `MsgType`, `Content`, …) with their
/// text; a field given twice keeps its first value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields(HashMap<String, String>);

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The field's text when present and not blank.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }
}

/// Parses a message document.
pub fn parse(text: &str) -> Result<Fields, XmlError> {
    let mut reader = Reader::from_str(text);
    let syntax = |e: quick_xml::Error| XmlError::Syntax(e.to_string());
    let mut fields = HashMap::new();
    let mut depth = 0usize;
    let mut elements = 0usize;
    let mut seen_root = false;
    // The field being read (a direct child of the root) and its text so far.
    let mut current: Option<(String, String)> = None;
    loop {
        match reader.read_event().map_err(syntax)? {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(start) => {
                elements += 1;
                if elements > MAX_ELEMENTS || depth >= MAX_DEPTH {
                    return Err(XmlError::TooBig);
                }
                let name = start.name().as_ref().to_string();
                match depth {
                    0 if seen_root || name != "xml" => return Err(XmlError::Root),
                    0 => seen_root = true,
                    1 => current = Some((name, String::new())),
                    _ => {}
                }
                depth += 1;
            }
            Event::Empty(start) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(XmlError::TooBig);
                }
                let name = start.name().as_ref().to_string();
                match depth {
                    0 if seen_root || name != "xml" => return Err(XmlError::Root),
                    0 => seen_root = true,
                    1 => {
                        fields.entry(name).or_insert_with(String::new);
                    }
                    _ => {}
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1
                    && let Some((name, value)) = current.take()
                {
                    fields.entry(name).or_insert(value);
                }
            }
            Event::Text(t) => {
                let t = t.xml10_content();
                if depth == 0 {
                    if !t.trim().is_empty() {
                        return Err(XmlError::Root);
                    }
                } else if let Some((_, value)) = current.as_mut().filter(|_| depth == 2) {
                    value.push_str(&t);
                }
            }
            Event::CData(c) => {
                if depth == 0 {
                    return Err(XmlError::Root);
                }
                let t = c.into_inner();
                if let Some((_, value)) = current.as_mut().filter(|_| depth == 2) {
                    value.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                let resolved: String = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => return Err(XmlError::Entity(r.xml10_content().into_owned())),
                    }
                } else {
                    let name = r.xml10_content();
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(s) => s.to_string(),
                        None => return Err(XmlError::Entity(name.into_owned())),
                    }
                };
                if depth == 0 {
                    return Err(XmlError::Root);
                }
                if let Some((_, value)) = current.as_mut().filter(|_| depth == 2) {
                    value.push_str(&resolved);
                }
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !seen_root || depth != 0 {
        return Err(XmlError::Root);
    }
    Ok(Fields(fields))
}

/// `text` as one or more CDATA sections: a `]]>` inside is split across two sections.
/// Characters XML 1.0 forbids (most control characters) are dropped.
pub fn cdata(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
        })
        .collect();
    format!("<![CDATA[{}]]>", clean.replace("]]>", "]]]]><![CDATA[>"))
}

/// A passive text reply to the user `to` from the account `from`.
pub fn text_reply(to: &str, from: &str, create_time: i64, content: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName>\
         <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content>{}</Content></xml>",
        cdata(to),
        cdata(from),
        cdata(content)
    )
}

/// The envelope of an encrypted reply.
pub fn encrypted_reply(encrypt: &str, signature: &str, timestamp: &str, nonce: &str) -> String {
    format!(
        "<xml><Encrypt>{}</Encrypt><MsgSignature>{}</MsgSignature>\
         <TimeStamp>{}</TimeStamp><Nonce>{}</Nonce></xml>",
        cdata(encrypt),
        cdata(signature),
        cdata(timestamp),
        cdata(nonce)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_text_message() {
        let f = parse(
            "<?xml version=\"1.0\"?>\n<xml><ToUserName><![CDATA[gh_1]]></ToUserName>\n\
             <FromUserName><![CDATA[o-1]]></FromUserName><CreateTime>1700000000</CreateTime>\
             <MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好 <b>]]> &amp; more</Content>\
             <MsgId>42</MsgId><Empty/></xml>",
        )
        .unwrap();
        assert_eq!(f.get("ToUserName"), Some("gh_1"));
        assert_eq!(f.get("MsgType"), Some("text"));
        assert_eq!(f.get("Content"), Some("你好 <b> & more"));
        assert_eq!(f.get("MsgId"), Some("42"));
        assert_eq!(f.get("CreateTime"), Some("1700000000"));
        assert_eq!(f.get("Empty"), Some(""));
        assert_eq!(f.non_empty("Empty"), None);
        let f = parse("<xml><A>&#x4F60;&#22909;</A><B><C>x</C></B></xml>").unwrap();
        assert_eq!(f.get("A"), Some("你好"));
        assert_eq!(f.get("B"), Some(""), "nested text is not the field's");
    }

    #[test]
    fn refuses_hostile_and_malformed_documents() {
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">\
                    <!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]><xml><Content>&lol2;</Content></xml>";
        assert_eq!(parse(bomb).unwrap_err(), XmlError::Doctype);
        let external =
            "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><C>&e;</C></xml>";
        assert_eq!(parse(external).unwrap_err(), XmlError::Doctype);
        assert_eq!(
            parse("<xml><C>&e;</C></xml>").unwrap_err(),
            XmlError::Entity("e".into())
        );
        for bad in [
            "",
            "not xml at all",
            "{\"json\":true}",
            "<xml><A>unclosed</xml>",
            "<xml><A></B></xml>",
            "<other><A>x</A></other>",
            "<xml/><xml/>",
            "<xml><A>x</A>",
            "<xml><A>x</A></xml>trailing",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(10), "</a>".repeat(10));
        assert_eq!(parse(&deep).unwrap_err(), XmlError::TooBig);
        let wide = format!("<xml>{}</xml>", "<a/>".repeat(1000));
        assert_eq!(parse(&wide).unwrap_err(), XmlError::TooBig);
    }

    #[test]
    fn replies_survive_any_text() {
        for content in ["plain", "a]]>b", "]]>]]>", "<tag>&amp;", "x\u{0}y\u{1b}z"] {
            let xml = text_reply("o-1", "gh_1", 1, content);
            let f = parse(&xml).unwrap();
            let expected: String = content
                .chars()
                .filter(|c| !matches!(c, '\u{0}' | '\u{1b}'))
                .collect();
            assert_eq!(f.get("Content"), Some(expected.as_str()), "{xml}");
            assert_eq!(f.get("ToUserName"), Some("o-1"));
            assert_eq!(f.get("MsgType"), Some("text"));
        }
        let f = parse(&encrypted_reply("E==", "sig", "123", "n")).unwrap();
        assert_eq!(f.get("Encrypt"), Some("E=="));
        assert_eq!(f.get("MsgSignature"), Some("sig"));
    }
}
