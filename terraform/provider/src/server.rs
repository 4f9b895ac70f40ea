//! The provider's gRPC service: Terraform's calls decoded into values, handed to the resource
//! they name, and the answers encoded back. Bad input from Terraform becomes a diagnostic,
//! never a panic.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::diagnostic::{Diagnostic, attribute_path, from_error};
use crate::gateways::Gateways;
use crate::proto::provider_server::Provider;
use crate::proto::{self, DynamicValue};
use crate::schema::{self, Schema};
use crate::value::Value;
use crate::{link, policy, services};

/// The resource types the provider serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Link,
    Policy,
}

impl Kind {
    fn of(type_name: &str) -> Result<Kind, Status> {
        match type_name {
            "strait_link" => Ok(Kind::Link),
            "strait_policy" => Ok(Kind::Policy),
            other => Err(Status::invalid_argument(format!(
                "no resource type {other:?} in this provider"
            ))),
        }
    }

    fn schema(self) -> Schema {
        match self {
            Kind::Link => schema::link(),
            Kind::Policy => schema::policy(),
        }
    }
}

/// The provider: the gateways it reaches.
#[derive(Default)]
pub struct StraitProvider {
    gateways: Arc<Gateways>,
}

/// The one data source's name; another is refused.
fn data_source(type_name: &str) -> Result<(), Status> {
    if type_name == "strait_services" {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "no data source {type_name:?} in this provider"
        )))
    }
}

/// Decodes a value Terraform sent (null when absent).
fn decode(value: Option<&DynamicValue>, schema: &Schema) -> Result<Value, Diagnostic> {
    let ty = schema.ty();
    let decoded = match value {
        Some(v) if !v.msgpack.is_empty() => Value::from_msgpack(&v.msgpack, &ty),
        Some(v) if !v.json.is_empty() => Value::from_json(&v.json, &ty),
        _ => Ok(Value::Null),
    };
    decoded.map_err(|e| from_error("Terraform sent a value this provider cannot read", &e))
}

fn encode(value: &Value, schema: &Schema) -> Option<DynamicValue> {
    Some(DynamicValue {
        msgpack: value.to_msgpack(&schema.ty()),
        json: Vec::new(),
    })
}

fn diagnostics(list: &[Diagnostic]) -> Vec<proto::Diagnostic> {
    list.iter().map(Diagnostic::to_proto).collect()
}

#[tonic::async_trait]
impl Provider for StraitProvider {
    async fn get_provider_schema(
        &self,
        _: Request<proto::GetProviderSchemaRequest>,
    ) -> Result<Response<proto::GetProviderSchemaResponse>, Status> {
        Ok(Response::new(proto::GetProviderSchemaResponse {
            provider: Some(schema::provider().to_proto()),
            resource_schemas: [
                ("strait_link".to_owned(), schema::link().to_proto()),
                ("strait_policy".to_owned(), schema::policy().to_proto()),
            ]
            .into(),
            data_source_schemas: [("strait_services".to_owned(), schema::services().to_proto())]
                .into(),
            diagnostics: Vec::new(),
            provider_meta: None,
            server_capabilities: Some(proto::ServerCapabilities {
                plan_destroy: false,
                get_provider_schema_optional: false,
            }),
        }))
    }

    async fn validate_provider_config(
        &self,
        request: Request<proto::ValidateProviderConfigRequest>,
    ) -> Result<Response<proto::ValidateProviderConfigResponse>, Status> {
        let config = decode(request.get_ref().config.as_ref(), &schema::provider());
        let list = match config {
            Err(d) => vec![d],
            Ok(config) => match config.get("config_path") {
                Value::String(path) if path.trim().is_empty() => vec![
                    Diagnostic::error("config_path is empty", "leave it out to use the default")
                        .at("config_path"),
                ],
                _ => Vec::new(),
            },
        };
        Ok(Response::new(proto::ValidateProviderConfigResponse {
            diagnostics: diagnostics(&list),
        }))
    }

