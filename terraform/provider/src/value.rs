//! Values of Terraform's type system, as far as the provider needs them: typed, with null and
//! "known after apply", and their two encodings (MessagePack, which Terraform sends, and JSON,
//! which it stores state in). Sans-IO.

use std::collections::BTreeMap;

/// A Terraform type.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    String,
    Number,
    Bool,
    List(Box<Type>),
    /// An object: its attributes, in the order the schema lists them.
    Object(Vec<(String, Type)>),
}

impl Type {
    /// The type in Terraform's JSON notation (`"string"`, `["list","string"]`, ...).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Type::String => json!("string"),
            Type::Number => json!("number"),
            Type::Bool => json!("bool"),
            Type::List(element) => json!(["list", element.to_json()]),
            Type::Object(attributes) => {
                let attributes: serde_json::Map<_, _> = attributes
                    .iter()
                    .map(|(name, ty)| (name.clone(), ty.to_json()))
                    .collect();
                json!(["object", attributes])
            }
        }
    }
}

/// A value: null, not yet known, or known (with parts that may still be null or unknown).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// Known only after apply.
    Unknown,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<Value>),
    /// An object's attributes.
    Map(BTreeMap<String, Value>),
}

/// Why bytes from Terraform are not a value of the expected type.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValueError {
    #[error("not MessagePack: {0}")]
    MessagePack(String),
    #[error("not JSON: {0}")]
    Json(String),
    #[error("at {path}: expected {expected}")]
    Mismatch { path: String, expected: String },
}

/// MessagePack's extension type that Terraform uses for a value not yet known.
const UNKNOWN_EXTENSION: i8 = 0;

impl Value {
    /// A string value.
    pub fn string(text: impl Into<String>) -> Value {
        Value::String(text.into())
    }

    /// An object from its attributes.
    pub fn object<I, K>(attributes: I) -> Value
    where
        I: IntoIterator<Item = (K, Value)>,
        K: Into<String>,
    {
        Value::Map(attributes.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// An attribute of an object (null when absent, or when this is not an object).
    pub fn get(&self, name: &str) -> &Value {
        match self {
            Value::Map(attributes) => attributes.get(name).unwrap_or(&Value::Null),
            _ => &Value::Null,
        }
    }

    /// Sets an attribute of an object (no effect on anything else).
    pub fn set(&mut self, name: &str, value: Value) {
        if let Value::Map(attributes) = self {
            attributes.insert(name.to_owned(), value);
        }
    }

    /// The text of a known string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Whether the value and everything in it is known.
    pub fn is_known(&self) -> bool {
        match self {
            Value::Unknown => false,
            Value::List(items) => items.iter().all(Value::is_known),
            Value::Map(items) => items.values().all(Value::is_known),
            _ => true,
        }
    }

    /// Decodes MessagePack as a value of `ty`.
    pub fn from_msgpack(mut bytes: &[u8], ty: &Type) -> Result<Value, ValueError> {
        let raw = rmpv::decode::read_value(&mut bytes)
            .map_err(|e| ValueError::MessagePack(e.to_string()))?;
        from_raw(&raw, ty, &mut String::new())
    }

    /// Encodes the value, as `ty`, in MessagePack: every attribute of an object is written,
    /// null where the value has none.
    pub fn to_msgpack(&self, ty: &Type) -> Vec<u8> {
        let mut bytes = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut bytes, &to_raw(self, ty));
        bytes
    }

    /// Reads JSON (stored state) as a value of `ty`: attributes the type lacks are dropped
    /// (a state written by an older provider), missing ones are null.
    pub fn from_json(text: &[u8], ty: &Type) -> Result<Value, ValueError> {
        let json: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| ValueError::Json(e.to_string()))?;
        from_json_value(&json, ty, &mut String::new())
    }
}

fn mismatch(path: &str, expected: &str) -> ValueError {
    ValueError::Mismatch {
        path: if path.is_empty() {
            "(top)".into()
        } else {
            path.to_owned()
        },
        expected: expected.to_owned(),
    }
}

