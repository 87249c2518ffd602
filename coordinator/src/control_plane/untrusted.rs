//! Text that came from outside — a host name an enrolling client claims, a CSR's subject, an
//! agent's version string — made safe to store, log and print: control characters (terminal
//! escapes among them) and the Unicode controls that reorder text are escaped as `\u{..}`, and
//! the result is cut to a byte budget with a marker saying how much was cut (issue 14).
//!
//! [`clean`] is idempotent: what it returns passes through it unchanged, so the store can
//! clean every audit field again without knowing where it came from.

/// The most bytes kept of a host name (or any name) from outside.
pub const NAME_MAX: usize = 128;
/// The most bytes kept of a detail or reason that may quote outside text.
pub const DETAIL_MAX: usize = 512;
/// The most bytes kept of an audit kind or a source address.
pub const KIND_MAX: usize = 64;

/// Room kept for the marker that says how much was cut (`…[+4294967295 bytes]`).
const MARKER_ROOM: usize = 24;

/// `s` with every control or reordering character escaped, at most `max` bytes long
/// (`max` ≥ 32): longer text keeps its start and ends with `…[+N bytes]`.
pub fn clean(s: &str, max: usize) -> String {
    let max = max.max(MARKER_ROOM + 8);
    let needs_escape = s.chars().any(must_escape);
    if !needs_escape && s.len() <= max {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len().min(max));
    let budget = max - MARKER_ROOM;
    for (i, c) in s.char_indices() {
        let piece = if must_escape(c) { c.escape_unicode().to_string() } else { c.to_string() };
        if out.len() + piece.len() > budget && rest_too_long(&s[i..], max - out.len()) {
            out.push_str(&format!("…[+{} bytes]", s.len() - i));
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// Whether what is left (escaped) no longer fits in `room` bytes.
fn rest_too_long(rest: &str, room: usize) -> bool {
    let mut len = 0;
    for c in rest.chars() {
        len += if must_escape(c) { c.escape_unicode().count() } else { c.len_utf8() };
        if len > room {
            return true;
        }
    }
    false
}

/// C0 and C1 controls (ESC, CSI, BEL, newlines, DEL, …) and the invisible characters that
/// change how text around them is shown (zero-width, bidirectional overrides, BOM).
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_unchanged() {
        assert_eq!(clean("node0", NAME_MAX), "node0");
        assert_eq!(clean("ünïcode ✓", NAME_MAX), "ünïcode ✓");
    }

    #[test]
    fn escapes_and_controls_are_escaped() {
        let hostile = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nline\u{9b}31m\u{202E}txt";
        let c = clean(hostile, NAME_MAX);
        assert!(!c.chars().any(must_escape), "{c:?}");
        assert_eq!(c, "evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{d}\\u{a}line\\u{9b}31m\\u{202e}txt");
    }

    #[test]
    fn long_text_is_cut_to_the_budget_with_a_marker() {
        let mib = "x".repeat(1 << 20);
        let c = clean(&mib, NAME_MAX);
        assert!(c.len() <= NAME_MAX, "{}", c.len());
        assert!(c.ends_with(&format!("…[+{} bytes]", (1 << 20) - (NAME_MAX - MARKER_ROOM))), "{c}");
        // Escapes count against the budget too.
        let c = clean(&"\u{1b}".repeat(10_000), DETAIL_MAX);
        assert!(c.len() <= DETAIL_MAX && c.starts_with("\\u{1b}"), "{c}");
        // Text that fits exactly is not cut.
        let exact = "y".repeat(NAME_MAX);
        assert_eq!(clean(&exact, NAME_MAX), exact);
    }

    #[test]
    fn cleaning_is_idempotent() {
        for s in ["node0", &"z\u{1b}".repeat(300), &"é".repeat(1000), "a\nb"] {
            for max in [NAME_MAX, DETAIL_MAX, KIND_MAX] {
                let once = clean(s, max);
                assert_eq!(clean(&once, max), once, "{s:?} at {max}");
            }
        }
    }
}
