//! The agent's config file, `/etc/flotilla/agent.toml`, rendered by hand (exactly seven keys)
//! with a TOML basic-string escaper.

use crate::HostInputs;
use crate::paths::{CA_PATH, STATE_DIR, TOKEN_PATH};

/// The text of `agent.toml` for validated `inputs`:
///
/// ```toml
/// host_name = "manager0"
/// cluster = "demo"
/// coordinator = ["10.0.0.5:7443"]
/// ca_file = "/etc/flotilla/ca.pem"
/// token_file = "/etc/flotilla/token"
/// state_dir = "/var/lib/flotilla"
/// heartbeat_interval_s = 5
/// ```
///
/// `token_file` is always present; the file exists only when the render had a join token.
pub(crate) fn render(inputs: &HostInputs) -> String {
    let coordinator: Vec<String> = inputs.coordinator.iter().map(|c| toml_string(c)).collect();
    format!(
        "host_name = {}\ncluster = {}\ncoordinator = [{}]\nca_file = {}\ntoken_file = {}\n\
         state_dir = {}\nheartbeat_interval_s = {}\n",
        toml_string(&inputs.host_name),
        toml_string(&inputs.cluster),
        coordinator.join(", "),
        toml_string(CA_PATH),
        toml_string(TOKEN_PATH),
        toml_string(STATE_DIR),
        inputs.heartbeat_interval_s,
    )
}

/// A TOML basic string (`"..."`) holding exactly `s`.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if c < ' ' || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_round_trip() {
        for s in
            ["", "plain", "quote \" backslash \\ ", "a\nb\r\tc\u{8}\u{c}", "\u{0}\u{1f}\u{7f}", "ünï €", "'single'"]
        {
            let doc = format!("v = {}\n", toml_string(s));
            let parsed: toml::Table = toml::from_str(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(parsed["v"].as_str(), Some(s), "{doc}");
        }
    }
}
