//! The data source `strait_services`: the federated catalog as one context's gateway sees it.

use strait_federation::proto::operator::ServiceView;

use crate::diagnostic::{Diagnostic, from_error};
use crate::gateways::Gateways;
use crate::value::Value;

fn strings(items: &[String]) -> Value {
    Value::List(items.iter().map(Value::string).collect())
}

/// One service as the data source shows it.
fn service(view: &ServiceView) -> Value {
    Value::object([
        ("namespace", Value::string(&view.namespace)),
        ("name", Value::string(&view.name)),
        ("clusters", strings(&view.clusters)),
        ("ports", strings(&view.ports)),
        ("exported", Value::Bool(view.exported)),
        ("local", Value::Bool(view.local)),
    ])
}

/// Reads the catalog, ordered by namespace and name.
pub async fn read(gateways: &Gateways, config: &Value) -> Result<Value, Diagnostic> {
    let gateway = gateways
        .gateway(config.get("context").as_str())
        .await
        .map_err(|e| from_error("cannot reach the gateway", &e).at("context"))?;
    let mut services = gateway
        .services()
        .await
        .map_err(|e| from_error("cannot read the gateway's services", &e))?;
    if let Some(namespace) = config.get("namespace").as_str() {
        services.retain(|s| s.namespace == namespace);
    }
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut state = config.clone();
    state.set("cluster", Value::string(gateway.context.cluster.as_str()));
    state.set(
        "services",
        Value::List(services.iter().map(service).collect()),
    );
    Ok(state)
}
