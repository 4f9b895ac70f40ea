//! Operators' contexts, as kubectl has them: named clusters with the address of their gateway's
//! operator API and the operator credential to use, in one file (default `$STRAIT_CONFIG`, then
//! `~/.strait/config`). The CLI and the Terraform provider read the same file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strait_federation::identity::{ClusterName, TrustDomain};
use strait_federation::pki::{Credential, PkiError};
use strait_federation::proto::operator::operator_client::OperatorClient;
use strait_io::api::ApiError;
use strait_io::files::{read_file, write_file};

/// One context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    pub name: String,
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    /// The gateway's operator API (`host:port`).
    pub api_addr: String,
    /// The trust bundle (PEM) that the gateway's certificate chains to.
    pub bundle: PathBuf,
    /// The operator certificate chain (PEM).
    pub cert: PathBuf,
    /// The operator key (PEM).
    pub key: PathBuf,
}

/// The contexts file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// A connected operator API client.
pub type Client = OperatorClient<tonic::transport::Channel>;

/// Why a context could not be found or used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("neither STRAIT_CONFIG nor HOME is set")]
    NoHome,
    #[error(transparent)]
    File(#[from] PkiError),
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "no context selected: name one (`--context NAME` on the command line), or make one current with `strait context use NAME` (contexts are in {path}; `strait gateway init` or `strait context add` adds them)"
    )]
    NoneSelected { path: PathBuf },
    #[error("no context named {name:?} in {path} (known: {known})")]
    Unknown {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error("context {context}: {source}")]
    Credentials {
        context: String,
        #[source]
        source: PkiError,
    },
    #[error("context {context}: {source}")]
    Connect {
        context: String,
        #[source]
        source: ApiError,
    },
}

/// Where the contexts file is: `$STRAIT_CONFIG`, else `~/.strait/config`.
pub fn default_path() -> Result<PathBuf, ContextError> {
    if let Some(path) = std::env::var_os("STRAIT_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").ok_or(ContextError::NoHome)?;
    Ok(Path::new(&home).join(".strait").join("config"))
}

impl ContextFile {
    /// Reads a contexts file (empty when there is none yet).
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = read_file(path)?;
        serde_saphyr::from_str(&text).map_err(|e| ContextError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Writes it (atomically, readable by its owner only).
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let text = serde_saphyr::to_string(self).map_err(|e| ContextError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        write_file(path, &text, true)?;
        Ok(())
    }

    /// Adds or replaces a context and makes it current when none is.
    pub fn upsert(&mut self, context: Context) {
        if self.current_context.is_none() {
            self.current_context = Some(context.name.clone());
        }
        match self.contexts.iter_mut().find(|c| c.name == context.name) {
            Some(existing) => *existing = context,
            None => self.contexts.push(context),
        }
    }

    /// The context named, or the current one. `path` names the file in errors.
    pub fn select(&self, name: Option<&str>, path: &Path) -> Result<Context, ContextError> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Err(ContextError::NoneSelected {
                path: path.to_owned(),
            });
        };
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<_> = self.contexts.iter().map(|c| c.name.as_str()).collect();
                ContextError::Unknown {
                    name: name.to_owned(),
                    path: path.to_owned(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                }
            })
    }
}

impl Context {
    /// Connects to the operator API of the context's gateway (within 30 s); errors name the
    /// context, the cluster and the address.
    pub async fn connect(&self) -> Result<Client, ContextError> {
        let credential = || -> Result<_, PkiError> {
            let bundle = strait_io::pki::read_bundle(&self.bundle, self.trust_domain.clone())?;
            let credential = Credential {
                chain_pem: read_file(&self.cert)?,
                key_pem: read_file(&self.key)?,
            };
            Ok((bundle, credential))
        };
        let (bundle, credential) = credential().map_err(|source| ContextError::Credentials {
            context: self.name.clone(),
            source,
        })?;
        super::connect(&self.api_addr, &self.cluster, &bundle, &credential)
            .await
            .map_err(|source| ContextError::Connect {
                context: self.name.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(name: &str) -> Context {
        Context {
            name: name.into(),
            cluster: ClusterName::new(name).unwrap(),
            trust_domain: TrustDomain::new("example.mesh").unwrap(),
            api_addr: "127.0.0.1:1".into(),
            bundle: "b".into(),
            cert: "c".into(),
            key: "k".into(),
        }
    }

    #[test]
    fn the_first_context_becomes_current_and_others_are_selected_by_name() {
        let mut file = ContextFile::default();
        file.upsert(context("west"));
        file.upsert(context("east"));
        let path = Path::new("config");
        assert_eq!(file.select(None, path).unwrap().name, "west");
        assert_eq!(file.select(Some("east"), path).unwrap().name, "east");
        let err = file.select(Some("north"), path).unwrap_err().to_string();
        assert!(err.contains("north") && err.contains("west, east"), "{err}");
        let err = ContextFile::default()
            .select(None, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no context selected"), "{err}");
    }

    #[test]
    fn the_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        assert_eq!(ContextFile::load(&path).unwrap(), ContextFile::default());
        let mut file = ContextFile::default();
        file.upsert(context("west"));
        file.save(&path).unwrap();
        assert_eq!(ContextFile::load(&path).unwrap(), file);
    }

    #[test]
    fn a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "contexts: [{nam: x}]").unwrap();
        let err = ContextFile::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
    }
}
