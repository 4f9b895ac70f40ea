//! The cloud gateway modules (`terraform/modules/gateway-*`) and the multicloud example, checked
//! without their cloud providers, which `terraform validate` would need: parsed with hcl-rs for
//! what they open, carry and output and for what Terraform 1.0 would refuse, formatted as
//! `terraform fmt` wants, and passed by checkov. The last two need the tools of
//! `scripts/terraform-tools.sh`; they say so and skip without them.

mod config;
mod firewall;
mod terraform_1_0;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use config::{
    Config, attribute, field, file_name, label, literal, refers_to, required, text, walk,
};
use firewall::{Rule, inbound_rules};
use hcl::Block;
use hcl::expr::Expression;
use strait_tests::terraform::{root, terraform_or_skip, tool};
use terraform_1_0::newer_than_terraform_1_0;

/// The gateway modules, one per cloud, under `terraform/modules`.
const GATEWAYS: [&str; 3] = ["gateway-aws", "gateway-gcp", "gateway-azure"];

/// The inputs every gateway module takes, with the same type and default.
const COMMON_INPUTS: [&str; 10] = [
    "cluster_name",
    "peer_cidrs",
    "trust_domain",
    "quic_port",
    "namespace",
    "create_namespace",
    "release_name",
    "chart",
    "credentials_secret",
    "values",
];

/// The inputs that must carry a `validation` block.
const VALIDATED_INPUTS: [&str; 5] = [
    "cluster_name",
    "peer_cidrs",
    "trust_domain",
    "quic_port",
    "namespace",
];

/// A gateway module's folder.
fn gateway(name: &str) -> PathBuf {
    root().join("terraform/modules").join(name)
}

/// The multicloud example's folder.
fn multicloud() -> PathBuf {
    root().join("terraform/examples/multicloud")
}

#[test]
fn every_gateway_module_opens_udp_only_to_the_peers() {
    for module in GATEWAYS {
        let config = Config::load(&gateway(module));
        let rules = inbound_rules(&config);
        // On AWS the load balancer delivers to the node port; elsewhere the port stays the same.
        let port = if module == "gateway-aws" {
            "var.node_port"
        } else {
            "var.quic_port"
        };
        let udp: Vec<&Rule> = rules.iter().filter(|rule| rule.protocol == "udp").collect();
        assert!(!udp.is_empty(), "{module}: no rule opens UDP");
        for rule in &udp {
            assert_eq!(
                text(&rule.sources),
                "var.peer_cidrs",
                "{module}: {} opens UDP to more than the peers",
                rule.name
            );
            assert!(
                !rule.ports.is_empty() && rule.ports.iter().all(|p| refers_to(p, port)),
                "{module}: {} opens UDP on another port than {port}",
                rule.name
            );
        }
        for rule in &rules {
            assert_ne!(
                rule.protocol, "*",
                "{module}: {} opens every protocol",
                rule.name
            );
            assert!(
                !rule.ports.is_empty(),
                "{module}: {} opens every port",
                rule.name
            );
            let mut open = false;
            walk(&rule.sources, &mut |expr| {
                open |= literal(expr).is_some_and(|source| {
                    ["0.0.0.0/0", "::/0", "*", "Internet", "Any"].contains(&source)
                });
            });
            assert!(!open, "{module}: {} is open to the world", rule.name);
        }
    }
}

