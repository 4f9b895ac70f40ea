//! `strait trust rotate add|reissue|retire`: a root rotation in three stages, each one command
//! that every gateway takes live (no restart) before the next may start. `add` puts a new root
//! beside the old in every gateway's bundle and every context's; `reissue` re-keys each
//! cluster's issuer under the new root from a request made in the gateway (the issuer's key
//! never travels), renews each context's operator certificate, and waits until every workload
//! holds a certificate of its new issuer; `retire` takes the old root out of every bundle.
//! Each prints one line per gateway and fails unless every gateway took the stage.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Subcommand;
use strait_federation::pki::{self, ISSUER_LIFETIME, TrustBundle};
use strait_federation::proto::operator::{
    CreateIssuerRequestRequest, InstallIssuerRequest, RenewOperatorCertificateRequest,
    StatusRequest, StatusResponse, UpdateTrustBundleRequest,
};
use strait_gateway::api::contexts::Context;
use strait_gateway::init::TrustDir;
use strait_io::files::write_file;

/// How long `reissue` waits for workloads to hold the new issuer's certificates by default.
const RENEWAL_WAIT: &str = "60s";

#[derive(Subcommand)]
pub enum RotateCommand {
    /// Stage 1: make a new root (in --new) and add it beside the old one in every gateway's
    /// trust bundle and every context's.
    Add {
        /// The trust folder of the root in force.
        #[arg(long)]
        trust: PathBuf,
        /// The folder for the new root (made when it holds none yet).
        #[arg(long)]
        new: PathBuf,
    },
    /// Stage 2: each gateway's issuer re-signed by the new root from a request the gateway
    /// makes; each context's operator certificate renewed under it; then waits until every
    /// workload holds a certificate of its cluster's new issuer.
    Reissue {
        /// The trust folder of the new root (with root.key).
        #[arg(long)]
        trust: PathBuf,
        /// How long to wait for the workloads' renewals.
        #[arg(long, default_value = RENEWAL_WAIT, value_parser = strait_federation::duration::parse_duration)]
        wait: Duration,
    },
    /// Stage 3: the old root leaves every gateway's bundle and every context's.
    Retire {
        /// The trust folder of the root to retire.
        #[arg(long)]
        trust: PathBuf,
    },
}

/// The contexts whose gateways take a stage (`--context`, repeatable); none given: every
/// context of the trust domain in the contexts file.
pub struct Targets<'a> {
    contexts: &'a [String],
}

/// Runs one stage.
pub async fn run(command: RotateCommand, contexts: &[String]) -> Result<()> {
    let targets = Targets { contexts };
    match command {
        RotateCommand::Add { trust, new } => add(&trust, &new, &targets).await,
        RotateCommand::Reissue { trust, wait } => reissue(&trust, wait, &targets).await,
        RotateCommand::Retire { trust } => retire(&trust, &targets).await,
    }
}

/// The contexts that take a stage, with their gateways' clients and statuses.
struct Gateway {
    context: Context,
    client: crate::context::Client,
    status: StatusResponse,
}

async fn gateways(trust: &TrustDir, targets: &Targets<'_>) -> Result<Vec<Gateway>> {
    let (path, file) = crate::context::load()?;
    let chosen: Vec<Context> = if targets.contexts.is_empty() {
        file.contexts
            .iter()
            .filter(|c| c.trust_domain == trust.trust_domain)
            .cloned()
            .collect()
    } else {
        targets
            .contexts
            .iter()
            .map(|name| file.select(Some(name), &path))
            .collect::<Result<_, _>>()?
    };
    ensure!(
        !chosen.is_empty(),
        "no context of trust domain {} in {}",
        trust.trust_domain,
        path.display()
    );
    let mut gateways = Vec::new();
    for context in chosen {
        let mut client = context.connect().await?;
        let status = client
            .status(StatusRequest {})
            .await
            .with_context(|| format!("context {}: Status", context.name))?
            .into_inner();
        gateways.push(Gateway {
            context,
            client,
            status,
        });
    }
    // Every linked cluster must take each stage, or its gateway stops trusting the others'.
    let clusters: Vec<String> = gateways.iter().map(|g| g.status.cluster.clone()).collect();
    for gateway in &gateways {
        for link in &gateway.status.links {
            ensure!(
                clusters.contains(&link.cluster),
                "cluster {} is linked to {} but no context given reaches its gateway: every cluster of the mesh takes each stage (add a context for it, or name every one with --context)",
                link.cluster,
                gateway.status.cluster
            );
        }
    }
    Ok(gateways)
}

/// The roots a gateway holds, as one PEM text.
fn roots_pem(status: &StatusResponse) -> Vec<(String, String)> {
    status
        .roots
        .iter()
        .map(|r| (r.fingerprint.clone(), r.pem.clone()))
        .collect()
}

fn bundle_of(trust: &TrustDir, roots: &[(String, String)]) -> Result<TrustBundle> {
    let pem: String = roots.iter().map(|(_, p)| p.as_str()).collect();
    Ok(TrustBundle::from_pem(
        trust.trust_domain.clone(),
        &pem,
        Path::new("bundle"),
    )?)
}

