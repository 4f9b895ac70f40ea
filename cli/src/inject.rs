//! `strait inject`: adds strait's sidecar to the pods of Kubernetes YAML (Pods, Deployments,
//! StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs, and Lists of them) and prints the
//! result, as `linkerd inject` does; other kinds pass through unchanged. The mutation is the
//! gateway's (`strait_gateway::kubernetes::inject`), the one the admission webhook applies.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use clap::Args;
use strait_gateway::kubernetes::inject::{self, Injection, Outcome};

#[derive(Args)]
pub struct InjectArgs {
    /// A YAML file of one or more documents ("-" reads standard input); may be repeated.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The trust bundle (PEM) sidecars verify peers with; default: the current context's, else
    /// none (the sidecars read it from ConfigMap strait-trust-bundle in their namespace).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The gateway's workload API as pods reach it (host:port).
    #[arg(long, default_value = "strait-gateway.strait-system.svc:4434")]
    gateway: String,
    /// The strait image of the sidecar and its init container.
    #[arg(long, default_value = concat!("strait:", env!("CARGO_PKG_VERSION")))]
    image: String,
}

/// Runs `strait inject`: the YAML on standard output, what was done to each pod on standard
/// error.
pub fn run(context: Option<&str>, args: InjectArgs) -> Result<()> {
    // The bundle given, else the current context's, else none: the sidecar then reads it from
    // a ConfigMap of its namespace, which is said here.
    let bundle = match &args.bundle {
        Some(path) => Some(path.clone()),
        None => crate::context::load()
            .ok()
            .and_then(|(path, contexts)| contexts.select(context, &path).ok())
            .map(|c| c.bundle),
    };
    let bundle = match bundle {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the bundle {}", path.display()))?,
        ),
        None => {
            eprintln!(
                "no --bundle and no context: injected sidecars read the trust bundle from ConfigMap {} (key bundle.pem) in their namespace: kubectl -n NAMESPACE create configmap {} --from-file=bundle.pem",
                inject::BUNDLE_CONFIG_MAP,
                inject::BUNDLE_CONFIG_MAP
            );
            None
        }
    };
    let injection = Injection {
        image: args.image.clone(),
        gateway: args.gateway.clone(),
        bundle,
    };
    let mut out = String::new();
    for file in &args.files {
        out.push_str(&inject_file(file, &injection)?);
    }
    print!("{out}");
    Ok(())
}

/// The documents of one file with their pods injected, as one YAML stream.
fn inject_file(file: &Path, injection: &Injection) -> Result<String> {
    let (source, text) = crate::read_limited(file)?;
    let documents =
        strait_federation::resource::yaml_documents(&text).map_err(|e| anyhow!("{source}: {e}"))?;
    let mut out = String::new();
    for (i, mut document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let name = format!(
            "{} {}",
            document["kind"].as_str().unwrap_or("?"),
            document["metadata"]["name"].as_str().unwrap_or("?")
        );
        let outcomes = inject::inject_object(&mut document, injection)
            .map_err(|e| anyhow!("{source}: document {} ({name}): {e}", i + 1))?;
        for outcome in outcomes {
            match outcome {
                Outcome::Injected => eprintln!("{name}: injected"),
                Outcome::Skipped(why) => eprintln!("{name}: skipped ({why})"),
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&document).map_err(|e| anyhow!("{source}: {e}"))?);
    }
    Ok(out)
}
