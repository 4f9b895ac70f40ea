//! `toYaml` as Helm prints it (Go's yaml.v2 after a JSON round trip): keys sorted, two-space
//! maps, sequences not indented under their key, and a string quoted only where YAML would read
//! it as something else (double quotes) or could not read it plain (single quotes).

use super::value::Value;

/// The YAML of a value, without a final newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    block(value, 0, &mut out);
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

/// Writes `value` as a block at `indent`, each line ending in a newline.
fn block(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Map(entries) if !entries.borrow().is_empty() => {
            for (key, item) in entries.borrow().iter() {
                out.push_str(&" ".repeat(indent));
                out.push_str(&scalar_string(key, indent));
                out.push(':');
                entry(item, indent, indent + 2, out);
            }
        }
        Value::List(items) if !items.is_empty() => {
            for item in items.iter() {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                list_item(item, indent, out);
            }
        }
        other => {
            out.push_str(&" ".repeat(indent));
            out.push_str(&scalar(other, indent));
            out.push('\n');
        }
    }
}

/// What follows `key:`: a scalar on the same line, or a block below (maps indented, lists not).
fn entry(value: &Value, indent: usize, nested: usize, out: &mut String) {
    match value {
        Value::Map(entries) if !entries.borrow().is_empty() => {
            out.push('\n');
            block(value, nested, out);
        }
        Value::List(items) if !items.is_empty() => {
            out.push('\n');
            block(value, indent, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, nested));
            out.push('\n');
        }
    }
}

/// What follows a list's `-`: its first line shares the dash's, the rest indent past it.
fn list_item(value: &Value, indent: usize, out: &mut String) {
    let inner = indent + 2;
    match value {
        Value::Map(entries) if !entries.borrow().is_empty() => {
            for (i, (key, item)) in entries.borrow().iter().enumerate() {
                if i == 0 {
                    out.push(' ');
                } else {
                    out.push_str(&" ".repeat(inner));
                }
                out.push_str(&scalar_string(key, inner));
                out.push(':');
                entry(item, inner, inner + 2, out);
            }
        }
        Value::List(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if i == 0 {
                    out.push(' ');
                } else {
                    out.push_str(&" ".repeat(inner));
                }
                out.push('-');
                list_item(item, inner, out);
            }
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, inner));
            out.push('\n');
        }
    }
}

fn scalar(value: &Value, indent: usize) -> String {
    match value {
        Value::Nil => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
        Value::Float(f) => format!("{f}"),
        Value::String(s) => scalar_string(s, indent),
        Value::Map(_) => "{}".into(),
        Value::List(_) => "[]".into(),
    }
}

/// A string as yaml.v2 writes it.
fn scalar_string(s: &str, indent: usize) -> String {
    if !reads_as_string(s) {
        return double_quoted(s);
    }
    if s.contains('\n') {
        let chomp = if s.ends_with('\n') { "" } else { "-" };
        let pad = " ".repeat(indent);
        let body: Vec<String> = s
            .trim_end_matches('\n')
            .split('\n')
            .map(|line| {
                if line.is_empty() {
                    String::new()
                } else {
                    format!("{pad}{line}")
                }
            })
            .collect();
        return format!("|{chomp}\n{}", body.join("\n"));
    }
    if plain_allowed(s) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Whether YAML 1.1 (as yaml.v2 resolves it) reads the plain text as a string.
fn reads_as_string(s: &str) -> bool {
    const OTHERS: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
        ".NaN", ".NAN", "<<",
    ];
    if OTHERS.contains(&s) {
        return false;
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let digits = unsigned.replace('_', "");
    let number = if let Some(hex) = digits.strip_prefix("0x") {
        !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())
    } else if let Some(binary) = digits.strip_prefix("0b") {
        !binary.is_empty() && binary.chars().all(|c| c == '0' || c == '1')
    } else {
        is_float(&digits) || is_sexagesimal(&digits)
    };
    !number
}

/// `[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?` or `\.[0-9]+...`.
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match fraction {
        None => !whole.is_empty() && digits(whole),
        Some(f) => digits(whole) && digits(f) && !(whole.is_empty() && f.is_empty()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

/// YAML 1.1's base-60 numbers (`1:20`), which yaml.v2 quotes.
fn is_sexagesimal(s: &str) -> bool {
    let mut parts = s.split(':');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    !rest.is_empty()
        && !first.is_empty()
        && first.chars().all(|c| c.is_ascii_digit())
        && rest
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 2 && p.chars().all(|c| c.is_ascii_digit()))
}

/// Whether a block-context plain scalar can hold the text (libyaml's analysis).
fn plain_allowed(s: &str) -> bool {
    if s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return false;
    }
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let next_blank = chars.get(i + 1).is_none_or(|n| *n == ' ' || *n == '\t');
        let previous_blank = i > 0 && (chars[i - 1] == ' ' || chars[i - 1] == '\t');
        if c.is_control() || c == '\u{feff}' {
            return false;
        }
        if i == 0 {
            match c {
                ',' | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => return false,
                '?' | ':' | '-' if next_blank => return false,
                _ => {}
            }
        } else {
            match c {
                ':' if next_blank => return false,
                '#' if previous_blank => return false,
                _ => {}
            }
        }
    }
    true
}

fn double_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(json: serde_json::Value) -> String {
        to_yaml(&Value::from_json(&json))
    }

    #[test]
    fn maps_sort_their_keys_and_lists_sit_under_their_key() {
        let text = yaml(serde_json::json!({
            "requests": {"memory": "64Mi", "cpu": "100m"},
            "tolerations": [{"key": "k", "operator": "Exists"}, {"effect": "NoSchedule"}],
            "empty": {}, "none": [], "port": 4433, "ratio": 0.5,
        }));
        assert_eq!(
            text,
            "empty: {}\nnone: []\nport: 4433\nratio: 0.5\nrequests:\n  cpu: 100m\n  memory: 64Mi\n\
             tolerations:\n- key: k\n  operator: Exists\n- effect: NoSchedule"
        );
    }

    #[test]
    fn strings_are_quoted_only_where_yaml_needs_it() {
        let text = yaml(serde_json::json!([
            "true",
            "1",
            "",
            "0x1F",
            "1.5e3",
            "1:20",
            "a: b",
            "- x",
            "x #y",
            "#x",
            "it's",
            "10.0.0.0/8",
            "0.1.0",
            "strait.dev/inject",
            "a#b",
            "x:y",
            "null"
        ]));
        assert_eq!(
            text,
            "- \"true\"\n- \"1\"\n- \"\"\n- \"0x1F\"\n- \"1.5e3\"\n- \"1:20\"\n- 'a: b'\n- '- x'\n\
             - 'x #y'\n- '#x'\n- it's\n- 10.0.0.0/8\n- 0.1.0\n- strait.dev/inject\n- a#b\n- x:y\n\
             - \"null\""
        );
    }

    #[test]
    fn multi_line_strings_are_literal_blocks() {
        assert_eq!(
            yaml(serde_json::json!({"a": "one\ntwo"})),
            "a: |-\n  one\n  two"
        );
    }
}
