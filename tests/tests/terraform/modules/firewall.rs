//! The inbound rules of a gateway module's firewall, whatever the cloud calls them: security
//! group rules, firewall rules or network security rules.

use hcl::expr::Expression;

use super::config::{Config, attribute, literal, required, text};

/// An inbound firewall rule a module makes, whatever the cloud calls it.
pub(super) struct Rule {
    /// `TYPE.NAME` of the resource (and the `allow` block's protocol on GCP).
    pub(super) name: String,
    /// The protocol, lower case: `udp`, `tcp`, or `*` for all.
    pub(super) protocol: String,
    /// The port expressions.
    pub(super) ports: Vec<Expression>,
    /// The source expression.
    pub(super) sources: Expression,
}

/// The inbound rules of a gateway module's firewall (security group rules, firewall rules or
/// network security rules).
pub(super) fn inbound_rules(config: &Config) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (name, body) in config.resources("aws_security_group_rule") {
        if attribute(body, "type").and_then(literal) != Some("ingress") {
            continue;
        }
        rules.push(Rule {
            name: format!("aws_security_group_rule.{name}"),
            protocol: protocol(required(body, "protocol")),
            ports: vec![
                required(body, "from_port").clone(),
                required(body, "to_port").clone(),
            ],
            sources: required(body, "cidr_blocks").clone(),
        });
    }
    for (name, body) in config.resources("google_compute_firewall") {
        if attribute(body, "direction").and_then(literal) == Some("EGRESS") {
            continue;
        }
        for allow in body.blocks().filter(|block| block.identifier() == "allow") {
            let protocol = protocol(required(allow.body(), "protocol"));
            rules.push(Rule {
                name: format!("google_compute_firewall.{name} ({protocol})"),
                protocol,
                ports: attribute(allow.body(), "ports")
                    .cloned()
                    .into_iter()
                    .collect(),
                sources: required(body, "source_ranges").clone(),
            });
        }
    }
    for (name, body) in config.resources("azurerm_network_security_rule") {
        if attribute(body, "direction").and_then(literal) != Some("Inbound")
            || attribute(body, "access").and_then(literal) != Some("Allow")
        {
            continue;
        }
        let ports = ["destination_port_range", "destination_port_ranges"];
        let sources = ["source_address_prefix", "source_address_prefixes"];
        rules.push(Rule {
            name: format!("azurerm_network_security_rule.{name}"),
            protocol: protocol(required(body, "protocol")),
            ports: ports
                .iter()
                .filter_map(|key| attribute(body, key).cloned())
                .collect(),
            sources: sources
                .iter()
                .find_map(|key| attribute(body, key).cloned())
                .expect("a network security rule has a source"),
        });
    }
    rules
}

/// A rule's protocol, lower case, with every cloud's "all" as `*`.
fn protocol(expr: &Expression) -> String {
    match literal(expr).map(str::to_lowercase).as_deref() {
        Some("-1" | "all" | "*") => "*".to_owned(),
        Some(protocol) => protocol.to_owned(),
        None => text(expr),
    }
}