#[test]
fn every_gateway_module_carries_quic_over_udp_and_tcp_on_one_address() {
    for module in GATEWAYS {
        let config = Config::load(&gateway(module));
        let values = config.helm_values();
        let service = field(&values, "quicService").expect("the Helm values set quicService");
        let service_value = |key: &str| {
            field(service, key).unwrap_or_else(|| panic!("{module}: quicService.{key} unset"))
        };
        assert!(
            refers_to(service_value("port"), "var.quic_port"),
            "{module}: the QUIC Service's port is not var.quic_port"
        );
        assert_eq!(
            service_value("tcpHealth"),
            &Expression::Bool(true),
            "{module}: the QUIC Service carries no TCP for the load balancer's health checks"
        );
        let service_type = literal(service_value("type")).unwrap_or_default();
        match module {
            "gateway-aws" => {
                let listener = config.resource("aws_lb_listener");
                assert_eq!(literal(required(listener, "protocol")), Some("TCP_UDP"));
                assert!(refers_to(required(listener, "port"), "var.quic_port"));
                let targets = config.resource("aws_lb_target_group");
                assert_eq!(literal(required(targets, "protocol")), Some("TCP_UDP"));
                assert!(refers_to(required(targets, "port"), "var.node_port"));
                let balancer = config.resource("aws_lb");
                assert_eq!(
                    literal(required(balancer, "load_balancer_type")),
                    Some("network")
                );
                let mappings: Vec<&Block> = balancer
                    .blocks()
                    .filter(|block| block.identifier() == "dynamic")
                    .filter(|block| label(block, 0) == Some("subnet_mapping"))
                    .collect();
                assert_eq!(mappings.len(), 1, "{module}: no subnet_mapping");
                let content = mappings[0]
                    .body()
                    .blocks()
                    .find(|block| block.identifier() == "content")
                    .expect("subnet_mapping has content");
                assert!(
                    refers_to(required(content.body(), "allocation_id"), "aws_eip.gateway"),
                    "{module}: the load balancer is not on the Elastic IPs"
                );
                assert_eq!(service_type, "NodePort");
                assert!(refers_to(service_value("nodePort"), "var.node_port"));
            }
            "gateway-gcp" => {
                let rules = config.resources("google_compute_forwarding_rule");
                let protocols: BTreeSet<&str> = rules
                    .iter()
                    .filter_map(|(_, rule)| attribute(rule, "ip_protocol").and_then(literal))
                    .collect();
                assert_eq!(protocols, BTreeSet::from(["TCP", "UDP"]), "{module}");
                let addresses: BTreeSet<String> = rules
                    .iter()
                    .map(|(_, rule)| text(required(rule, "ip_address")))
                    .collect();
                assert_eq!(
                    addresses.len(),
                    1,
                    "{module}: the rules are on several addresses"
                );
                for (name, rule) in &rules {
                    assert!(
                        refers_to(
                            required(rule, "ip_address"),
                            "google_compute_address.gateway"
                        ),
                        "{module}: {name} is not on the static address"
                    );
                    assert!(
                        refers_to(required(rule, "ports"), "var.quic_port"),
                        "{module}: {name} is not on the QUIC port"
                    );
                }
                assert_eq!(service_type, "ClusterIP");
                assert!(refers_to(
                    service_value("externalIPs"),
                    "google_compute_address.gateway"
                ));
            }
            "gateway-azure" => {
                let address = config.resource("azurerm_public_ip");
                assert_eq!(literal(required(address, "sku")), Some("Standard"));
                assert_eq!(
                    literal(required(address, "allocation_method")),
                    Some("Static")
                );
                assert_eq!(service_type, "LoadBalancer");
                let annotations = service_value("annotations");
                assert!(
                    field(annotations, "service.beta.kubernetes.io/azure-pip-name")
                        .is_some_and(|name| refers_to(name, "azurerm_public_ip.gateway")),
                    "{module}: the QUIC Service is not bound to the public IP"
                );
                assert_eq!(
                    text(service_value("loadBalancerSourceRanges")),
                    "var.peer_cidrs"
                );
            }
            other => panic!("no expectations for {other}"),
        }
    }
}

#[test]
fn every_gateway_module_outputs_the_address_it_advertises_and_the_cluster_name() {
    for module in GATEWAYS {
        let config = Config::load(&gateway(module));
        let output = |name: &str| {
            let body = config
                .named("output", name)
                .unwrap_or_else(|| panic!("{module}: no output {name}"));
            required(body, "value").clone()
        };
        assert_eq!(
            text(&output("cluster_name")),
            "var.cluster_name",
            "{module}"
        );
        assert_eq!(
            text(&output("gateway_address")),
            "local.gateway_address",
            "{module}"
        );
        let address = config
            .local("gateway_address")
            .unwrap_or_else(|| panic!("{module}: no local gateway_address"));
        assert!(
            text(address).ends_with(":${var.quic_port}\""),
            "{module}: gateway_address is not host:quic_port but {}",
            text(address)
        );
        let values = config.helm_values();
        assert_eq!(
            field(&values, "cluster").map(text).as_deref(),
            Some("var.cluster_name"),
            "{module}: the chart's cluster is not the cluster's name"
        );
        let advertised = field(&values, "gateway").and_then(|g| field(g, "advertiseAddress"));
        assert_eq!(
            advertised.map(text).as_deref(),
            Some("local.gateway_address"),
            "{module}: the gateway advertises another address than it outputs"
        );
        for value in ["trustDomain", "credentialsSecret"] {
            assert!(field(&values, value).is_some(), "{module}: {value} unset");
        }
    }
}

