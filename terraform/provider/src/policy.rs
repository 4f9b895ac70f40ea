//! `strait_policy`: one mesh-wide policy document, checked at plan time by the same parser as
//! `strait apply`, applied through one cluster's gateway (which replicates it to every linked
//! cluster). Read compares the document a gateway holds with the configured one, so a change
//! made elsewhere (another cluster, kubectl, `strait apply`) shows as a change to make.

use strait_federation::policy::PolicyKey;
use strait_federation::resource::{Resource, parse_documents};

use crate::diagnostic::{Diagnostic, from_error};
use crate::gateways::Gateways;
use crate::value::Value;

/// The source name errors give a policy document.
const SOURCE: &str = "yaml";

/// A checked policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    pub key: PolicyKey,
    pub document: serde_json::Value,
}

impl PolicyDocument {
    /// Parses `yaml` as exactly one policy document; errors name the field.
    pub fn parse(yaml: &str) -> Result<PolicyDocument, Diagnostic> {
        let resources = parse_documents(SOURCE, yaml)
            .map_err(|e| Diagnostic::error("bad policy document", e.to_string()).at("yaml"))?;
        let [resource] = resources.as_slice() else {
            return Err(Diagnostic::error(
                "one policy document per strait_policy",
                format!(
                    "yaml holds {} documents; give each its own strait_policy",
                    resources.len()
                ),
            )
            .at("yaml"));
        };
        match resource {
            Resource::Policy { key, policy } => Ok(PolicyDocument {
                key: key.clone(),
                document: policy.document().clone(),
            }),
            other => Err(Diagnostic::error(
                "not a policy",
                format!(
                    "yaml is a {}; strait_policy takes AuthorizationPolicy, HTTPRoute, RateLimitPolicy, Quota, RequestAuthentication or FailoverPolicy (links are strait_link resources)",
                    other.kind()
                ),
            )
            .at("yaml")),
        }
    }

    /// `KIND/NAMESPACE/NAME`.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.key.kind, self.key.namespace, self.key.name)
    }
}