    async fn validate_resource_config(
        &self,
        request: Request<proto::ValidateResourceConfigRequest>,
    ) -> Result<Response<proto::ValidateResourceConfigResponse>, Status> {
        let request = request.into_inner();
        let kind = Kind::of(&request.type_name)?;
        let list = match decode(request.config.as_ref(), &kind.schema()) {
            Err(d) => vec![d],
            Ok(config) => match kind {
                Kind::Link => link::validate(&config),
                Kind::Policy => policy::validate(&config),
            },
        };
        Ok(Response::new(proto::ValidateResourceConfigResponse {
            diagnostics: diagnostics(&list),
        }))
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<proto::ValidateDataResourceConfigRequest>,
    ) -> Result<Response<proto::ValidateDataResourceConfigResponse>, Status> {
        let request = request.into_inner();
        data_source(&request.type_name)?;
        let list: Vec<Diagnostic> = decode(request.config.as_ref(), &schema::services())
            .err()
            .into_iter()
            .collect();
        Ok(Response::new(proto::ValidateDataResourceConfigResponse {
            diagnostics: diagnostics(&list),
        }))
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<proto::UpgradeResourceStateRequest>,
    ) -> Result<Response<proto::UpgradeResourceStateResponse>, Status> {
        let request = request.into_inner();
        let schema = Kind::of(&request.type_name)?.schema();
        let json = request.raw_state.map(|raw| raw.json).unwrap_or_default();
        let upgraded = if request.version > schema.version {
            Err(Diagnostic::error(
                "state written by a newer provider",
                format!(
                    "{} state is at schema version {}; this provider knows up to {}: use the provider that wrote it",
                    request.type_name, request.version, schema.version
                ),
            ))
        } else if json.is_empty() {
            Ok(Value::Null)
        } else {
            Value::from_json(&json, &schema.ty())
                .map_err(|e| from_error("the stored state cannot be read", &e))
        };
        Ok(Response::new(match upgraded {
            Ok(value) => proto::UpgradeResourceStateResponse {
                upgraded_state: encode(&value, &schema),
                diagnostics: Vec::new(),
            },
            Err(d) => proto::UpgradeResourceStateResponse {
                upgraded_state: None,
                diagnostics: diagnostics(&[d]),
            },
        }))
    }

    async fn configure_provider(
        &self,
        request: Request<proto::ConfigureProviderRequest>,
    ) -> Result<Response<proto::ConfigureProviderResponse>, Status> {
        let list = match decode(request.get_ref().config.as_ref(), &schema::provider()) {
            Err(d) => vec![d],
            Ok(config) => match config.get("config_path") {
                Value::Unknown => vec![
                    Diagnostic::error(
                        "config_path is not known yet",
                        "the contexts file must be known when planning; give a path, not a value computed during apply",
                    )
                    .at("config_path"),
                ],
                Value::String(path) => {
                    self.gateways.configure(Some(path));
                    Vec::new()
                }
                _ => {
                    self.gateways.configure(None);
                    Vec::new()
                }
            },
        };
        Ok(Response::new(proto::ConfigureProviderResponse {
            diagnostics: diagnostics(&list),
        }))
    }

    async fn read_resource(
        &self,
        request: Request<proto::ReadResourceRequest>,
    ) -> Result<Response<proto::ReadResourceResponse>, Status> {
        let request = request.into_inner();
        let kind = Kind::of(&request.type_name)?;
        let schema = kind.schema();
        let read = match decode(request.current_state.as_ref(), &schema) {
            Err(d) => Err(d),
            Ok(Value::Null) => Ok(Value::Null),
            Ok(current) => match kind {
                Kind::Link => link::read(&self.gateways, &current).await,
                Kind::Policy => policy::read(&self.gateways, &current).await,
            },
        };
        Ok(Response::new(match read {
            Ok(state) => proto::ReadResourceResponse {
                new_state: encode(&state, &schema),
                diagnostics: Vec::new(),
                private: request.private,
            },
            Err(d) => proto::ReadResourceResponse {
                new_state: request.current_state,
                diagnostics: diagnostics(&[d]),
                private: request.private,
            },
        }))
    }

    async fn plan_resource_change(
        &self,
        request: Request<proto::PlanResourceChangeRequest>,
    ) -> Result<Response<proto::PlanResourceChangeResponse>, Status> {
        let request = request.into_inner();
        let kind = Kind::of(&request.type_name)?;
        let schema = kind.schema();
        let values = decode(request.prior_state.as_ref(), &schema).and_then(|prior| {
            decode(request.proposed_new_state.as_ref(), &schema).map(|p| (prior, p))
        });
        let (prior, proposed) = match values {
            Ok(values) => values,
            Err(d) => {
                return Ok(Response::new(proto::PlanResourceChangeResponse {
                    diagnostics: diagnostics(&[d]),
                    ..Default::default()
                }));
            }
        };
        // What replaces each kind beyond its schema: another address, another policy.
        let replace = match kind {
            Kind::Link => link::replacing(&prior, &proposed),
            Kind::Policy => policy::replacing(&prior, &proposed),
        };
        let mut planned = schema::plan(&schema, &prior, &proposed, &replace);
        if kind == Kind::Policy && !planned.state.is_null() {
            policy::fill_plan(&prior, &mut planned.state);
        }
        let requires_replace = planned
            .requires_replace
            .iter()
            .map(|name| attribute_path(name))
            .collect();
        Ok(Response::new(proto::PlanResourceChangeResponse {
            planned_state: encode(&planned.state, &schema),
            requires_replace,
            planned_private: request.prior_private,
            diagnostics: Vec::new(),
            legacy_type_system: false,
        }))
    }

