//! `strait check`: one line per check, `[ok]`, `[warn]` or `[fail]` with a hint, grouped as
//! `linkerd check` groups them; non-zero exit when any check fails. With `--pre`, whether a
//! Kubernetes cluster can take strait (`pre`); without, how the mesh stands as the context's
//! gateway sees it: trust, the gateway, every link, policies, DNS (`mesh`), and in Kubernetes
//! mode the cluster's CRDs, the gateway's rights and the injector's webhook (`kubernetes`).

mod kubernetes;
mod mesh;
mod pre;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

/// Certificates expiring sooner than this are warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Args)]
pub struct CheckArgs {
    /// Check that a Kubernetes cluster can take strait, before installing it. Without it:
    /// check the mesh through the context's gateway.
    #[arg(long)]
    pub(crate) pre: bool,
    /// The kubeconfig of the cluster (--pre: to install into; else, in Kubernetes mode, the
    /// gateway's, for its CRDs and webhook); default: $KUBECONFIG, else ~/.kube/config, else
    /// the pod's service account.
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// --pre: the namespace strait is installed in.
    #[arg(short, long, default_value = "strait-system")]
    pub(crate) namespace: String,
    /// --pre: the Secret holding the cluster's credentials (`strait trust issue` output).
    #[arg(long, default_value = "strait-cluster-credentials")]
    pub(crate) credentials_secret: String,
    /// --pre: the cluster's name, checked against the issuer in that Secret.
    #[arg(long)]
    pub(crate) cluster: Option<String>,
    /// Output format: table (the [ok] lines) or json.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    pub(crate) output: String,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check's line.
#[derive(Debug, Serialize)]
pub struct Check {
    pub group: &'static str,
    pub status: Status,
    pub description: String,
    /// What to do about a warning or a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The lines of a run, in order.
#[derive(Default)]
pub(crate) struct Report {
    checks: Vec<Check>,
}

impl Report {
    pub(crate) fn push(
        &mut self,
        group: &'static str,
        status: Status,
        description: String,
        hint: Option<String>,
    ) {
        self.checks.push(Check {
            group,
            status,
            description,
            hint,
        });
    }
    pub(crate) fn ok(&mut self, group: &'static str, description: impl Into<String>) {
        self.push(group, Status::Ok, description.into(), None);
    }
    pub(crate) fn warn(
        &mut self,
        group: &'static str,
        description: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(group, Status::Warn, description.into(), Some(hint.into()));
    }
    pub(crate) fn fail(
        &mut self,
        group: &'static str,
        description: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(group, Status::Fail, description.into(), Some(hint.into()));
    }
    pub(crate) fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// Checks a certificate's expiry (Unix seconds): fails when it passed, warns within
    /// [`EXPIRY_WARNING`] unless `renewed` (short-lived certificates renewed automatically).
    pub(crate) fn expiry(
        &mut self,
        group: &'static str,
        what: &str,
        not_after: u64,
        renewed: bool,
        hint: &str,
    ) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let date = day(not_after);
        if not_after <= now {
            self.fail(group, format!("{what} expired on {date}"), hint);
        } else if !renewed && not_after - now < EXPIRY_WARNING.as_secs() {
            self.warn(
                group,
                format!("{what} expires on {date}"),
                format!("{hint} soon"),
            );
        } else {
            self.ok(group, format!("{what} is valid until {date}"));
        }
    }
}

/// A Unix time as its UTC date.
fn day(unix_seconds: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds as i64)
        .map_or_else(|_| format!("{unix_seconds}"), |t| t.date().to_string())
}

/// Runs `strait check`; an error when any check failed (after every line is printed).
pub async fn run(context: Option<&str>, args: CheckArgs) -> Result<()> {
    let mut report = Report::default();
    if args.pre {
        pre::run(&args, &mut report).await;
    } else {
        mesh::run(context, args.kubeconfig.as_deref(), &mut report).await;
    }
    print(&report, &args.output)?;
    if report.worst() == Status::Fail {
        bail!("some checks failed");
    }
    Ok(())
}

fn print(report: &Report, format: &str) -> Result<()> {
    if format == "json" {
        let value = serde_json::json!({
            "status": report.worst(),
            "checks": report.checks,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut group = "";
    for check in &report.checks {
        if check.group != group {
            if !group.is_empty() {
                println!();
            }
            group = check.group;
            println!("{group}\n{}", "-".repeat(group.len()));
        }
        let mark = match check.status {
            Status::Ok => "[ok]",
            Status::Warn => "[warn]",
            Status::Fail => "[fail]",
        };
        println!("{mark} {}", check.description);
        if let Some(hint) = &check.hint {
            println!("    hint: {hint}");
        }
    }
    let summary = match report.worst() {
        Status::Ok => "[ok]",
        Status::Warn => "[ok] with warnings",
        Status::Fail => "[fail]",
    };
    println!("\nStatus check results are {summary}");
    Ok(())
}
