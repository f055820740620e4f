//! Text that came from the network (Atlas, a source, or a proxy in between), made fit for
//! conditions, status, events and logs.
//!
//! A server may answer anything: a megabyte-long `detail`, newlines that forge log lines, ANSI
//! escapes that repaint a terminal, NUL bytes, bidirectional overrides, a URL with a password
//! in it. [`sanitize`] is applied once, where error bodies are parsed (`ApiFailure`), and to
//! transport error texts, so every consumer gets the same one-line, bounded, redacted text.

use super::redact::{redact_auth_credentials, redact_userinfo_in_text};

/// Longest errorCode, OAuth `error`, reason phrase or field name kept, in characters.
pub const MAX_CODE_CHARS: usize = 64;
/// Longest `detail`, OAuth `error_description` or field description kept, in characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// Ends a text that was cut at its bound.
pub const ELLIPSIS: char = '…';

/// `raw` as one line of at most `max_chars` characters (the ellipsis included when it was
/// cut): every control character, escape sequence and invisible formatting character becomes a
/// space, runs of spaces become one and the ends are trimmed; URL user info and the credential
/// of a `Basic`/`Bearer` scheme are replaced by `[redacted]` (before the cut, so a cut never
/// leaves half a credential behind); the cut falls on a character boundary.
pub fn sanitize(raw: &str, max_chars: usize) -> String {
    let line = one_line(raw);
    let redacted = redact_auth_credentials(&redact_userinfo_in_text(&line));
    clip(redacted, max_chars.max(1))
}

/// [`sanitize`] for an optional field of an error body: None when nothing printable is left.
pub fn sanitize_opt(raw: Option<&str>, max_chars: usize) -> Option<String> {
    raw.map(|s| sanitize(s, max_chars))
        .filter(|s| !s.is_empty())
}

/// Characters that print nothing yet change how the text around them shows or reads:
/// C0/C1 controls and DEL (`char::is_control`), zero-width characters, line and paragraph
/// separators, bidirectional embeddings, overrides and isolates, the byte-order mark.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn one_line(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(4 * MAX_TEXT_CHARS));
    let mut chars = raw.chars().peekable();
    let mut space = false;
    while let Some(c) = chars.next() {
        let blank = match c {
            '\u{1b}' => {
                skip_escape(&mut chars);
                true
            }
            // The one-character CSI of C1.
            '\u{9b}' => {
                skip_csi(&mut chars);
                true
            }
            c => c.is_whitespace() || is_invisible(c),
        };
        if blank {
            // Leading blanks are dropped; trailing ones are never written.
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    out
}

/// What follows an ESC (ECMA-48): a control sequence `ESC [ params final`, a control string
/// (`ESC ]`, `ESC P`, `ESC X`, `ESC ^`, `ESC _` up to BEL or `ESC \`), or an escape sequence
/// `ESC intermediates final`. Consumed whole, so no `[31m` residue is left behind.
fn skip_escape(chars: &mut Chars<'_>) {
    match chars.peek().copied() {
        Some('[') => {
            chars.next();
            skip_csi(chars);
        }
        Some(']' | 'P' | 'X' | '^' | '_') => {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '\u{07}' || c == '\u{9c}' {
                    break;
                }
                if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                    chars.next();
                    break;
                }
            }
        }
        _ => {
            while chars
                .next_if(|c| ('\u{20}'..='\u{2f}').contains(c))
                .is_some()
            {}
            chars.next_if(|c| ('\u{30}'..='\u{7e}').contains(c));
        }
    }
}

/// The rest of a control sequence: parameter and intermediate bytes, then one final byte.
fn skip_csi(chars: &mut Chars<'_>) {
    while chars
        .next_if(|c| ('\u{20}'..='\u{3f}').contains(c))
        .is_some()
    {}
    chars.next_if(|c| ('\u{40}'..='\u{7e}').contains(c));
}

