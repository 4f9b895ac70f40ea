//! `strait dashboard`: where the web dashboard of the context's gateway is (its admin port), and
//! a browser opened on it where there is one.

use anyhow::Result;
use clap::Args;
use strait_federation::proto::operator::StatusRequest;

use crate::context;

/// Options of `strait dashboard`.
#[derive(Args)]
pub struct DashboardArgs {
    /// Print the dashboard's URL and exit, without opening a browser.
    #[arg(long)]
    url: bool,
}

/// Runs `strait dashboard`.
pub async fn run(context: Option<&str>, args: DashboardArgs) -> Result<()> {
    let (_, mut client) = context::connect(context).await?;
    let status = client
        .status(StatusRequest {})
        .await
        .map_err(crate::status)?
        .into_inner();
    let url = status.dashboard_url;
    if args.url {
        println!("{url}");
        return Ok(());
    }
    println!("strait dashboard of cluster {}: {url}", status.cluster);
    if graphical() {
        let opened = std::process::Command::new(opener())
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_err() {
            println!("(no browser could be opened: open the address by hand)");
        }
    } else {
        println!(
            "(no display here: open the address in a browser; from another machine, forward the \
             gateway's admin port, e.g. kubectl -n strait-system port-forward deploy/strait-gateway \
             PORT)"
        );
    }
    Ok(())
}

/// Whether a browser can be shown: a desktop session, or macOS.
fn graphical() -> bool {
    cfg!(target_os = "macos")
        || std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some()
}

fn opener() -> &'static str {
    if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    }
}
