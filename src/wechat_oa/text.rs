//! What the bot says (pure): answers fitted to WeChat's reply size with the link to
//! the whole answer, commands, and refusals as friendly Chinese text.

use crate::error::{AppError, Refusal};

/// A command at the start of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `/new`: the next question starts a new conversation.
    New,
    /// `/history`: a link to the user's recent answers.
    History,
    /// `/help` (or `/帮助`).
    Help,
    /// `/chat <question>`; also what a plain message is when not in command-only mode.
    Chat(&'a str),
    /// A message that is not a question in command-only mode.
    NotACommand,
}

/// What a text message asks for.
pub fn command(text: &str, command_only: bool) -> Command<'_> {
    let text = text.trim();
    let (head, rest) = match text.split_once(char::is_whitespace) {
        Some((head, rest)) => (head, rest.trim()),
        None => (text, ""),
    };
    match head.to_ascii_lowercase().as_str() {
        "/new" => Command::New,
        "/history" => Command::History,
        "/help" | "/帮助" => Command::Help,
        "/chat" => Command::Chat(rest),
        _ if command_only => Command::NotACommand,
        _ => Command::Chat(text),
    }
}

pub fn help(command_only: bool) -> String {
    let ask = if command_only {
        "发送「/chat 你的问题」向 AI 提问。"
    } else {
        "直接发送文字即可向 AI 提问。"
    };
    format!("{ask}\n/new 开始新的对话\n/history 查看最近的回答")
}

pub const NEW_CONVERSATION: &str = "好的，已开始新的对话。";
pub const ONLY_TEXT: &str = "目前只支持文字消息，请用文字提问。";
pub const EMPTY_QUESTION: &str = "请在 /chat 后面写上你的问题。";

pub fn history(link: &str) -> String {
    format!("最近的回答：{link}")
}

/// `text` cut at a character boundary so that it and `suffix` fit in `cap` bytes.
pub fn fit(text: &str, suffix: &str, cap: usize) -> String {
    let room = cap.saturating_sub(suffix.len());
    let mut end = room.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + suffix.len());
    out.push_str(&text[..end]);
    out.push_str(suffix);
    out
}

/// A finished answer as the reply text: whole when it fits in `cap` bytes, else cut
/// with the link.
pub fn finished(answer: &str, link: &str, cap: usize) -> String {
    let answer = answer.trim();
    if answer.is_empty() {
        return "（没有回答）".into();
    }
    if answer.len() <= cap {
        return answer.to_string();
    }
    fit(answer, &format!("……\n\n（回答较长，全文：{link}）"), cap)
}

/// An answer still being written, on the last chance to reply: what is there, and the
/// link where the rest appears.
pub fn unfinished(so_far: &str, link: &str, cap: usize) -> String {
    let so_far = so_far.trim();
    if so_far.is_empty() {
        return fit("", &format!("回答还在生成中，完整回答请打开：{link}"), cap);
    }
    fit(
        so_far,
        &format!("……\n\n（回答还在生成，完整回答请打开：{link}）"),
        cap,
    )
}

/// An answer that failed upstream.
pub fn failed(so_far: &str, link: &str, cap: usize) -> String {
    let so_far = so_far.trim();
    if so_far.is_empty() {
        return "抱歉，AI 服务暂时出错了，请稍后再试（本次不扣费）。".into();
    }
    fit(
        so_far,
        &format!("……\n\n（回答中途出错，已生成的部分：{link}）"),
        cap,
    )
}

/// A question that started no answer, as the user should hear it.
pub fn refusal(error: &AppError) -> String {
    match error {
        AppError::InsufficientBalance => "余额不足，请充值后再提问。".into(),
        AppError::Refused {
            reason: Refusal::QuotaExhausted,
            ..
        } => "今天的免费次数已用完，请明天再来或充值后继续。".into(),
        AppError::Refused {
            reason: Refusal::RateLimited,
            ..
        } => "提问太频繁了，请稍等片刻再试。".into(),
        AppError::Refused { msg, .. } => msg.clone(),
        AppError::BadRequest(msg) => msg.clone(),
        AppError::NotFound(msg) => (*msg).to_string(),
        AppError::Upstream { .. }
        | AppError::UpstreamRejected(_)
        | AppError::Internal(_)
        | AppError::Unauthorized(_) => "服务暂时繁忙，请稍后再试。".into(),
        AppError::Conflict(msg) => (*msg).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(command(" /new ", false), Command::New);
        assert_eq!(command("/NEW", true), Command::New);
        assert_eq!(command("/history", false), Command::History);
        assert_eq!(command("/chat  你好 ", true), Command::Chat("你好"));
        assert_eq!(command("/chat", true), Command::Chat(""));
        assert_eq!(command("你好", true), Command::NotACommand);
        assert_eq!(command("你好", false), Command::Chat("你好"));
        assert_eq!(command("/chat 你好", false), Command::Chat("你好"));
        assert_eq!(command("/newer", false), Command::Chat("/newer"));
    }

    #[test]
    fn fitting_cuts_at_character_boundaries_within_the_cap() {
        let text = "你好😀".repeat(100);
        for cap in 0..200 {
            let out = fit(&text, "…L", cap);
            assert!(out.len() <= cap.max("…L".len()), "{cap}: {}", out.len());
            assert!(out.ends_with("…L"));
            assert!(text.starts_with(&out[..out.len() - "…L".len()]));
            // Nothing more would have fitted.
            assert!(out.len() + 4 > cap || out.len() == text.len() + "…L".len());
        }
        let long = "答".repeat(1000);
        let out = finished(&long, "http://x/a/t", 2000);
        assert!(out.len() <= 2000);
        assert!(out.ends_with("http://x/a/t）"));
        assert_eq!(finished("short", "l", 2000), "short");
        assert!(unfinished("", "L", 300).contains('L'));
    }
}
