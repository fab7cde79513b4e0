//! How text output shows a string the traced system chose: a command name, a file name, a
//! cgroup or a function. Any local user picks those, and stapr prints them to root's
//! terminal, so each is shown as one line of printable characters, as `ls -b` and
//! systemd do: control characters (C0, DEL, C1), the bidirectional overrides and the
//! backslash itself are escaped visibly (`\n`, `\x1b`, `\u{202e}`, `\\`). Every text view
//! calls this; JSON keeps the exact string (serde escapes it as JSON must), and the
//! exporter follows the Prometheus text format's own escaping. A [`Name`] the kernel gave
//! as bytes keeps them, so bytes that are not UTF-8 are shown as `\xNN` too.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` as text output shows it: itself when nothing in it needs escaping. Widths are
/// counted on the result, so `format!("{:<15}", shown(comm))` keeps columns aligned.
pub fn shown(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters, the characters that reorder or break a line for a terminal or an
/// editor, and the escape character itself.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control() // C0, DEL and C1
        || matches!(c,
            '\u{200e}' | '\u{200f}'          // left-to-right and right-to-left marks
            | '\u{2028}' | '\u{2029}'        // line and paragraph separators
            | '\u{202a}'..='\u{202e}'        // bidirectional embeddings and overrides
            | '\u{2066}'..='\u{2069}') // bidirectional isolates
}

/// `bytes` as text output shows them: UTF-8 runs as [`shown`] does, every byte that is
/// not UTF-8 as `\xNN`.
pub fn shown_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return shown(s);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(&shown(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// A name the traced system chose (a command, a file), as text, and as the bytes the kernel
/// gave when they were not UTF-8. As text (filters, sorting, JSON, the exporter) such bytes
/// are U+FFFD; `Display` shows the name escaped, bytes and all, so a text view cannot
/// print one raw by mistake.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name {
    text: String,
    raw: Option<Box<[u8]>>,
}

impl Name {
    pub fn from_bytes(bytes: &[u8]) -> Name {
        match std::str::from_utf8(bytes) {
            Ok(s) => Name::from(s),
            Err(_) => Name {
                text: String::from_utf8_lossy(bytes).into_owned(),
                raw: Some(bytes.into()),
            },
        }
    }

    /// A C string the kernel filled, up to its NUL.
    pub fn from_c(raw: &[u8]) -> Name {
        Name::from_bytes(probes_common::c_bytes(raw))
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name {
            text: s.to_owned(),
            raw: None,
        }
    }
}

impl From<String> for Name {
    fn from(text: String) -> Name {
        Name { text, raw: None }
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

/// Escaped, and padded as `{:<15}` asks.
impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.raw {
            None => f.pad(&shown(&self.text)),
            Some(raw) => f.pad(&shown_bytes(raw)),
        }
    }
}

/// JSON and other serializations get the text.
impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_borrowed() {
        assert!(matches!(shown("nginx: worker"), Cow::Borrowed(_)));
        assert!(matches!(shown("/srv/www/índice.html"), Cow::Borrowed(_)));
    }

    #[test]
    fn hostile_names_become_one_printable_line() {
        assert_eq!(shown("x\n\u{1b}]0;pwn\u{7}"), "x\\n\\x1b]0;pwn\\a");
        assert_eq!(shown("e\nv\u{1b}[2Jil"), "e\\nv\\x1b[2Jil");
        assert_eq!(shown("a\\nb"), "a\\\\nb");
        assert_eq!(shown("del\u{7f}"), "del\\x7f");
        assert_eq!(shown("nul\0"), "nul\\x00");
        assert_eq!(shown("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(shown("txt.\u{202e}gpj"), "txt.\\u{202e}gpj");
        for s in ["x\n\u{1b}]0;pwn\u{7}", "\u{85}\r\t\u{8}\u{b}\u{c}"] {
            assert!(shown(s).chars().all(|c| !c.is_control()), "{s:?}");
        }
    }

    #[test]
    fn widths_are_counted_after_escaping() {
        let row = format!("{:<8}|", shown("a\nb"));
        assert_eq!(row, "a\\nb    |");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(shown_bytes(b"caf\xe9\n"), "caf\\xe9\\n");
        assert_eq!(shown_bytes(b"ok"), "ok");
        let n = Name::from_c(b"bad\xff\x1b\0junk");
        assert_eq!(n.as_str(), "bad\u{fffd}\u{1b}");
        assert_eq!(format!("{n:<12}|"), "bad\\xff\\x1b |");
        assert_eq!(
            serde_json::json!({ "comm": n }).to_string(),
            "{\"comm\":\"bad\u{fffd}\\u001b\"}"
        );
        let plain = Name::from("x\ny");
        assert_eq!(plain.to_string(), "x\\ny");
        assert_eq!(plain, "x\ny");
    }
}
