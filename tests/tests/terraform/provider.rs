//! strait's Terraform provider driven by real Terraform (1.0.3) against real gateways on
//! loopback: the contract's flow on `terraform/examples/local` (apply, a plan with nothing to
//! change, drift after an unlink outside Terraform, destroy), a policy applied through
//! Terraform and enforced by another cluster's sidecar, and the errors operators meet.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use strait_tests::terraform::{Workspace, terraform_or_skip};
use strait_tests::workloads::{client, endpoint, wait_connected, wait_route};
use strait_tests::{Mesh, NO_WEST_TO_API, http_get_host, wait_for};

const VARS: [&str; 4] = [
    "-var",
    "strait_config=STRAIT_CONFIG",
    "-var",
    "clusters=[\"east\",\"west\"]",
];

/// The example's variables, with this mesh's contexts file.
fn vars(mesh: &Mesh) -> Vec<String> {
    VARS.iter()
        .map(|v| v.replace("STRAIT_CONFIG", &mesh.config.to_string_lossy()))
        .collect()
}

fn with<'a>(command: &[&'a str], vars: &'a [String]) -> Vec<&'a str> {
    command
        .iter()
        .copied()
        .chain(vars.iter().map(String::as_str))
        .collect()
}

#[test]
fn terraform_links_clusters_sees_an_unlink_as_drift_and_unlinks_on_destroy() -> Result<()> {
    let Some(terraform) = terraform_or_skip() else {
        return Ok(());
    };
    let mesh = Mesh::new()?;
    let _east = mesh.start("east", None)?;
    let _west = mesh.start("west", None)?;
    let workspace = Workspace::new(&terraform, &mesh.config)?;
    let example = "examples/local";
    let vars = vars(&mesh);
    workspace.init(example)?;

    let started = Instant::now();
    let applied = workspace
        .run(
            example,
            &with(&["apply", "-auto-approve", "-no-color"], &vars),
        )
        .success()?;
    println!("apply of 1 link: {:?}", started.elapsed());
    ensure!(applied.contains("1 added"), "{applied}");
    // Both gateways say so, as the contract's check reads them.
    for (cluster, peer, role) in [("east", "west", "dialer"), ("west", "east", "acceptor")] {
        let view = mesh.link_view(cluster, peer)?;
        ensure!(
            view["state"] == "connected" && view["role"] == role,
            "{cluster}: {view}"
        );
    }

    let started = Instant::now();
    let plan = workspace.run(
        example,
        &with(&["plan", "-detailed-exitcode", "-no-color"], &vars),
    );
    println!("no-change plan: {:?}", started.elapsed());
    ensure!(plan.code == 0, "a plan after apply wants changes: {plan:?}");

    // Unlinked outside Terraform: the plan makes the link again.
    mesh.ctl("east", &["unlink", "west"]).success()?;
    let plan = workspace.run(
        example,
        &with(&["plan", "-detailed-exitcode", "-no-color"], &vars),
    );
    ensure!(plan.code == 2, "an unlink went unseen: {plan:?}");
    ensure!(
        plan.stdout
            .contains("module.mesh.strait_link.pair[\"east/west\"] will be created"),
        "{}",
        plan.stdout
    );
    workspace
        .run(
            example,
            &with(&["apply", "-auto-approve", "-no-color"], &vars),
        )
        .success()?;
    wait_connected(&mesh, "east", "west")?;

    // The join token never reached the state.
    let state = std::fs::read_to_string(workspace.path(example).join("terraform.tfstate"))?;
    ensure!(
        !state.contains("token:") && !state.contains("\"token\""),
        "{state}"
    );
    ensure!(state.contains("\"dialer_cluster\": \"east\""), "{state}");

    // The list reordered: the link turns round. Terraform destroys east/west and creates
    // west/east in either order; the destroy must not take the new link with it.
    let reversed: Vec<String> = vars
        .iter()
        .map(|v| v.replace("[\"east\",\"west\"]", "[\"west\",\"east\"]"))
        .collect();
    workspace
        .run(
            example,
            &with(&["apply", "-auto-approve", "-no-color"], &reversed),
        )
        .success()?;
    let view = mesh.link_view("west", "east")?;
    ensure!(view["role"] == "dialer", "west does not dial east: {view}");
    wait_connected(&mesh, "east", "west")?;
    let plan = workspace.run(
        example,
        &with(&["plan", "-detailed-exitcode", "-no-color"], &reversed),
    );
    ensure!(
        plan.code == 0,
        "the turned link is not as configured: {plan:?}"
    );

    let destroyed = workspace
        .run(
            example,
            &with(&["destroy", "-auto-approve", "-no-color"], &reversed),
        )
        .success()?;
    ensure!(destroyed.contains("1 destroyed"), "{destroyed}");
    for (cluster, peer) in [("east", "west"), ("west", "east")] {
        let view = mesh.link_view(cluster, peer)?;
        ensure!(view.is_null(), "{cluster} still has {view}");
    }
    Ok(())
}

/// A root module linking east and west and applying `policy` in east, with the catalog east
/// sees as an output.
fn policy_module(policy: &str) -> String {
    format!(
        r#"terraform {{
  required_providers {{
    strait = {{ source = "strait.dev/strait/strait" }}
  }}
}}

