//! The provider's schemas (its own settings, `strait_link`, `strait_policy` and the data source
//! `strait_services`), and the plan every resource starts from: which attributes are known
//! after apply, and which changes force a new resource. Sans-IO.

use crate::proto;
use crate::value::{Type, Value};

/// Who sets an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Required,
    Optional,
    /// Set by the provider only.
    Computed,
}

/// One attribute of a schema.
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: &'static str,
    pub ty: Type,
    pub description: &'static str,
    pub mode: Mode,
    /// A change to it replaces the resource.
    pub replaces: bool,
}

impl Attribute {
    fn new(name: &'static str, ty: Type, mode: Mode, description: &'static str) -> Attribute {
        Attribute {
            name,
            ty,
            description,
            mode,
            replaces: false,
        }
    }

    fn replacing(mut self) -> Attribute {
        self.replaces = true;
        self
    }
}

/// A block of attributes: a provider's settings, a resource or a data source.
#[derive(Debug, Clone)]
pub struct Schema {
    pub version: i64,
    pub description: &'static str,
    pub attributes: Vec<Attribute>,
}

impl Schema {
    /// The type of a whole value of this schema.
    pub fn ty(&self) -> Type {
        Type::Object(
            self.attributes
                .iter()
                .map(|a| (a.name.to_owned(), a.ty.clone()))
                .collect(),
        )
    }

    /// The schema as Terraform reads it.
    pub fn to_proto(&self) -> proto::Schema {
        let attributes = self
            .attributes
            .iter()
            .map(|a| proto::schema::Attribute {
                name: a.name.to_owned(),
                r#type: a.ty.to_json().to_string().into_bytes(),
                description: a.description.to_owned(),
                required: a.mode == Mode::Required,
                optional: a.mode == Mode::Optional,
                computed: a.mode == Mode::Computed,
                ..Default::default()
            })
            .collect();
        proto::Schema {
            version: self.version,
            block: Some(proto::schema::Block {
                attributes,
                description: self.description.to_owned(),
                ..Default::default()
            }),
        }
    }
}

fn list_of_strings() -> Type {
    Type::List(Box::new(Type::String))
}

/// The provider's settings.
pub fn provider() -> Schema {
    Schema {
        version: 0,
        description: "strait: link clusters' gateways and apply mesh-wide policy.",
        attributes: vec![Attribute::new(
            "config_path",
            Type::String,
            Mode::Optional,
            "The strait contexts file (what `strait context add` and `strait gateway init` write). Default: $STRAIT_CONFIG, then ~/.strait/config.",
        )],
    }
}

/// `strait_link`: the peering of two clusters' gateways.
pub fn link() -> Schema {
    Schema {
        version: 0,
        description: "A link between two clusters: the acceptor's gateway mints a join token, the dialer's gateway applies the Link and dials. Deleting it unlinks both sides.",
        attributes: vec![
            Attribute::new(
                "dialer",
                Type::String,
                Mode::Required,
                "The context of the cluster whose gateway dials.",
            )
            .replacing(),
            Attribute::new(
                "acceptor",
                Type::String,
                Mode::Required,
                "The context of the cluster whose gateway accepts.",
            )
            .replacing(),
            Attribute::new(
                "address",
                Type::String,
                Mode::Optional,
                "The address (host:port) the dialer dials, such as a gateway module's gateway_address. Default: the acceptor gateway's advertised address. Another address makes the link again.",
            ),
            Attribute::new(
                "token_ttl",
                Type::String,
                Mode::Optional,
                "How long the join token waits for its first use (e.g. 10m). Default: 10m. The token is used once, while the link is made, and never stored.",
            ),
            Attribute::new(
                "id",
                Type::String,
                Mode::Computed,
                "DIALER/ACCEPTOR (the contexts).",
            ),
            Attribute::new(
                "dialer_cluster",
                Type::String,
                Mode::Computed,
                "The dialer's cluster name.",
            ),
            Attribute::new(
                "acceptor_cluster",
                Type::String,
                Mode::Computed,
                "The acceptor's cluster name.",
            ),
            Attribute::new(
                "peer_address",
                Type::String,
                Mode::Computed,
                "The address the dialer dials.",
            ),
            Attribute::new(
                "state",
                Type::String,
                Mode::Computed,
                "The peering as the dialer saw it when last read: connecting, connected, disconnected or refused.",
            ),
        ],
    }
}