/// Checks a configuration at `terraform validate`.
pub fn validate(config: &Value) -> Vec<Diagnostic> {
    match config.get("yaml") {
        Value::String(yaml) => PolicyDocument::parse(yaml).err().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// A document naming another kind, namespace or name is another policy: it replaces this one.
/// (A document known only at apply is checked then: see [`apply`].)
pub fn replacing(prior: &Value, proposed: &Value) -> Vec<&'static str> {
    let new_id = proposed
        .get("yaml")
        .as_str()
        .and_then(|yaml| PolicyDocument::parse(yaml).ok())
        .map(|document| document.id());
    match (prior.get("id").as_str(), new_id) {
        (Some(prior_id), Some(new_id)) if prior_id != new_id => vec!["yaml"],
        _ => Vec::new(),
    }
}

/// Fills the attributes a plan can know from the document (its identity), and makes `origin`
/// unknown when the policy changes.
pub fn fill_plan(prior: &Value, planned: &mut Value) {
    let document = planned
        .get("yaml")
        .as_str()
        .and_then(|yaml| PolicyDocument::parse(yaml).ok());
    match document {
        Some(document) => {
            planned.set("id", Value::string(document.id()));
            planned.set("kind", Value::string(document.key.kind.as_str()));
            planned.set("namespace", Value::string(document.key.namespace.as_str()));
            planned.set("name", Value::string(document.key.name.as_str()));
        }
        None => {
            for name in ["id", "kind", "namespace", "name"] {
                planned.set(name, Value::Unknown);
            }
        }
    }
    if !prior.is_null()
        && (planned.get("yaml") != prior.get("yaml")
            || planned.get("context") != prior.get("context"))
    {
        planned.set("origin", Value::Unknown);
    }
}

fn context(value: &Value) -> Option<&str> {
    value.get("context").as_str()
}

/// Applies the document (create and update alike) and reads back where it stands. When the
/// document names another policy than `prior` did (a rename the plan could not see, its text
/// known only at apply), the prior one is deleted: a renamed policy must not stay enforced.
pub async fn apply(
    gateways: &Gateways,
    prior: &Value,
    planned: &Value,
) -> Result<Value, Diagnostic> {
    let yaml = planned.get("yaml").as_str().unwrap_or_default();
    let document = PolicyDocument::parse(yaml)?;
    let gateway = gateways
        .gateway(context(planned))
        .await
        .map_err(|e| from_error("cannot reach the gateway", &e).at("context"))?;
    gateway
        .apply(&format!("strait_policy {}", document.id()), yaml)
        .await
        .map_err(|e| from_error("the gateway refused the policy", &e).at("yaml"))?;
    if !prior.is_null()
        && let Ok((kind, namespace, name)) = identity(prior)
        && format!("{kind}/{namespace}/{name}") != document.id()
    {
        delete(gateways, prior).await?;
    }
    let mut applied = planned.clone();
    applied.set("id", Value::string(document.id()));
    match read(gateways, &applied).await? {
        Value::Null => Err(Diagnostic::error(
            "the policy is not there after it was applied",
            format!(
                "cluster {} accepted {} but does not list it",
                gateway.context.cluster,
                document.id()
            ),
        )),
        state => Ok(state),
    }
}

/// Which policy a state is about: its `id` (`KIND/NAMESPACE/NAME`), or its document's.
fn identity(state: &Value) -> Result<(String, String, String), Diagnostic> {
    if let Some(id) = state.get("id").as_str()
        && let [kind, namespace, name] = id.split('/').collect::<Vec<_>>().as_slice()
    {
        return Ok((kind.to_string(), namespace.to_string(), name.to_string()));
    }
    let document = PolicyDocument::parse(state.get("yaml").as_str().unwrap_or_default())?;
    Ok((
        document.key.kind.to_string(),
        document.key.namespace.to_string(),
        document.key.name.to_string(),
    ))
}

/// The policy as the gateway holds it; null when it holds none of that kind and name.
pub async fn read(gateways: &Gateways, prior: &Value) -> Result<Value, Diagnostic> {
    let (kind, namespace, name) = identity(prior)?;
    let gateway = gateways
        .gateway(context(prior))
        .await
        .map_err(|e| from_error("cannot reach the gateway", &e).at("context"))?;
    let policies = gateway
        .policies()
        .await
        .map_err(|e| from_error("cannot read the gateway's policies", &e))?;
    let Some(held) = policies
        .iter()
        .find(|p| p.kind == kind && p.namespace == namespace && p.name == name)
    else {
        return Ok(Value::Null);
    };
    let held_document: Option<serde_json::Value> = serde_json::from_str(&held.document).ok();
    let configured = prior
        .get("yaml")
        .as_str()
        .and_then(|yaml| PolicyDocument::parse(yaml).ok());
    let mut state = prior.clone();
    if held_document.is_none() || held_document != configured.map(|c| c.document) {
        // Changed elsewhere (or imported): the state holds what the mesh has, so a plan puts
        // the configuration back.
        let text = held_document
            .and_then(|d| serde_saphyr::to_string(&d).ok())
            .unwrap_or_else(|| held.document.clone());
        state.set("yaml", Value::String(text));
    }
    state.set("id", Value::String(format!("{kind}/{namespace}/{name}")));
    state.set("kind", Value::String(kind));
    state.set("namespace", Value::String(namespace));
    state.set("name", Value::String(name));
    state.set("origin", Value::string(&held.origin));
    Ok(state)
}

/// Deletes the policy mesh-wide; one already gone is fine.
pub async fn delete(gateways: &Gateways, prior: &Value) -> Result<(), Diagnostic> {
    let yaml = prior.get("yaml").as_str().unwrap_or_default();
    let document = PolicyDocument::parse(yaml)?;
    let gateway = gateways
        .gateway(context(prior))
        .await
        .map_err(|e| from_error("cannot reach the gateway", &e).at("context"))?;
    gateway
        .delete(&format!("strait_policy {}", document.id()), yaml)
        .await
        .map_err(|e| from_error("the gateway did not delete the policy", &e))?;
    Ok(())
}

/// The state to read for an import of `KIND/NAMESPACE/NAME` (through the current context);
/// the first read fills in the document the gateway holds.
pub fn import(id: &str) -> Result<Value, Diagnostic> {
    if id.split('/').count() != 3 || id.split('/').any(str::is_empty) {
        return Err(Diagnostic::error(
            "bad import id",
            format!("{id:?}: a strait_policy is imported as KIND/NAMESPACE/NAME"),
        ));
    }
    Ok(Value::object([("id", Value::string(id))]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENY: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-web
  namespace: shop
spec:
  action: deny
  rules:
    - from: [{namespaces: [web]}]
";

    fn state(yaml: &str) -> Value {
        let mut planned = Value::object([("yaml", Value::string(yaml))]);
        fill_plan(&Value::Null, &mut planned);
        planned.set("origin", Value::string("east"));
        planned
    }

    #[test]
    fn a_policy_document_is_read_with_its_identity() {
        let document = PolicyDocument::parse(DENY).unwrap();
        assert_eq!(document.id(), "AuthorizationPolicy/shop/deny-web");
    }

    #[test]
    fn a_bad_policy_is_refused_at_plan_time_naming_the_field() {
        let bad = DENY.replace("action: deny", "action: maybe");
        let diagnostics = validate(&Value::object([("yaml", Value::String(bad))]));
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].attribute, Some("yaml"));
        assert!(
            diagnostics[0].detail.contains("spec.action"),
            "{diagnostics:?}"
        );
    }

    #[test]
    fn links_services_and_several_documents_are_not_policies() {
        let two = format!("{DENY}---\n{}", DENY.replace("deny-web", "deny-other"));
        let service =
            "kind: Service\nmetadata: {name: api, namespace: shop}\nspec: {export: true}\n";
        for yaml in [two.as_str(), service] {
            let diagnostics = validate(&Value::object([("yaml", Value::string(yaml))]));
            assert_eq!(diagnostics.len(), 1, "{yaml}");
        }
    }

    #[test]
    fn a_plan_knows_the_identity_and_a_new_name_replaces_the_policy() {
        let prior = state(DENY);
        assert_eq!(
            prior.get("id").as_str(),
            Some("AuthorizationPolicy/shop/deny-web")
        );

        let mut same = prior.clone();
        assert!(replacing(&prior, &same).is_empty());
        fill_plan(&prior, &mut same);
        assert_eq!(same.get("origin"), &Value::string("east"));

        let mut edited = prior.clone();
        edited.set("yaml", Value::String(DENY.replace("[web]", "[web, admin]")));
        assert!(replacing(&prior, &edited).is_empty());
        fill_plan(&prior, &mut edited);
        assert_eq!(edited.get("origin"), &Value::Unknown);

        let mut renamed = prior.clone();
        renamed.set("yaml", Value::String(DENY.replace("deny-web", "deny-all")));
        assert_eq!(replacing(&prior, &renamed), vec!["yaml"]);
        fill_plan(&prior, &mut renamed);
        assert_eq!(
            renamed.get("id").as_str(),
            Some("AuthorizationPolicy/shop/deny-all")
        );
    }

    #[test]
    fn a_document_known_only_later_leaves_its_identity_unknown() {
        let mut planned = Value::object([("yaml", Value::Unknown)]);
        assert!(replacing(&state(DENY), &planned).is_empty());
        fill_plan(&Value::Null, &mut planned);
        assert_eq!(planned.get("id"), &Value::Unknown);
    }

    #[test]
    fn an_import_id_names_kind_namespace_and_name() {
        let value = import("AuthorizationPolicy/shop/deny-web").unwrap();
        assert_eq!(
            identity(&value).unwrap(),
            (
                "AuthorizationPolicy".into(),
                "shop".into(),
                "deny-web".into()
            )
        );
        assert!(import("shop/deny-web").is_err());
        assert!(import("AuthorizationPolicy//deny-web").is_err());
    }
}
