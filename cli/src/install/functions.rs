//! The functions strait's chart calls: Go's template builtins and the Sprig and Helm functions
//! it uses, with the same results (`lookup` finds nothing, as under `helm template`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;

use super::value::Value;
use super::yaml::to_yaml;

/// Calls the function `name`; an error is the message the template's failure carries.
pub fn call(name: &str, args: Vec<Value>) -> Result<Value, String> {
    let text = |i: usize| args.get(i).map(Value::print).unwrap_or_default();
    let count = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("{name} takes {n} arguments, not {}", args.len()))
        }
    };
    Ok(match name {
        "toYaml" => {
            count(1)?;
            Value::String(to_yaml(&args[0]))
        }
        "toJson" => {
            count(1)?;
            Value::String(to_json(&args[0]).to_string())
        }
        "nindent" | "indent" => {
            count(2)?;
            let width = integer(&args[0])?;
            let pad = " ".repeat(usize::try_from(width).unwrap_or(0));
            let indented = format!("{pad}{}", text(1).replace('\n', &format!("\n{pad}")));
            Value::String(if name == "nindent" {
                format!("\n{indented}")
            } else {
                indented
            })
        }
        "quote" => Value::String(
            args.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| go_quote(&v.print()))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "squote" => Value::String(
            args.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| format!("'{}'", v.print()))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "default" => match args.as_slice() {
            [fallback] => fallback.clone(),
            [fallback, given] => {
                if given.truthy() {
                    given.clone()
                } else {
                    fallback.clone()
                }
            }
            _ => return Err("default takes a default and a value".into()),
        },
        "required" => {
            count(2)?;
            match &args[1] {
                Value::Nil => return Err(text(0)),
                Value::String(s) if s.is_empty() => return Err(text(0)),
                given => given.clone(),
            }
        }
        "fail" => return Err(text(0)),
        "printf" => {
            let (format, rest) = args.split_first().ok_or("printf needs a format")?;
            Value::String(printf(&format.print(), rest)?)
        }
        "print" => Value::String(sprint(&args)),
        "eq" | "ne" => {
            let (first, rest) = args.split_first().ok_or("eq needs two values")?;
            let equal = rest.iter().any(|other| same(first, other));
            Value::Bool(if name == "eq" { equal } else { !equal })
        }
        "not" => {
            count(1)?;
            Value::Bool(!args[0].truthy())
        }
        "and" => args
            .iter()
            .find(|v| !v.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(Value::Nil),
        "or" => args
            .iter()
            .find(|v| v.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(Value::Nil),
        "empty" => {
            count(1)?;
            Value::Bool(!args[0].truthy())
        }
        "list" => Value::List(Rc::new(args)),
        "dict" => {
            let mut entries = BTreeMap::new();
            for pair in args.chunks(2) {
                let value = pair.get(1).cloned().unwrap_or(Value::String(String::new()));
                entries.insert(pair[0].print(), value);
            }
            Value::Map(Rc::new(RefCell::new(entries)))
        }
        "set" => {
            count(3)?;
            let Value::Map(entries) = &args[0] else {
                return Err("set takes a map".into());
            };
            entries.borrow_mut().insert(text(1), args[2].clone());
            args[0].clone()
        }
        "index" => {
            let (first, keys) = args.split_first().ok_or("index needs a value")?;
            let mut value = first.clone();
            for key in keys {
                value = match (&value, key) {
                    (Value::List(items), key) => {
                        let i = integer(key)?;
                        usize::try_from(i)
                            .ok()
                            .and_then(|i| items.get(i).cloned())
                            .ok_or_else(|| format!("index {i} out of range"))?
                    }
                    (map, key) => map.get(&key.print()),
                };
            }
            value
        }
        "has" => {
            count(2)?;
            let Value::List(items) = &args[1] else {
                return Ok(Value::Bool(false));
            };
            Value::Bool(items.iter().any(|item| same(item, &args[0])))
        }
        "replace" => {
            count(3)?;
            Value::String(text(2).replace(&text(0), &text(1)))
        }
        "lower" => Value::String(text(0).to_lowercase()),
        "upper" => Value::String(text(0).to_uppercase()),
        "trim" => Value::String(text(0).trim().to_owned()),
        "trimSuffix" => {
            count(2)?;
            let whole = text(1);
            Value::String(whole.strip_suffix(&text(0)).unwrap_or(&whole).to_owned())
        }
        "contains" => {
            count(2)?;
            Value::Bool(text(1).contains(&text(0)))
        }
        "toString" => Value::String(text(0)),
        "b64enc" => Value::String(base64::engine::general_purpose::STANDARD.encode(text(0))),
        "b64dec" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text(0))
                .map_err(|e| format!("b64dec: {e}"))?;
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        }
        "sha256sum" => {
            let digest = ring::digest::digest(&ring::digest::SHA256, text(0).as_bytes());
            Value::String(hex::encode(digest.as_ref()))
        }
        "regexMatch" => {
            count(2)?;
            let pattern = regex::Regex::new(&text(0)).map_err(|e| format!("regexMatch: {e}"))?;
            Value::Bool(pattern.is_match(&text(1)))
        }
        // Offline, as under `helm template`: the cluster holds nothing.
        "lookup" => Value::map([]),
        "genCA" => {
            count(2)?;
            certificates::authority(&text(0), days(&args[1])?)?
        }
        "genSignedCert" => {
            count(5)?;
            let names = match &args[2] {
                Value::List(items) => items.iter().map(Value::print).collect(),
                _ => Vec::new(),
            };
            certificates::signed(&text(0), names, days(&args[3])?, &args[4])?
        }
        other => return Err(format!("function {other:?} not defined")),
    })
}