/// `strait_policy`: one mesh-wide policy document.
pub fn policy() -> Schema {
    Schema {
        version: 0,
        description: "One mesh-wide policy document (AuthorizationPolicy, HTTPRoute, RateLimitPolicy, Quota, RequestAuthentication or FailoverPolicy), applied through one cluster's gateway and replicated to every linked cluster.",
        attributes: vec![
            Attribute::new(
                "yaml",
                Type::String,
                Mode::Required,
                "The policy document, as `strait apply -f` takes it (one document).",
            ),
            Attribute::new(
                "context",
                Type::String,
                Mode::Optional,
                "The context whose gateway applies it. Default: the contexts file's current context.",
            ),
            Attribute::new("id", Type::String, Mode::Computed, "KIND/NAMESPACE/NAME."),
            Attribute::new("kind", Type::String, Mode::Computed, "The policy's kind."),
            Attribute::new(
                "namespace",
                Type::String,
                Mode::Computed,
                "The policy's namespace.",
            ),
            Attribute::new("name", Type::String, Mode::Computed, "The policy's name."),
            Attribute::new(
                "origin",
                Type::String,
                Mode::Computed,
                "The cluster where the policy was last changed.",
            ),
        ],
    }
}

/// The data source `strait_services`.
pub fn services() -> Schema {
    let service = Type::Object(vec![
        ("namespace".into(), Type::String),
        ("name".into(), Type::String),
        ("clusters".into(), list_of_strings()),
        ("ports".into(), list_of_strings()),
        ("exported".into(), Type::Bool),
        ("local".into(), Type::Bool),
    ]);
    Schema {
        version: 0,
        description: "The federated service catalog as one cluster's gateway sees it: its own services and those other clusters export.",
        attributes: vec![
            Attribute::new(
                "context",
                Type::String,
                Mode::Optional,
                "The context to ask. Default: the contexts file's current context.",
            ),
            Attribute::new(
                "namespace",
                Type::String,
                Mode::Optional,
                "Only the services of this namespace.",
            ),
            Attribute::new(
                "cluster",
                Type::String,
                Mode::Computed,
                "The cluster of the context asked.",
            ),
            Attribute::new(
                "services",
                Type::List(Box::new(service)),
                Mode::Computed,
                "Each service: namespace, name, the clusters that run it, its ports, whether this cluster exports it and whether it runs here.",
            ),
        ],
    }
}

/// A plan: the state the resource will have, and the attributes whose change replaces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub state: Value,
    pub requires_replace: Vec<&'static str>,
}

