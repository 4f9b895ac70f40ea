//! `strait-proxy`: strait's sidecar alone. `strait sidecar run` hands over to it when it sits
//! beside `strait`; it takes the same flags.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strait_cli::{process, proxy};

/// Built with the `mimalloc` feature, the sidecar allocates with mimalloc: it allocates and
/// frees dozens of small buffers per request, more at once than the C allocator's per-thread
/// cache holds (docs/dataplane.md, "Memory").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// strait's sidecar alone: `strait-proxy run` is `strait sidecar run` in a binary without the
/// gateway and the operator commands, which keeps less code resident.
#[derive(Parser)]
#[command(name = "strait-proxy", version, long_about = None, propagate_version = true)]
struct Cli {
    /// Taken and ignored, as `strait sidecar run` takes it: a sidecar uses no context.
    #[arg(long, global = true, hide = true)]
    context: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sidecar until SIGTERM or SIGINT, as `strait sidecar run` does. Prints one JSON line
    /// with its bound addresses once it is certified and listening.
    Run(Box<proxy::RunArgs>),
}

fn main() -> ExitCode {
    let Cli {
        context: _,
        command: Command::Run(args),
    } = Cli::parse();
    process::run_to_exit(Some(args.threads()), proxy::run(*args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