/// Sends a bundle to a gateway, writes it as the context's, and says so in one line.
async fn push(gateway: &mut Gateway, bundle: &TrustBundle) -> Result<()> {
    let answer = gateway
        .client
        .update_trust_bundle(UpdateTrustBundleRequest {
            bundle_pem: bundle.to_pem().to_owned(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))
        .with_context(|| format!("{}: the gateway refused the bundle", gateway.context.name))?
        .into_inner();
    write_file(&gateway.context.bundle, bundle.to_pem(), false)?;
    println!(
        "{}: trusts {} root(s): {}{}",
        gateway.context.name,
        bundle.roots().len(),
        bundle.fingerprints().join(", "),
        if answer.changed { "" } else { " (unchanged)" }
    );
    Ok(())
}

async fn add(old: &Path, new: &Path, targets: &Targets<'_>) -> Result<()> {
    let old = TrustDir::open(old)?;
    let new = if new.join("trust.yaml").exists() {
        TrustDir::open(new)?
    } else {
        TrustDir::create(new, old.trust_domain.clone())?
    };
    ensure!(
        new.trust_domain == old.trust_domain,
        "{} is a root of {}, not of {}",
        new.dir.display(),
        new.trust_domain,
        old.trust_domain
    );
    let new_root = new.root()?.cert_pem;
    let new_fingerprint = pki::fingerprint(&new.root()?.cert()?);
    let mut gateways = gateways(&old, targets).await?;
    let mut everyone: Vec<(String, String)> = Vec::new();
    for gateway in &mut gateways {
        let mut roots = roots_pem(&gateway.status);
        if !roots.iter().any(|(f, _)| *f == new_fingerprint) {
            roots.push((new_fingerprint.clone(), new_root.clone()));
        }
        let bundle = bundle_of(&old, &roots)?;
        push(gateway, &bundle).await?;
        for (f, p) in roots {
            if !everyone.iter().any(|(e, _)| *e == f) {
                everyone.push((f, p));
            }
        }
    }
    // The new folder's bundle holds both roots while the rotation lasts; the old folder says
    // where it went, so that `retire` can leave the new root alone there.
    let both = bundle_of(&old, &everyone)?;
    write_file(&new.dir.join("bundle.pem"), both.to_pem(), false)?;
    write_file(
        &old.dir.join("rotated-to"),
        &format!("{}\n", absolute(&new.dir).display()),
        false,
    )?;
    Ok(())
}

async fn reissue(trust: &Path, wait: Duration, targets: &Targets<'_>) -> Result<()> {
    let trust = TrustDir::open(trust)?;
    let root = trust.root()?;
    let root_fingerprint = pki::fingerprint(&root.cert()?);
    let mut gateways = gateways(&trust, targets).await?;
    for gateway in &gateways {
        ensure!(
            gateway
                .status
                .roots
                .iter()
                .any(|r| r.fingerprint == root_fingerprint),
            "{}: its gateway does not trust the new root {root_fingerprint} yet: run `strait trust rotate add` first",
            gateway.context.name
        );
    }
    for gateway in &mut gateways {
        let name = gateway.context.name.clone();
        let request = gateway
            .client
            .create_issuer_request(CreateIssuerRequestRequest {})
            .await
            .map_err(|e| anyhow::anyhow!("{name}: issuer request: {}", e.message()))?
            .into_inner();
        let cluster = strait_federation::identity::ClusterName::new(&request.cluster)
            .with_context(|| format!("{name}: the gateway's cluster"))?;
        let certificate_pem =
            root.sign_cluster_csr(&request.csr, &cluster, ISSUER_LIFETIME, SystemTime::now())?;
        let installed = gateway
            .client
            .install_issuer(InstallIssuerRequest { certificate_pem })
            .await
            .map_err(|e| anyhow::anyhow!("{name}: installing the issuer: {}", e.message()))?
            .into_inner();
        renew_operator(gateway).await?;
        println!(
            "{name}: issuer of cluster {cluster} re-signed by root {}; operator certificate renewed",
            installed.root_fingerprint
        );
    }
    // Workloads renew as soon as their view names the new issuer.
    let deadline = Instant::now() + wait;
    for gateway in &mut gateways {
        let name = gateway.context.name.clone();
        loop {
            let status = gateway.client.status(StatusRequest {}).await?.into_inner();
            if status.workloads_awaiting_renewal == 0 {
                println!("{name}: every workload holds a certificate of the new issuer");
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name}: {} workload identities still hold a certificate of the old issuer after {wait:?}; run reissue again to wait longer",
                    status.workloads_awaiting_renewal
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// A new operator certificate for the context, under the gateway's issuer in force.
async fn renew_operator(gateway: &mut Gateway) -> Result<()> {
    let (key_pem, csr) = pki::new_csr()?;
    let answer = gateway
        .client
        .renew_operator_certificate(RenewOperatorCertificateRequest { csr })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: renewing the operator certificate: {}",
                gateway.context.name,
                e.message()
            )
        })?
        .into_inner();
    // The key first: a certificate without its key would lock the context out.
    write_file(&gateway.context.key, &key_pem, true)?;
    write_file(&gateway.context.cert, &answer.chain_pem, false)?;
    Ok(())
}

async fn retire(trust: &Path, targets: &Targets<'_>) -> Result<()> {
    let old = TrustDir::open(trust)?;
    let gone = pki::fingerprint(
        &pki::parse_certs(
            &std::fs::read_to_string(old.dir.join("root.crt"))
                .with_context(|| format!("{}", old.dir.join("root.crt").display()))?,
            &old.dir.join("root.crt"),
        )?[0],
    );
    let mut gateways = gateways(&old, targets).await?;
    for gateway in &mut gateways {
        let roots: Vec<(String, String)> = roots_pem(&gateway.status)
            .into_iter()
            .filter(|(f, _)| *f != gone)
            .collect();
        ensure!(
            !roots.is_empty(),
            "{}: {gone} is its only root: add and reissue under a new one first",
            gateway.context.name
        );
        let bundle = bundle_of(&old, &roots)?;
        push(gateway, &bundle).await?;
    }
    if let Ok(next) = std::fs::read_to_string(old.dir.join("rotated-to")) {
        let next = TrustDir::open(Path::new(next.trim()))?;
        write_file(&next.dir.join("bundle.pem"), &next.root()?.cert_pem, false)?;
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
