//! CLI contexts, as kubectl has them: named clusters with the address of their gateway's
//! operator API and the operator credential to use, in the file named by `$STRAIT_CONFIG`
//! (default `~/.strait/config`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use strait_federation::identity::{ClusterName, TrustDomain};
use strait_federation::pki::Credential;
use strait_federation::proto::operator::operator_client::OperatorClient;
use strait_federation::proto::operator::{
    LinkView, ListLinksRequest, ListPoliciesRequest, ListServicesRequest, PolicyView, ServiceView,
};
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

/// Where the contexts file is.
pub fn path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("STRAIT_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("neither STRAIT_CONFIG nor HOME is set"))?;
    Ok(Path::new(&home).join(".strait").join("config"))
}

impl ContextFile {
    /// Reads the contexts file (empty when there is none yet).
    pub fn load() -> Result<(PathBuf, Self)> {
        let path = path()?;
        if !path.exists() {
            return Ok((path, Self::default()));
        }
        let text = read_file(&path)?;
        let file = serde_saphyr::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok((path, file))
    }

    /// Writes it back (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_saphyr::to_string(self).map_err(|e| anyhow!("{e}"))?;
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

    /// The context named, or the current one.
    pub fn select(&self, name: Option<&str>, path: &Path) -> Result<Context> {
        let name = match name.or(self.current_context.as_deref()) {
            Some(name) => name,
            None => bail!(
                "no context selected: pass --context NAME (contexts are in {}; `strait gateway init` or `strait context add` adds them)",
                path.display()
            ),
        };
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<_> = self.contexts.iter().map(|c| c.name.as_str()).collect();
                anyhow!(
                    "no context named {name:?} in {} (known: {})",
                    path.display(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }
}

/// Removes the named contexts whose credentials lie under `dir` (a folder being deleted).
pub fn remove_under(names: &[&str], dir: &Path) -> Result<()> {
    let (path, mut file) = ContextFile::load()?;
    let before = file.contexts.len();
    file.contexts
        .retain(|c| !(names.contains(&c.name.as_str()) && c.cert.starts_with(dir)));
    if file.contexts.len() != before {
        if file
            .current_context
            .as_ref()
            .is_some_and(|current| !file.contexts.iter().any(|c| &c.name == current))
        {
            file.current_context = file.contexts.first().map(|c| c.name.clone());
        }
        file.save(&path)?;
    }
    Ok(())
}

/// Adds a context to the contexts file.
pub fn add(context: Context) -> Result<PathBuf> {
    let (path, mut file) = ContextFile::load()?;
    file.upsert(context);
    file.save(&path)?;
    Ok(path)
}

/// The services a gateway knows (its own and imported).
pub async fn list_services(client: &mut Client) -> Result<Vec<ServiceView>> {
    Ok(client
        .list_services(ListServicesRequest {})
        .await
        .map_err(crate::status)?
        .into_inner()
        .services)
}

/// The mesh-wide policies a gateway holds.
pub async fn list_policies(client: &mut Client) -> Result<Vec<PolicyView>> {
    Ok(client
        .list_policies(ListPoliciesRequest {})
        .await
        .map_err(crate::status)?
        .into_inner()
        .policies)
}

/// A gateway's peerings.
pub async fn list_links(client: &mut Client) -> Result<Vec<LinkView>> {
    Ok(client
        .list_links(ListLinksRequest {})
        .await
        .map_err(crate::status)?
        .into_inner()
        .links)
}

/// Connects to the operator API of a context's gateway.
pub async fn connect(name: Option<&str>) -> Result<(Context, Client)> {
    let (path, file) = ContextFile::load()?;
    let context = file.select(name, &path)?;
    let bundle = strait_io::pki::read_bundle(&context.bundle, context.trust_domain.clone())?;
    let credential = Credential {
        chain_pem: read_file(&context.cert)?,
        key_pem: read_file(&context.key)?,
    };
    let client =
        strait_gateway::api::connect(&context.api_addr, &context.cluster, &bundle, &credential)
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("context {}", context.name))?;
    Ok((context, client))
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
    }

    #[test]
    fn the_file_round_trips() {
        let mut file = ContextFile::default();
        file.upsert(context("west"));
        let text = serde_saphyr::to_string(&file).unwrap();
        let again: ContextFile = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(again, file);
    }
}