fn from_raw(raw: &rmpv::Value, ty: &Type, path: &mut String) -> Result<Value, ValueError> {
    use rmpv::Value as Raw;
    match (raw, ty) {
        (Raw::Nil, _) => Ok(Value::Null),
        (Raw::Ext(_, _), _) => Ok(Value::Unknown),
        (Raw::String(text), Type::String) => text
            .as_str()
            .map(|t| Value::String(t.to_owned()))
            .ok_or_else(|| mismatch(path, "UTF-8 text")),
        (Raw::Boolean(b), Type::Bool) => Ok(Value::Bool(*b)),
        (Raw::Integer(n), Type::Number) => n
            .as_f64()
            .map(Value::Number)
            .ok_or_else(|| mismatch(path, "a number")),
        (Raw::F32(n), Type::Number) => Ok(Value::Number(f64::from(*n))),
        (Raw::F64(n), Type::Number) => Ok(Value::Number(*n)),
        // Numbers too large for MessagePack's own types travel as text.
        (Raw::String(text), Type::Number) => text
            .as_str()
            .and_then(|t| t.parse().ok())
            .map(Value::Number)
            .ok_or_else(|| mismatch(path, "a number")),
        (Raw::Array(items), Type::List(element)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| nested(path, &format!("[{i}]"), |p| from_raw(item, element, p)))
            .collect::<Result<_, _>>()
            .map(Value::List),
        (Raw::Map(entries), Type::Object(attributes)) => {
            let mut map = BTreeMap::new();
            for (key, item) in entries {
                let key = key.as_str().ok_or_else(|| mismatch(path, "text keys"))?;
                let Some((_, attribute)) = attributes.iter().find(|(name, _)| name == key) else {
                    return Err(mismatch(path, &format!("no attribute {key:?}")));
                };
                let value = nested(path, &format!(".{key}"), |p| from_raw(item, attribute, p))?;
                map.insert(key.to_owned(), value);
            }
            for (name, _) in attributes {
                map.entry(name.clone()).or_insert(Value::Null);
            }
            Ok(Value::Map(map))
        }
        (_, ty) => Err(mismatch(path, &ty.to_json().to_string())),
    }
}

/// Runs `read` with `step` added to the path, for errors that say where.
fn nested<T>(
    path: &mut String,
    step: &str,
    read: impl FnOnce(&mut String) -> Result<T, ValueError>,
) -> Result<T, ValueError> {
    let length = path.len();
    path.push_str(step);
    let result = read(path);
    path.truncate(length);
    result
}

fn to_raw(value: &Value, ty: &Type) -> rmpv::Value {
    use rmpv::Value as Raw;
    match (value, ty) {
        (Value::Null, _) => Raw::Nil,
        (Value::Unknown, _) => Raw::Ext(UNKNOWN_EXTENSION, vec![0]),
        (Value::Bool(b), _) => Raw::Boolean(*b),
        (Value::Number(n), _) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Raw::from(*n as i64)
            } else {
                Raw::F64(*n)
            }
        }
        (Value::String(text), _) => Raw::from(text.as_str()),
        (Value::List(items), Type::List(element)) => {
            Raw::Array(items.iter().map(|item| to_raw(item, element)).collect())
        }
        (Value::Map(items), Type::Object(attributes)) => Raw::Map(
            attributes
                .iter()
                .map(|(name, ty)| {
                    let item = items.get(name).unwrap_or(&Value::Null);
                    (Raw::from(name.as_str()), to_raw(item, ty))
                })
                .collect(),
        ),
        // A value whose shape the type does not have is a bug of this provider; null keeps
        // Terraform's own checks in charge of saying so.
        _ => Raw::Nil,
    }
}