/// Plans a change from `prior` (null: the resource is new) to `proposed` (null: it goes):
/// Terraform's proposal already holds the prior computed values; a new or replaced resource
/// has them known only after apply. `replace` names attributes the resource itself found
/// replacing (beyond the schema's).
pub fn plan(schema: &Schema, prior: &Value, proposed: &Value, replace: &[&'static str]) -> Planned {
    if proposed.is_null() {
        return Planned {
            state: Value::Null,
            requires_replace: Vec::new(),
        };
    }
    let mut requires_replace: Vec<&'static str> = Vec::new();
    if !prior.is_null() {
        requires_replace.extend(
            schema
                .attributes
                .iter()
                .filter(|a| a.replaces && prior.get(a.name) != proposed.get(a.name))
                .map(|a| a.name),
        );
        for name in replace {
            if !requires_replace.contains(name) {
                requires_replace.push(name);
            }
        }
    }
    let mut state = proposed.clone();
    if prior.is_null() || !requires_replace.is_empty() {
        for attribute in schema
            .attributes
            .iter()
            .filter(|a| a.mode == Mode::Computed)
        {
            state.set(attribute.name, Value::Unknown);
        }
    }
    Planned {
        state,
        requires_replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_state(address: Value, ttl: &str) -> Value {
        Value::object([
            ("dialer", Value::string("east")),
            ("acceptor", Value::string("west")),
            ("address", address),
            ("token_ttl", Value::string(ttl)),
            ("id", Value::string("east/west")),
            ("dialer_cluster", Value::string("east")),
            ("acceptor_cluster", Value::string("west")),
            ("peer_address", Value::string("127.0.0.1:4433")),
            ("state", Value::string("connected")),
        ])
    }

    #[test]
    fn a_new_link_is_known_after_apply_in_every_computed_attribute() {
        let mut proposed = link_state(Value::Null, "10m");
        for name in [
            "id",
            "dialer_cluster",
            "acceptor_cluster",
            "peer_address",
            "state",
        ] {
            proposed.set(name, Value::Null);
        }
        let planned = plan(&link(), &Value::Null, &proposed, &[]);
        assert!(planned.requires_replace.is_empty());
        assert_eq!(planned.state.get("id"), &Value::Unknown);
        assert_eq!(planned.state.get("state"), &Value::Unknown);
        assert_eq!(planned.state.get("dialer"), &Value::string("east"));
    }

    #[test]
    fn nothing_changes_when_the_configuration_is_the_state() {
        let prior = link_state(Value::Null, "10m");
        let planned = plan(&link(), &prior, &prior, &[]);
        assert_eq!(planned.state, prior);
        assert!(planned.requires_replace.is_empty());
    }

    #[test]
    fn another_address_replaces_the_link_but_another_token_ttl_does_not() {
        let prior = link_state(Value::string("198.51.100.1:4433"), "10m");
        let moved = link_state(Value::string("203.0.113.7:4433"), "10m");
        let replace = crate::link::replacing(&prior, &moved);
        let planned = plan(&link(), &prior, &moved, &replace);
        assert_eq!(planned.requires_replace, vec!["address"]);
        assert_eq!(planned.state.get("peer_address"), &Value::Unknown);

        let longer = link_state(Value::string("198.51.100.1:4433"), "1h");
        let planned = plan(&link(), &prior, &longer, &[]);
        assert!(planned.requires_replace.is_empty());
        assert_eq!(planned.state, longer);
    }

    #[test]
    fn a_destroyed_resource_plans_to_null() {
        let prior = link_state(Value::Null, "10m");
        let planned = plan(&link(), &prior, &Value::Null, &[]);
        assert_eq!(planned.state, Value::Null);
    }

    #[test]
    fn a_replacement_the_resource_asks_for_is_planned_once() {
        let prior = link_state(Value::Null, "10m");
        let mut proposed = prior.clone();
        proposed.set("dialer", Value::string("north"));
        let planned = plan(&link(), &prior, &proposed, &["dialer", "token_ttl"]);
        assert_eq!(planned.requires_replace, vec!["dialer", "token_ttl"]);
    }

    #[test]
    fn schemas_declare_types_and_modes_terraform_accepts() {
        for schema in [provider(), link(), policy(), services()] {
            let proto = schema.to_proto();
            let block = proto.block.expect("a block");
            for attribute in block.attributes {
                let modes = [attribute.required, attribute.optional, attribute.computed];
                assert_eq!(
                    modes.iter().filter(|m| **m).count(),
                    1,
                    "{}",
                    attribute.name
                );
                let ty: serde_json::Value = serde_json::from_slice(&attribute.r#type).unwrap();
                assert!(ty.is_string() || ty.is_array(), "{}", attribute.name);
            }
        }
    }
}
