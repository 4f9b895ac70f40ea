//! What the provider tells Terraform went wrong: a summary, the detail, and the attribute it
//! is about.

use crate::proto;

/// One error for Terraform to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub summary: String,
    pub detail: String,
    /// The top-level attribute it is about, if any.
    pub attribute: Option<&'static str>,
}

impl Diagnostic {
    /// An error.
    pub fn error(summary: impl Into<String>, detail: impl Into<String>) -> Diagnostic {
        Diagnostic {
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
        proto::Diagnostic {
            severity: proto::diagnostic::Severity::Error as i32,
            summary: self.summary.clone(),
            detail: self.detail.clone(),
            attribute: self.attribute.map(attribute_path),
        }
    }
}

/// The path of a top-level attribute, as Terraform reads it.
pub fn attribute_path(name: &str) -> proto::AttributePath {
    proto::AttributePath {
        steps: vec![proto::attribute_path::Step {
            selector: Some(proto::attribute_path::step::Selector::AttributeName(
                name.to_owned(),
            )),
        }],
    }
}

/// Any error as a diagnostic with this summary, its causes joined into the detail.
pub fn from_error(summary: &str, error: &dyn std::error::Error) -> Diagnostic {
    Diagnostic::error(summary, strait_io::api::causes(error))
}