fn integer(value: &Value) -> Result<i64, String> {
    match value {
        Value::Integer(n) => Ok(*n),
        Value::Float(f) if f.fract() == 0.0 => Ok(*f as i64),
        Value::String(s) => s.parse().map_err(|_| format!("{s:?} is not a number")),
        other => Err(format!("{} is not a number", other.print())),
    }
}

fn days(value: &Value) -> Result<Duration, String> {
    let days = u64::try_from(integer(value)?).map_err(|_| "days must be positive".to_owned())?;
    Ok(Duration::from_secs(days * 24 * 3600))
}

/// Go's `eq`: numbers by value, everything else by its text and kind.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(_) | Value::Float(_), Value::Integer(_) | Value::Float(_)) => {
            as_f64(a) == as_f64(b)
        }
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Nil, Value::Nil) => true,
        _ => false,
    }
}

fn as_f64(value: &Value) -> f64 {
    match value {
        Value::Integer(n) => *n as f64,
        Value::Float(f) => *f,
        _ => f64::NAN,
    }
}

/// Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `fmt.Sprint`: a space between two operands when neither is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        let is_string = |v: &Value| matches!(v, Value::String(_));
        if i > 0 && !is_string(arg) && !is_string(&args[i - 1]) {
            out.push(' ');
        }
        out.push_str(&arg.print());
    }
    out
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%s`, `%v`, `%d`, `%q` and `%%`.
fn printf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let verb = chars.next().ok_or("printf: a format ends in %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        match verb {
            's' | 'v' => out.push_str(&arg.print()),
            'd' => out.push_str(&integer(arg)?.to_string()),
            'q' => out.push_str(&go_quote(&arg.print())),
            other => return Err(format!("printf: the verb %{other} is not supported")),
        }
    }
    Ok(out)
}

fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Integer(n) => (*n).into(),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => (*f as i64).into(),
        Value::Float(f) => (*f).into(),
        Value::String(s) => s.clone().into(),
        Value::List(items) => items.iter().map(to_json).collect(),
        Value::Map(entries) => entries
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// `genCA` and `genSignedCert`: a CA and a serving certificate it signs, as maps of PEM
/// (`Cert`, `Key`) as Helm gives them (ECDSA P-256 keys here, where Helm makes RSA ones).
mod certificates {
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use time::OffsetDateTime;

    use super::Value;

    fn params(
        name: &str,
        names: Vec<String>,
        lifetime: Duration,
    ) -> Result<CertificateParams, String> {
        let mut params = CertificateParams::new(names).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + lifetime;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        Ok(params)
    }

    fn pair(cert: &rcgen::Certificate, key: &KeyPair) -> Value {
        Value::map([
            ("Cert".to_owned(), Value::string(cert.pem())),
            ("Key".to_owned(), Value::string(key.serialize_pem())),
        ])
    }

    /// A self-signed CA named `name`.
    pub fn authority(name: &str, lifetime: Duration) -> Result<Value, String> {
        let mut params = params(name, Vec::new(), lifetime)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(pair(&cert, &key))
    }

    /// A serving certificate for `names`, signed by the CA map `authority` (from `genCA`).
    pub fn signed(
        name: &str,
        names: Vec<String>,
        lifetime: Duration,
        authority: &Value,
    ) -> Result<Value, String> {
        let mut params = params(name, names, lifetime)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let ca_cert = authority.get("Cert").print();
        let ca_key = KeyPair::from_pem(&authority.get("Key").print())
            .map_err(|e| format!("genSignedCert: the CA's key: {e}"))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)
            .map_err(|e| format!("genSignedCert: the CA's certificate: {e}"))?;
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        Ok(pair(&cert, &key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::string(text)
    }

    #[test]
    fn text_functions_give_what_sprig_gives() {
        let call = |name: &str, args: Vec<Value>| call(name, args).unwrap().print();
        assert_eq!(
            call("nindent", vec![Value::Integer(2), s("a\nb")]),
            "\n  a\n  b"
        );
        assert_eq!(
            call("quote", vec![s("say \"hi\"\n")]),
            "\"say \\\"hi\\\"\\n\""
        );
        assert_eq!(
            call(
                "printf",
                vec![s("%s is %q (%d)"), s("x"), s("y"), Value::Float(3.0)]
            ),
            "x is \"y\" (3)"
        );
        assert_eq!(call("print", vec![s("a"), s("/b")]), "a/b");
        assert_eq!(call("default", vec![s("d"), s("")]), "d");
        assert_eq!(call("default", vec![s("d"), s("v")]), "v");
        assert_eq!(call("replace", vec![s("+"), s("_"), s("1+2+3")]), "1_2_3");
        assert_eq!(
            call("sha256sum", vec![s("abc")]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            call("b64dec", vec![s(&call("b64enc", vec![s("ok")]))]),
            "ok"
        );
        assert_eq!(call("regexMatch", vec![s("^[a-z]+$"), s("west")]), "true");
        assert_eq!(
            call("has", vec![s("Fail"), call_list(&["Fail", "Ignore"])]),
            "true"
        );
        assert_eq!(
            call("eq", vec![Value::Float(2.0), Value::Integer(2)]),
            "true"
        );
    }

    fn call_list(items: &[&str]) -> Value {
        Value::List(Rc::new(items.iter().map(|i| s(i)).collect()))
    }

    #[test]
    fn required_and_fail_carry_their_message() {
        assert_eq!(
            call("required", vec![s("need x"), Value::Nil])
                .err()
                .unwrap(),
            "need x"
        );
        assert_eq!(call("fail", vec![s("no")]).err().unwrap(), "no");
        assert!(call("nosuch", vec![]).err().unwrap().contains("nosuch"));
    }

    #[test]
    fn a_signed_certificate_chains_to_the_ca_made_with_it() {
        let ca = call("genCA", vec![s("test-ca"), Value::Integer(10)]).unwrap();
        let leaf = call(
            "genSignedCert",
            vec![
                s("svc"),
                Value::Nil,
                call_list(&["svc.ns.svc"]),
                Value::Integer(10),
                ca.clone(),
            ],
        )
        .unwrap();
        let pem = leaf.get("Cert").print();
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = der.parse_x509().unwrap();
        let (_, ca_der) =
            x509_parser::pem::parse_x509_pem(ca.get("Cert").print().as_bytes()).unwrap();
        let ca_cert = ca_der.parse_x509().unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }
}
