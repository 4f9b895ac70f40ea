//! Request paths as policies see them: normalized once, so that `/public/../admin`,
//! `//admin` and `/%61dmin` are all `/admin` to an authorization rule, and the app is sent the
//! same path that was authorized. Percent-escapes of unreserved characters are decoded (RFC
//! 3986, 6.2.2.2), repeated slashes merged, and `.` and `..` segments removed (5.2.4). A path
//! with an escaped slash or backslash, or a backslash, is refused: apps and proxies disagree
//! on what they mean.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path holds an escaped slash or backslash")]
    EscapedSeparator,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path holds a malformed percent-escape")]
    BadEscape,
}

fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The value of one hex digit (either case), as percent-escapes and trace ids write them.
pub(crate) fn hex(digit: u8) -> Option<u8> {
    let value = HEX_VALUES[usize::from(digit)];
    (value != NOT_HEX).then_some(value)
}

/// Not the value of any hex digit.
const NOT_HEX: u8 = u8::MAX;

/// Each byte's value as a hex digit, or [`NOT_HEX`]: one load a digit, where a `match` on three
/// ranges branched several times (a serving sidecar reads 50 digits of each `traceparent`).
const HEX_VALUES: [u8; 256] = {
    let mut values = [NOT_HEX; 256];
    let mut value = 0;
    while value < 16 {
        let lower = b"0123456789abcdef"[value];
        values[lower as usize] = value as u8;
        values[lower.to_ascii_uppercase() as usize] = value as u8;
        value += 1;
    }
    values
};

/// The normalized form of a request path (without its query); borrowed when it is already
/// normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let simple = !path.contains(['%', '\\'])
        && !path.contains("//")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if simple {
        return Ok(Cow::Borrowed(path));
    }
    // Decode what may be decoded; keep other escapes, upper-cased.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let byte = high * 16 + low;
                if byte == b'/' || byte == b'\\' {
                    return Err(PathError::EscapedSeparator);
                }
                if unreserved(byte) {
                    decoded.push(char::from(byte));
                } else {
                    decoded.push('%');
                    decoded.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                    decoded.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                }
                i += 3;
            }
            _ => {
                // Not a '%' or '\\': copy the whole run up to the next one (UTF-8 stays whole).
                let next = path[i..]
                    .find(['%', '\\'])
                    .map_or(bytes.len(), |offset| i + offset);
                decoded.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    // Merge slashes and remove dot segments.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing || segments.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hex_digit_has_the_value_rust_gives_it_and_no_other_byte_has_one() {
        for byte in 0..=u8::MAX {
            let expected = char::from(byte).to_digit(16).map(|v| v as u8);
            assert_eq!(hex(byte), expected, "{byte:#04x}");
        }
    }

    #[test]
    fn paths_that_mean_the_same_are_written_the_same() {
        let cases = [
            ("/", "/"),
            ("/public/menu", "/public/menu"),
            ("/public/../admin", "/admin"),
            ("/public/./menu", "/public/menu"),
            ("//admin///x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/a%2eb", "/a.b"),
            ("/%2e%2e/admin", "/admin"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/space%20here", "/space%20here"),
            ("/lower%c3%a9", "/lower%C3%A9"),
            ("/caf\u{e9}/x/../y", "/caf\u{e9}/y"),
            ("*", "*"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(matches!(normalize("/plain/path"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EscapedSeparator));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EscapedSeparator));
        assert_eq!(normalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("admin"), Err(PathError::NotAbsolute));
    }
}