#[test]
fn the_gateway_modules_share_their_common_inputs_and_outputs() {
    let configs: Vec<(&str, Config)> = GATEWAYS
        .iter()
        .map(|module| (*module, Config::load(&gateway(module))))
        .collect();
    for input in COMMON_INPUTS {
        let shapes: BTreeSet<(String, Option<String>)> = configs
            .iter()
            .map(|(module, config)| {
                let body = config
                    .named("variable", input)
                    .unwrap_or_else(|| panic!("{module}: no variable {input}"));
                (
                    text(required(body, "type")),
                    attribute(body, "default").map(text),
                )
            })
            .collect();
        assert_eq!(
            shapes.len(),
            1,
            "{input} differs between modules: {shapes:?}"
        );
    }
    for (module, config) in &configs {
        let outputs = config.names("output");
        assert!(
            outputs.contains("gateway_address") && outputs.contains("cluster_name"),
            "{module}: outputs {outputs:?}"
        );
    }
}

#[test]
fn every_variable_and_output_of_the_gateway_modules_is_described() {
    for module in GATEWAYS {
        let config = Config::load(&gateway(module));
        for variable in config.blocks("variable") {
            let name = label(variable, 0).unwrap_or_default();
            let body = variable.body();
            assert!(
                attribute(body, "description")
                    .and_then(literal)
                    .is_some_and(|d| !d.is_empty()),
                "{module}: variable {name} has no description"
            );
            assert!(
                attribute(body, "type").is_some(),
                "{module}: variable {name} has no type"
            );
            let validated = body
                .blocks()
                .any(|block| block.identifier() == "validation");
            assert!(
                validated || !VALIDATED_INPUTS.contains(&name),
                "{module}: variable {name} is not validated"
            );
        }
        for output in config.blocks("output") {
            let name = label(output, 0).unwrap_or_default();
            assert!(
                attribute(output.body(), "description")
                    .and_then(literal)
                    .is_some_and(|d| !d.is_empty()),
                "{module}: output {name} has no description"
            );
        }
    }
}

/// The three gateway modules and the example that wires them.
fn gateways_and_example() -> impl Iterator<Item = PathBuf> {
    GATEWAYS
        .iter()
        .map(|module| gateway(module))
        .chain([multicloud()])
}

#[test]
fn every_module_requires_terraform_1_0_and_leaves_providers_to_its_caller() {
    let folders = gateways_and_example();
    for folder in folders {
        let place = folder.display().to_string();
        let config = Config::load(&folder);
        let terraform: Vec<&Block> = config.blocks("terraform").collect();
        assert_eq!(terraform.len(), 1, "{place}: one terraform block expected");
        let settings = terraform[0].body();
        assert_eq!(
            attribute(settings, "required_version").and_then(literal),
            Some(">= 1.0"),
            "{place}"
        );
        let providers = settings
            .blocks()
            .find(|block| block.identifier() == "required_providers")
            .unwrap_or_else(|| panic!("{place}: no required_providers"));
        let mut names = BTreeSet::new();
        for requirement in providers.body().attributes() {
            let pinned = ["source", "version"]
                .iter()
                .all(|key| field(requirement.expr(), key).and_then(literal).is_some());
            assert!(
                pinned,
                "{place}: provider {} lacks a source or version",
                requirement.key()
            );
            names.insert(requirement.key().to_owned());
        }
        assert!(names.contains("helm"), "{place}: no helm provider");
        if folder != multicloud() {
            assert_eq!(
                names.len(),
                2,
                "{place}: a cloud provider and helm expected: {names:?}"
            );
            assert_eq!(
                config.blocks("provider").count(),
                0,
                "{place}: a module configures a provider; its caller passes them"
            );
        }
    }
}

/// Every folder under `terraform/` that holds `.tf` files, but Terraform's own working folders.
fn terraform_folders() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![root().join("terraform")];
    while let Some(folder) = folders.pop() {
        let mut has_tf = false;
        for entry in std::fs::read_dir(&folder).expect("a readable folder") {
            let path = entry.expect("a readable folder entry").path();
            if path.is_dir() && !file_name(&path).starts_with('.') {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "tf") {
                has_tf = true;
            }
        }
        if has_tf {
            found.push(folder);
        }
    }
    found.sort();
    found
}