fn clip(s: String, max_chars: usize) -> String {
    if s.chars().nth(max_chars).is_none() {
        return s;
    }
    let end = s
        .char_indices()
        .nth(max_chars - 1)
        .map_or(s.len(), |(i, _)| i);
    let mut t = s[..end].trim_end().to_string();
    t.push(ELLIPSIS);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let long = "x".repeat(1000);
        let clipped = format!("{}…", "x".repeat(MAX_TEXT_CHARS - 1));
        // (input, bound, expected, why)
        let rows: &[(&str, usize, &str, &str)] = &[
            (
                "Invalid IP.",
                MAX_TEXT_CHARS,
                "Invalid IP.",
                "plain text is kept",
            ),
            ("", MAX_TEXT_CHARS, "", "empty stays empty"),
            ("  \n\t ", MAX_TEXT_CHARS, "", "only blanks: empty"),
            (
                &long,
                MAX_TEXT_CHARS,
                &clipped,
                "long text: cut, ellipsis included in the bound",
            ),
            (
                &long[..MAX_TEXT_CHARS],
                MAX_TEXT_CHARS,
                &long[..MAX_TEXT_CHARS],
                "exactly at the bound: not cut",
            ),
            (
                "line one\nline two\r\nthree",
                MAX_TEXT_CHARS,
                "line one line two three",
                "newlines",
            ),
            (
                "a\0b\u{7}c\u{7f}d",
                MAX_TEXT_CHARS,
                "a b c d",
                "NUL, BEL, DEL",
            ),
            (
                "\u{1b}[31mred\u{1b}[0m text",
                MAX_TEXT_CHARS,
                "red text",
                "SGR colour",
            ),
            (
                "x\u{1b}[2J\u{1b}[1;1Hy",
                MAX_TEXT_CHARS,
                "x y",
                "clear screen, cursor home",
            ),
            (
                "a\u{1b}]0;owned\u{7}b",
                MAX_TEXT_CHARS,
                "a b",
                "OSC window title, BEL-terminated",
            ),
            (
                "a\u{1b}]8;;http://evil\u{1b}\\link\u{1b}]8;;\u{1b}\\b",
                MAX_TEXT_CHARS,
                "a link b",
                "OSC 8 hyperlink, ST-terminated",
            ),
            (
                "a\u{1b}(Bb\u{1b}c",
                MAX_TEXT_CHARS,
                "a b",
                "charset designation, reset",
            ),
            ("a\u{9b}31mb", MAX_TEXT_CHARS, "a b", "C1 CSI"),
            (
                "trailing \u{1b}[",
                MAX_TEXT_CHARS,
                "trailing",
                "unterminated CSI at the end",
            ),
            (
                "safe\u{202e}txt.exe",
                MAX_TEXT_CHARS,
                "safe txt.exe",
                "bidi override",
            ),
            (
                "zero\u{200b}width\u{feff}",
                MAX_TEXT_CHARS,
                "zero width",
                "zero-width space, BOM",
            ),
            (
                "para\u{2029}sep",
                MAX_TEXT_CHARS,
                "para sep",
                "paragraph separator",
            ),
            (
                "éàü 日本語",
                MAX_TEXT_CHARS,
                "éàü 日本語",
                "multibyte text is kept",
            ),
            (
                "ééééé",
                4,
                "ééé…",
                "multibyte at the cut: on a char boundary",
            ),
            ("日本語日本語", 3, "日本…", "three-byte chars at the cut"),
            ("🦀🦀🦀", 2, "🦀…", "four-byte chars at the cut"),
            ("ab cd", 4, "ab…", "no space before the ellipsis"),
            (
                "see https://user:hunter2@evil.example/x",
                MAX_TEXT_CHARS,
                "see https://[redacted]@evil.example/x",
                "URL user info",
            ),
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig rest",
                MAX_TEXT_CHARS,
                "Authorization: Bearer [redacted] rest",
                "a bearer token",
            ),
            (
                "got basic bWRiX3NhX2lkOm1kYl9zYV9zaw== here",
                MAX_TEXT_CHARS,
                "got basic [redacted] here",
                "Basic credentials",
            ),
            (
                "Basic authentication failed",
                MAX_TEXT_CHARS,
                "Basic authentication failed",
                "a word after Basic is not a credential",
            ),
        ];
        for (input, max, want, why) in rows {
            let got = sanitize(input, *max);
            assert_eq!(&got, want, "{why}: {input:?}");
            assert!(got.chars().count() <= *max, "{why}: over the bound");
        }
    }

    #[test]
    fn redaction_happens_before_the_cut() {
        // The password straddles the bound: cutting first would keep "https://u:hun" and miss
        // the `@` that marks it.
        let text = format!("{} https://u:hunter2@h/", "a".repeat(MAX_CODE_CHARS - 10));
        let got = sanitize(&text, MAX_CODE_CHARS);
        assert!(!got.contains("hun"), "{got}");
    }

    #[test]
    fn nothing_unsafe_survives_any_input() {
        // Every char below U+3000 (controls, C1, formatting) in a line that is then cut.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for max in [1, 2, MAX_CODE_CHARS, MAX_TEXT_CHARS, 100_000] {
            let got = sanitize(&all, max);
            assert!(got.chars().count() <= max);
            assert!(
                !got.chars()
                    .any(|c| is_invisible(c) || (c.is_whitespace() && c != ' ')),
                "{got:?}"
            );
            assert!(!got.contains("  ") && got.trim() == got, "{got:?}");
        }
        assert_eq!(sanitize_opt(Some("\n\u{1b}[0m"), MAX_CODE_CHARS), None);
        assert_eq!(sanitize_opt(None, MAX_CODE_CHARS), None);
    }
}