fn from_json_value(
    json: &serde_json::Value,
    ty: &Type,
    path: &mut String,
) -> Result<Value, ValueError> {
    use serde_json::Value as Json;
    match (json, ty) {
        (Json::Null, _) => Ok(Value::Null),
        (Json::String(text), Type::String) => Ok(Value::String(text.clone())),
        (Json::Bool(b), Type::Bool) => Ok(Value::Bool(*b)),
        (Json::Number(n), Type::Number) => n
            .as_f64()
            .map(Value::Number)
            .ok_or_else(|| mismatch(path, "a number")),
        (Json::Array(items), Type::List(element)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                nested(path, &format!("[{i}]"), |p| {
                    from_json_value(item, element, p)
                })
            })
            .collect::<Result<_, _>>()
            .map(Value::List),
        (Json::Object(entries), Type::Object(attributes)) => {
            let mut map = BTreeMap::new();
            for (name, attribute) in attributes {
                let value = match entries.get(name) {
                    Some(item) => nested(path, &format!(".{name}"), |p| {
                        from_json_value(item, attribute, p)
                    })?,
                    None => Value::Null,
                };
                map.insert(name.clone(), value);
            }
            Ok(Value::Map(map))
        }
        (_, ty) => Err(mismatch(path, &ty.to_json().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_type() -> Type {
        Type::Object(vec![
            ("dialer".into(), Type::String),
            ("ports".into(), Type::List(Box::new(Type::Number))),
            ("ready".into(), Type::Bool),
            ("id".into(), Type::String),
        ])
    }

    #[test]
    fn a_value_round_trips_through_messagepack_with_nulls_and_unknowns() {
        let ty = link_type();
        let value = Value::object([
            ("dialer", Value::string("east")),
            (
                "ports",
                Value::List(vec![Value::Number(4433.0), Value::Number(0.5)]),
            ),
            ("ready", Value::Null),
            ("id", Value::Unknown),
        ]);
        let again = Value::from_msgpack(&value.to_msgpack(&ty), &ty).unwrap();
        assert_eq!(again, value);
        assert!(!again.is_known());
        assert_eq!(again.get("dialer").as_str(), Some("east"));
    }

    #[test]
    fn an_object_is_written_whole_even_when_attributes_are_missing() {
        let ty = link_type();
        let value = Value::object([("dialer", Value::string("east"))]);
        let again = Value::from_msgpack(&value.to_msgpack(&ty), &ty).unwrap();
        assert_eq!(again.get("id"), &Value::Null);
        match again {
            Value::Map(attributes) => assert_eq!(attributes.len(), 4),
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn terraforms_encoding_of_unknown_and_large_numbers_is_read() {
        // fixext1 of extension type 0 is how Terraform writes "known after apply".
        assert_eq!(
            Value::from_msgpack(&[0xd4, 0, 0], &Type::String),
            Ok(Value::Unknown)
        );
        // A number too large for MessagePack travels as text.
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &rmpv::Value::from("1e300")).unwrap();
        assert_eq!(
            Value::from_msgpack(&bytes, &Type::Number),
            Ok(Value::Number(1e300))
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_with_its_path() {
        let ty = link_type();
        let value = Value::object([("ports", Value::List(vec![Value::string("x")]))]);
        // Encode as if ports were strings, then read with the real type.
        let wrong = Type::Object(vec![("ports".into(), Type::List(Box::new(Type::String)))]);
        let err = Value::from_msgpack(&value.to_msgpack(&wrong), &ty).unwrap_err();
        assert_eq!(
            err,
            ValueError::Mismatch {
                path: ".ports[0]".into(),
                expected: "a number".into()
            }
        );
        assert!(matches!(
            Value::from_msgpack(&[0x92, 0xa1], &ty),
            Err(ValueError::MessagePack(_))
        ));
    }

    #[test]
    fn stored_json_state_drops_attributes_the_schema_no_longer_has() {
        let ty = link_type();
        let value = Value::from_json(br#"{"dialer":"east","retired":1,"ports":[1]}"#, &ty).unwrap();
        assert_eq!(value.get("retired"), &Value::Null);
        assert_eq!(value.get("ports"), &Value::List(vec![Value::Number(1.0)]));
        assert_eq!(value.get("ready"), &Value::Null);
    }

    #[test]
    fn types_are_written_in_terraforms_notation() {
        let ty = Type::List(Box::new(Type::Object(vec![("name".into(), Type::String)])));
        assert_eq!(
            ty.to_json().to_string(),
            r#"["list",["object",{"name":"string"}]]"#
        );
    }
}
