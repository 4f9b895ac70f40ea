//! strait's Terraform provider (`strait.dev/strait/strait`): `strait_link` peers two clusters'
//! gateways, `strait_policy` applies a mesh-wide policy, and the data source `strait_services`
//! reads the federated catalog. It reaches gateways through the operator contexts the CLI uses
//! (a contexts file and operator credentials on disk): no root key, join token or credential
//! ever enters Terraform's state.
//!
//! Terraform runs it as a plugin ([`plugin`]) speaking protocol 6 ([`server`]); the values,
//! schemas, plans and checks are sans-IO ([`value`], [`schema`], and the resources' own modules).

pub mod diagnostic;
pub mod gateways;
pub mod link;
pub mod plugin;
pub mod policy;
pub mod schema;
pub mod server;
pub mod services;
pub mod value;

/// The plugin protocol (see `proto/`).
pub mod proto {
    tonic::include_proto!("tfplugin6");

    /// The plugin host's controller.
    pub mod plugin {
        tonic::include_proto!("plugin");
    }
}
