//! Revocation at a real gateway: a revoked bootstrap token certifies no new sidecar, a revoked
//! workload identity can no longer renew (with certificates of 4 s, renewals are seen failing
//! within seconds), and a revoked operator certificate is refused by the operator API.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use strait_tests::metric;
use strait_tests::workloads::linked_pair;
use strait_tests::{Process, wait_for};

fn renewals(sidecar: &Process) -> Result<f64> {
    let (_, text) = strait_tests::http_get(sidecar.addr("admin")?, "/metrics")?;
    Ok(metric(&text, "strait_certificate_renewals_total", &[]).unwrap_or(0.0))
}

#[test]
fn revoked_tokens_identities_and_operator_certificates_are_refused() -> Result<()> {
    let (mesh, _east, _west) = linked_pair(Some("  certTtlSeconds: 4\n  leaseSeconds: 15"))?;
    let made = mesh.ctl(
        "east",
        &["sidecar", "token", "-n", "shop", "--service-account", "web"],
    );
    ensure!(made.ok, "{made:?}");
    // The id is said on stderr, with the command that revokes it.
    let token_id = made
        .stderr
        .split("strait revoke token ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .context("no token id on stderr")?
        .trim()
        .to_owned();
    let bootstrap = mesh.file("web.bootstrap.yaml", &made.stdout)?;
    let run = |name: &str| {
        Process::start(
            &mesh,
            name,
            &[
                "sidecar".into(),
                "run".into(),
                "--bootstrap".into(),
                bootstrap.display().to_string(),
                "--admin-addr".into(),
                "127.0.0.1:0".into(),
            ],
        )
    };
    let first = run("web-1")?;

    // The token revoked: the running sidecar goes on (it renews with its certificate), a new one
    // with the same document is refused, saying why.
    let said = mesh
        .ctl("east", &["revoke", "token", &token_id])
        .success()?;
    ensure!(said.contains("revoked at the gateway of east"), "{said}");
    let again = mesh
        .ctl("east", &["revoke", "token", &token_id])
        .success()?;
    ensure!(again.contains("was already revoked"), "{again}");
    let refused = run("web-2")
        .err()
        .context("a revoked token certified a sidecar")?;
    let log = std::fs::read_to_string(mesh.dir.path().join("web-2.log")).unwrap_or_default();
    ensure!(
        log.contains(&format!("bootstrap token {token_id} was revoked")),
        "{refused:#}\n{log}"
    );
    let before = renewals(&first)?;
    wait_for(
        Duration::from_secs(10),
        "a renewal after the token's revocation",
        || Ok((renewals(&first)? > before).then_some(())),
    )?;

    // The identity revoked: renewals fail from then on.
    let identity = "spiffe://example.mesh/cluster/east/ns/shop/sa/web";
    mesh.ctl("east", &["revoke", "identity", identity])
        .success()?;
    // The first renewal after the revocation is refused, naming it; from then on none lands.
    wait_for(
        Duration::from_secs(10),
        "a renewal refused for the revoked identity",
        || {
            Ok(first
                .log_tail()
                .contains(&format!("identity {identity} was revoked"))
                .then_some(()))
        },
    )?;
    let settled = renewals(&first)?;
    std::thread::sleep(Duration::from_secs(6)); // two renewal periods of a 4 s certificate
    ensure!(
        renewals(&first)? == settled,
        "a revoked identity renewed its certificate"
    );

    // An operator certificate revoked: the operator API refuses it from the next call.
    let contexts: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&mesh.config)?)?;
    let cert_path = contexts["contexts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "east")
        .and_then(|c| c["cert"].as_str())
        .context("east's operator certificate")?
        .to_owned();
    let pem = std::fs::read_to_string(&cert_path)?;
    let fingerprint = strait_federation::pki::fingerprint(
        &strait_federation::pki::parse_certs(&pem, std::path::Path::new(&cert_path))?[0],
    );
    mesh.ctl("east", &["revoke", "certificate", &fingerprint])
        .success()?;
    let refused = mesh.ctl("east", &["get", "services"]);
    ensure!(
        !refused.ok
            && refused
                .stderr
                .contains(&format!("certificate {fingerprint}")),
        "{refused:?}"
    );
    Ok(())
}