#[test]
fn no_module_uses_what_terraform_1_0_refuses() {
    let folders = terraform_folders();
    for module in GATEWAYS {
        assert!(folders.contains(&gateway(module)), "{module} not found");
    }
    let mut found = Vec::new();
    for folder in &folders {
        let config = Config::load(folder);
        for (file, body) in &config.files {
            let place = format!("{}/{file}", folder.display());
            newer_than_terraform_1_0(body, &place, &mut found);
        }
    }
    assert!(
        found.is_empty(),
        "Terraform 1.0 would refuse:\n{}",
        found.join("\n")
    );
}

/// The first cells of the rows of a README's table under a heading, without backticks.
fn table_rows(readme: &str, heading: &str) -> Vec<Vec<String>> {
    readme
        .lines()
        .skip_while(|line| line.trim() != heading)
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| {
            line.starts_with('|') && !line.starts_with("|--") && !line.starts_with("| Name")
        })
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn every_gateway_module_readme_lists_its_inputs_and_outputs() {
    for module in GATEWAYS {
        let config = Config::load(&gateway(module));
        let path = gateway(module).join("README.md");
        let readme = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let inputs = table_rows(&readme, "## Inputs");
        let listed: BTreeSet<String> = inputs.iter().map(|row| row[0].clone()).collect();
        assert_eq!(listed, config.names("variable"), "{module}: README inputs");
        for row in &inputs {
            let body = config
                .named("variable", &row[0])
                .expect("a listed variable");
            let required = if attribute(body, "default").is_some() {
                "no"
            } else {
                "yes"
            };
            assert_eq!(
                row.last().map(String::as_str),
                Some(required),
                "{module}: README says whether {} is required, wrongly",
                row[0]
            );
        }
        let outputs: BTreeSet<String> = table_rows(&readme, "## Outputs")
            .into_iter()
            .map(|row| row[0].clone())
            .collect();
        assert_eq!(outputs, config.names("output"), "{module}: README outputs");
        for section in ["## Usage", "## Requirements", "## Providers"] {
            assert!(
                readme.contains(section),
                "{module}: README has no {section}"
            );
        }
    }
}

#[test]
fn terraform_fmt_finds_nothing_to_change() {
    let Some(terraform) = terraform_or_skip() else {
        return;
    };
    let settings = tempfile::NamedTempFile::new().expect("a temporary file");
    let output = Command::new(terraform)
        .args(["fmt", "-check", "-recursive", "-diff", "-no-color"])
        .arg(root().join("terraform"))
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", settings.path())
        .output()
        .expect("running terraform fmt");
    assert!(
        output.status.success(),
        "terraform fmt would change:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn checkov_passes_the_gateway_modules_and_the_multicloud_example() {
    let Some(checkov) = tool("checkov-path") else {
        eprintln!(
            "skipped: checkov is missing; install it with `bash scripts/terraform-tools.sh checkov`"
        );
        return;
    };
    let folders = gateways_and_example();
    for folder in folders {
        let place = folder.display().to_string();
        let output = Command::new(&checkov)
            .arg("--directory")
            .arg(&folder)
            // Not --quiet: it leaves the skipped checks, and their reasons, out of the report.
            .args([
                "--framework",
                "terraform",
                "--skip-download",
                "--output",
                "json",
            ])
            .output()
            .expect("running checkov");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{place}: checkov's report is not JSON ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let summary = &report["summary"];
        assert!(
            summary["resource_count"].as_u64().unwrap_or(0) > 0,
            "{place}: checkov found no resources: {summary}"
        );
        assert_eq!(
            summary["parsing_errors"].as_u64(),
            Some(0),
            "{place}: {summary}"
        );
        let failed: Vec<String> = report["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|check| {
                format!(
                    "{} {} {}",
                    check["check_id"], check["resource"], check["file_path"]
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{place}: checkov failed:\n{}",
            failed.join("\n")
        );
        for skipped in report["results"]["skipped_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let reason = skipped["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or_default();
            assert!(
                reason.len() > 20 && reason != "No comment provided",
                "{place}: {} skipped without a reason",
                skipped["check_id"]
            );
        }
    }
}