provider "strait" {{}}

module "mesh" {{
  source   = "../modules/mesh"
  clusters = [{{ name = "east", address = "" }}, {{ name = "west", address = "" }}]
}}

resource "strait_policy" "no_west" {{
  context    = "east"
  yaml       = <<-YAML
{policy}
YAML
  depends_on = [module.mesh]
}}

data "strait_services" "east" {{
  context    = "east"
  namespace  = "shop"
  depends_on = [module.mesh]
}}

output "services" {{
  value = data.strait_services.east.services
}}
"#
    )
}

#[test]
fn a_policy_applied_through_terraform_in_east_is_enforced_by_wests_sidecar() -> Result<()> {
    let Some(terraform) = terraform_or_skip() else {
        return Ok(());
    };
    let mesh = Mesh::new()?;
    let _east = mesh.start("east", None)?;
    let mut west = mesh.start("west", None)?;
    let workspace = Workspace::new(&terraform, &mesh.config)?;
    let module = workspace.root_module("policy", &policy_module(NO_WEST_TO_API))?;
    let folder = module
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("policy");
    workspace.init(folder)?;

    // A bad document fails the plan, naming the field, before anything is made.
    let bad = NO_WEST_TO_API.replace("action: deny", "action: maybe");
    std::fs::write(module.join("main.tf"), policy_module(&bad))?;
    let refused = workspace.run(folder, &["apply", "-auto-approve", "-no-color"]);
    ensure!(refused.code != 0, "a bad policy was applied: {refused:?}");
    ensure!(
        refused.stderr.contains("spec.action") && refused.stderr.contains("maybe"),
        "{}",
        refused.stderr
    );
    ensure!(
        mesh.link_view("east", "west")?.is_null(),
        "a refused plan linked"
    );

    std::fs::write(module.join("main.tf"), policy_module(NO_WEST_TO_API))?;
    let api_east = endpoint(
        &mesh,
        "east",
        "api",
        "api-east-0",
        &[("http", 8080, "http")],
    )?;
    let _api_west = endpoint(
        &mesh,
        "west",
        "api",
        "api-west-0",
        &[("http", 8080, "http")],
    )?;
    let web_west = client(&mesh, "west", &[])?;
    let west_proxy = web_west.addr("proxy")?;
    let host = "api.shop.svc.clusterset.local";
    wait_route(west_proxy, host, "west")?;
    let applied_at = Instant::now();
    workspace
        .run(folder, &["apply", "-auto-approve", "-no-color"])
        .success()?;
    wait_for(Duration::from_secs(10), "west's sidecar denying", || {
        Ok((http_get_host(west_proxy, host, "/")?.0 == 403).then_some(()))
    })?;
    println!(
        "deny enforced by west's sidecar {:?} after terraform apply began",
        applied_at.elapsed()
    );

    // The data source saw the catalog through east: api runs in both clusters.
    let output = workspace
        .run(folder, &["output", "-json", "services"])
        .success()?;
    let services: serde_json::Value = serde_json::from_str(&output)?;
    let api = services
        .as_array()
        .and_then(|list| list.iter().find(|s| s["name"] == "api"));
    ensure!(
        api.is_some_and(|s| s["clusters"].as_array().is_some_and(|c| c.len() == 2)),
        "{output}"
    );

    // Changed in west by hand: the plan puts Terraform's version back.
    let loosened = NO_WEST_TO_API.replace("clusters: [west]", "clusters: [north]");
    mesh.apply("west", "loosened.yaml", &loosened).success()?;
    let plan = workspace.run(folder, &["plan", "-detailed-exitcode", "-no-color"]);
    ensure!(
        plan.code == 2,
        "a change made in west went unseen: {plan:?}"
    );
    ensure!(
        plan.stdout
            .contains("strait_policy.no_west will be updated in-place"),
        "{}",
        plan.stdout
    );
    workspace
        .run(folder, &["apply", "-auto-approve", "-no-color"])
        .success()?;
    let plan = workspace.run(folder, &["plan", "-detailed-exitcode", "-no-color"]);
    ensure!(plan.code == 0, "{plan:?}");

    // A gateway that cannot be reached fails the run, naming the context and the address.
    west.kill()?;
    let unreachable = workspace.run(folder, &["plan", "-no-color"]);
    ensure!(unreachable.code != 0, "{unreachable:?}");
    let api_addr = west.api.to_string();
    ensure!(
        unreachable.stderr.contains("context west") && unreachable.stderr.contains(&api_addr),
        "{}",
        unreachable.stderr
    );
    west.start(&mesh)?;
    wait_connected(&mesh, "east", "west")?;

    // Destroyed: the policy is gone mesh-wide, and west's callers are let through again.
    workspace
        .run(folder, &["destroy", "-auto-approve", "-no-color"])
        .success()?;
    wait_for(Duration::from_secs(10), "west's sidecar allowing", || {
        Ok((http_get_host(west_proxy, host, "/")?.0 == 200).then_some(()))
    })?;
    drop(api_east);
    Ok(())
}