    async fn apply_resource_change(
        &self,
        request: Request<proto::ApplyResourceChangeRequest>,
    ) -> Result<Response<proto::ApplyResourceChangeResponse>, Status> {
        let request = request.into_inner();
        let kind = Kind::of(&request.type_name)?;
        let schema = kind.schema();
        let values = decode(request.prior_state.as_ref(), &schema)
            .and_then(|prior| decode(request.planned_state.as_ref(), &schema).map(|p| (prior, p)));
        let (prior, planned) = match values {
            Ok(values) => values,
            Err(d) => {
                return Ok(Response::new(proto::ApplyResourceChangeResponse {
                    new_state: request.prior_state,
                    diagnostics: diagnostics(&[d]),
                    ..Default::default()
                }));
            }
        };
        let outcome: Result<Value, (Value, Diagnostic)> = match (kind, &prior, &planned) {
            (Kind::Link, prior, Value::Null) => link::delete(&self.gateways, prior)
                .await
                .map(|()| Value::Null)
                .map_err(|d| (prior.clone(), d)),
            (Kind::Link, Value::Null, planned) => link::create(&self.gateways, planned).await,
            // Only token_ttl changes in place, and it matters only when a link is made.
            (Kind::Link, _, planned) => Ok(planned.clone()),
            (Kind::Policy, prior, Value::Null) => policy::delete(&self.gateways, prior)
                .await
                .map(|()| Value::Null)
                .map_err(|d| (prior.clone(), d)),
            (Kind::Policy, prior, planned) => policy::apply(&self.gateways, prior, planned)
                .await
                .map_err(|d| (prior.clone(), d)),
        };
        let (state, list) = match outcome {
            Ok(state) => (state, Vec::new()),
            Err((state, d)) => (state, vec![d]),
        };
        Ok(Response::new(proto::ApplyResourceChangeResponse {
            new_state: encode(&state, &schema),
            private: request.planned_private,
            diagnostics: diagnostics(&list),
            legacy_type_system: false,
        }))
    }

    async fn import_resource_state(
        &self,
        request: Request<proto::ImportResourceStateRequest>,
    ) -> Result<Response<proto::ImportResourceStateResponse>, Status> {
        let request = request.into_inner();
        let kind = Kind::of(&request.type_name)?;
        let imported = match kind {
            Kind::Link => link::import(&request.id),
            Kind::Policy => policy::import(&request.id),
        };
        Ok(Response::new(match imported {
            Ok(state) => proto::ImportResourceStateResponse {
                imported_resources: vec![proto::ImportedResource {
                    type_name: request.type_name,
                    state: encode(&state, &kind.schema()),
                    private: Vec::new(),
                }],
                diagnostics: Vec::new(),
            },
            Err(d) => proto::ImportResourceStateResponse {
                imported_resources: Vec::new(),
                diagnostics: diagnostics(&[d]),
            },
        }))
    }

    async fn read_data_source(
        &self,
        request: Request<proto::ReadDataSourceRequest>,
    ) -> Result<Response<proto::ReadDataSourceResponse>, Status> {
        let request = request.into_inner();
        data_source(&request.type_name)?;
        let schema = schema::services();
        let read = match decode(request.config.as_ref(), &schema) {
            Ok(config) => services::read(&self.gateways, &config).await,
            Err(d) => Err(d),
        };
        Ok(Response::new(match read {
            Ok(state) => proto::ReadDataSourceResponse {
                state: encode(&state, &schema),
                diagnostics: Vec::new(),
            },
            Err(d) => proto::ReadDataSourceResponse {
                state: None,
                diagnostics: diagnostics(&[d]),
            },
        }))
    }

    async fn stop_provider(
        &self,
        _: Request<proto::StopProviderRequest>,
    ) -> Result<Response<proto::StopProviderResponse>, Status> {
        // Ctrl-C in Terraform: calls to gateways in flight end now.
        self.gateways.stop();
        Ok(Response::new(proto::StopProviderResponse {
            error: String::new(),
        }))
    }
}

/// The plugin host's controller: Terraform asks the provider to exit when it is done.
pub struct Controller {
    pub stop: CancellationToken,
}

#[tonic::async_trait]
impl proto::plugin::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(
        &self,
        _: Request<proto::plugin::Empty>,
    ) -> Result<Response<proto::plugin::Empty>, Status> {
        self.stop.cancel();
        Ok(Response::new(proto::plugin::Empty {}))
    }
}
