//! The values templates work on: what YAML values, Helm's objects and functions give, printed
//! and judged true as Go does. Maps are shared by reference, as Go's are.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;

/// A value in a template: what YAML values, Helm's objects and functions give.
#[derive(Debug, Clone)]
pub enum Value {
    Nil,
    Bool(bool),
    Integer(i64),
    /// Numbers of values files are floats, as Helm reads them through JSON.
    Float(f64),
    String(String),
    List(Rc<Vec<Value>>),
    Map(Rc<RefCell<BTreeMap<String, Value>>>),
}

impl Value {
    /// A map of these entries.
    pub fn map(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
        Value::Map(Rc::new(RefCell::new(entries.into_iter().collect())))
    }

    /// A string value.
    pub fn string(text: impl Into<String>) -> Value {
        Value::String(text.into())
    }

    /// Go's truth: false, 0, nil and empty strings, lists and maps are false.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Integer(n) => *n != 0,
            Value::Float(f) => *f != 0.0,
            Value::String(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.borrow().is_empty(),
        }
    }

    /// A map's entry (nil for anything else or a missing key).
    pub fn get(&self, key: &str) -> Value {
        match self {
            Value::Map(m) => m.borrow().get(key).cloned().unwrap_or(Value::Nil),
            _ => Value::Nil,
        }
    }

    /// The value as `{{ }}` prints it (Go's `%v`; nil prints nothing, as in Helm).
    pub fn print(&self) -> String {
        let mut out = String::new();
        self.print_into(&mut out);
        out
    }

    fn print_into(&self, out: &mut String) {
        match self {
            Value::Nil => {}
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Integer(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Float(f) => out.push_str(&go_float(*f)),
            Value::String(s) => out.push_str(s),
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    item.print_into(out);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                out.push_str("map[");
                for (i, (key, value)) in entries.borrow().iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(key);
                    out.push(':');
                    value.print_into(out);
                }
                out.push(']');
            }
        }
    }

    /// The value read from YAML or JSON (numbers with a fraction or from a file are floats,
    /// as Helm's JSON decoding makes them).
    pub fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(items) => {
                Value::List(Rc::new(items.iter().map(Value::from_json).collect()))
            }
            serde_json::Value::Object(entries) => Value::map(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v))),
            ),
        }
    }
}

/// A float as Go's `%v` prints it: the shortest digits, with an exponent from 1e6 up and below
/// 1e-4 (why Helm prints a values file's 1000000 as 1e+06).
pub fn go_float(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    let exponent = f.abs().log10().floor() as i32;
    if (-4..6).contains(&exponent) {
        format!("{f}")
    } else {
        let text = format!("{f:e}");
        match text.split_once('e') {
            Some((mantissa, exp)) => {
                let (sign, digits) = match exp.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', exp),
                };
                format!("{mantissa}e{sign}{digits:0>2}")
            }
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_prints_them() {
        assert_eq!(go_float(4433.0), "4433");
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(1.5e-7), "1.5e-07");
    }
}
