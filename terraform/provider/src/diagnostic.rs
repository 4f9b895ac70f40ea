//! What the provider tells Terraform went wrong: a summary, the detail, and the attribute it
//! is about.

use crate::proto;

/// One error (or warning) for Terraform to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub warning: bool,
    pub summary: String,
    pub detail: String,
    /// The top-level attribute it is about, if any.
    pub attribute: Option<&'static str>,
}

impl Diagnostic {
    /// An error.
    pub fn error(summary: impl Into<String>, detail: impl Into<String>) -> Diagnostic {
        Diagnostic {
            warning: false,
            summary: summary.into(),
            detail: detail.into(),
            attribute: None,
        }
    }

    /// The same, about one attribute.
    pub fn at(mut self, attribute: &'static str) -> Diagnostic {
        self.attribute = Some(attribute);
        self
    }

    /// As Terraform reads it.
    pub fn to_proto(&self) -> proto::Diagnostic {
        use proto::diagnostic::Severity;
        proto::Diagnostic {
            severity: if self.warning {
                Severity::Warning
            } else {
                Severity::Error
            } as i32,
            summary: self.summary.clone(),
            detail: self.detail.clone(),
            attribute: self.attribute.map(|name| proto::AttributePath {
                steps: vec![proto::attribute_path::Step {
                    selector: Some(proto::attribute_path::step::Selector::AttributeName(
                        name.to_owned(),
                    )),
                }],
            }),
        }
    }
}

/// Any error as a diagnostic with this summary, its causes joined into the detail.
pub fn from_error(summary: &str, error: &dyn std::error::Error) -> Diagnostic {
    let mut detail = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !detail.contains(&text) {
            detail = format!("{detail}: {text}");
        }
        source = inner.source();
    }
    Diagnostic::error(summary, detail)
}
