//! The strait workload sidecar: inbound and outbound proxy of one workload (mutual TLS,
//! balancing, retries, timeouts, authorization, metrics), fed by its cluster's gateway.
//! It arrives with the data plane; until then the crate is empty on purpose, so that the
//! workspace already has the shape of the design.
