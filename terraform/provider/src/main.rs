//! `terraform-provider-strait`: started by Terraform, never by hand.

use std::io::Write as _;
use std::process::ExitCode;

use terraform_provider_strait::plugin::{self, Handshake};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("terraform-provider-strait {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // Terraform shows what a plugin writes to stderr in its own logs (TF_LOG).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_PROVIDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    strait_federation::tls::install_default_provider();
    let handshake = match Handshake::from_env(|key| std::env::var(key).ok()) {
        Ok(handshake) => handshake,
        Err(e) => {
            eprintln!("terraform-provider-strait: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("terraform-provider-strait: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(plugin::serve(handshake, |line| {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()
    }));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terraform-provider-strait: {e}");
            ExitCode::FAILURE
        }
    }
}
