//! Parsing and errors shared by every document kind: where a document came from, why it was
//! refused, and the typed reading of one document that names the offending field. The kinds
//! (`link`, `policy`) build on this; `resource` reads files and hands each document to its kind.

use std::fmt;

use serde::de::DeserializeOwned;

/// What applying an object did, as kubectl says it: services, Links and policies alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

impl Applied {
    /// The word `strait apply` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        }
    }
}

/// The API version of strait's own documents.
pub const API_VERSION: &str = "strait.dev/v1alpha1";

/// Where a document came from, for error messages.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentPlace {
    pub source: String,
    /// 1-based index of the document in its file.
    pub index: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for DocumentPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.index)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name})"),
            (Some(kind), None) => write!(f, " ({kind})"),
            _ => Ok(()),
        }
    }
}

/// Why a set of documents was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    #[error("{file}: not valid YAML: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: no document in it")]
    Empty { file: String },
    #[error("{place}: {field}: {message}")]
    Field {
        place: Box<DocumentPlace>,
        field: String,
        message: String,
    },
}

/// Reads a document as `T`, naming the field that does not fit.
pub(crate) fn typed<T: DeserializeOwned>(
    value: serde_json::Value,
    place: &DocumentPlace,
) -> Result<T, DocumentError> {
    serde_path_to_error::deserialize(value).map_err(|e| DocumentError::Field {
        place: Box::new(place.clone()),
        field: match e.path().to_string().as_str() {
            "." => "(document)".to_owned(),
            path => path.to_owned(),
        },
        message: e.inner().to_string(),
    })
}

/// The refusal of one field of a document.
pub(crate) fn field(
    place: &DocumentPlace,
    field: impl Into<String>,
    message: impl Into<String>,
) -> DocumentError {
    DocumentError::Field {
        place: Box::new(place.clone()),
        field: field.into(),
        message: message.into(),
    }
}
