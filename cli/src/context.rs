//! The CLI's side of operators' contexts: the file (`strait_gateway::api::contexts`, shared
//! with the Terraform provider) at its default place, and the calls the commands make.

use std::path::{Path, PathBuf};

use anyhow::Result;
use strait_federation::proto::operator::{
    LinkView, ListLinksRequest, ListPoliciesRequest, ListServicesRequest, PolicyView, ServiceView,
};
pub use strait_gateway::api::contexts::{Client, Context};
use strait_gateway::api::contexts::{ContextFile, default_path};

/// Where the contexts file is.
pub fn path() -> Result<PathBuf> {
    Ok(default_path()?)
}

/// Reads the contexts file (empty when there is none yet), with its path.
pub fn load() -> Result<(PathBuf, ContextFile)> {
    let path = path()?;
    let file = ContextFile::load(&path)?;
    Ok((path, file))
}

/// Removes the named contexts whose credentials lie under `dir` (a folder being deleted).
pub fn remove_under(names: &[&str], dir: &Path) -> Result<()> {
    let (path, mut file) = load()?;
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
    let (path, mut file) = load()?;
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
    let (path, file) = load()?;
    let context = file.select(name, &path)?;
    let client = context.connect().await?;
    Ok((context, client))
}
