//! Terraform for the tests: the binary `scripts/terraform-tools.sh` installed (Terraform 1.0.3,
//! the oldest release strait supports), strait's provider built and placed in a plugins folder
//! of the test's own, and root modules run in a folder of the test's own (copies of the
//! checkout's `terraform/` tree), so nothing is written into the checkout or the home folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, ensure};

/// The checkout's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

/// A tool's path as `scripts/terraform-tools.sh SUBCOMMAND` prints it, if it is installed.
pub fn tool(subcommand: &str) -> Option<PathBuf> {
    let output = Command::new("bash")
        .arg(root().join("scripts/terraform-tools.sh"))
        .arg(subcommand)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && path.is_file()).then_some(path)
}

/// Terraform 1.0.3; when it is not installed, a line saying how to install it (the caller
/// then skips).
pub fn terraform_or_skip() -> Option<PathBuf> {
    let found = tool("terraform");
    if found.is_none() {
        eprintln!("skipped: Terraform 1.0.3 is missing (bash scripts/terraform-tools.sh install)");
    }
    found
}

/// The plugins folder holding the provider this checkout builds (`scripts/terraform-provider.sh`,
/// in the profile of the calling test or benchmark, run once per process). It lies in the
/// build's own `target/tmp`, made anew by each process, so runs leave nothing behind.
pub fn plugins() -> Result<&'static Path> {
    static PLUGINS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = PLUGINS.get_or_init(|| {
        // Test executables live in target/<profile>/deps.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("test executables live in target/<profile>/deps")?;
        let release = profile.ends_with("release");
        let dir = profile
            .parent()
            .ok_or("no target folder")?
            .join("tmp")
            .join(if release {
                "terraform-plugins-release"
            } else {
                "terraform-plugins"
            });
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let output = Command::new("bash")
            .arg(root().join("scripts/terraform-provider.sh"))
            .args(if release { &[][..] } else { &["--debug"][..] })
            .env("STRAIT_TERRAFORM_PLUGINS", &dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "scripts/terraform-provider.sh failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if !path.is_file() {
            return Err(format!("the provider is not at {}", path.display()));
        }
        Ok(dir)
    });
    match built {
        Ok(dir) => Ok(dir),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// A copy of the checkout's `terraform/` tree (modules and examples; not the provider's
/// sources) where root modules run.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    terraform: PathBuf,
    cli_config: PathBuf,
    /// The strait contexts file the provider reads (`STRAIT_CONFIG`).
    pub strait_config: PathBuf,
}

/// How long one Terraform command may take in a test.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// What one Terraform command did.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 when killed).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The output, or an error with both streams when the command failed.
    pub fn success(self) -> Result<String> {
        ensure!(
            self.code == 0,
            "terraform exited {}:\n{}\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self.stdout)
    }
}

impl Workspace {
    /// A copy of `terraform/modules` and `terraform/examples`, with Terraform configured to find
    /// strait's provider in the test's plugins folder and nowhere else.
    pub fn new(terraform: &Path, strait_config: &Path) -> Result<Workspace> {
        let dir = tempfile::Builder::new().prefix("strait-tf-").tempdir()?;
        for folder in ["modules", "examples"] {
            copy_tree(
                &root().join("terraform").join(folder),
                &dir.path().join(folder),
            )?;
        }
        let cli_config = dir.path().join("terraformrc");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"strait.dev/*/*\"]\n  }}\n}}\n",
                plugins()?.display()
            ),
        )?;
        Ok(Workspace {
            dir,
            terraform: terraform.to_owned(),
            cli_config,
            strait_config: strait_config.to_owned(),
        })
    }

    /// A folder of the workspace (`examples/local`, or one a test writes).
    pub fn path(&self, folder: &str) -> PathBuf {
        self.dir.path().join(folder)
    }

    /// Writes a root module of the test's own: `main.tf` in a new folder of the workspace.
    pub fn root_module(&self, folder: &str, main_tf: &str) -> Result<PathBuf> {
        let path = self.path(folder);
        std::fs::create_dir_all(&path)?;
        std::fs::write(path.join("main.tf"), main_tf)?;
        Ok(path)
    }

    /// `terraform ARGS` in `folder`, as an operator runs it (no prompts, no colours); killed
    /// after [`RUN_LIMIT`].
    pub fn run(&self, folder: &str, args: &[&str]) -> Run {
        let child = Command::new(&self.terraform)
            .current_dir(self.path(folder))
            .args(args)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("STRAIT_CONFIG", &self.strait_config)
            .env_remove("TF_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let failed = |stderr: String| Run {
            code: -1,
            stdout: String::new(),
            stderr,
        };
        let mut child = match child {
            Ok(child) => child,
            Err(e) => return failed(format!("cannot run terraform: {e}")),
        };
        // Both pipes drain in threads so a full one never stalls Terraform.
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() > RUN_LIMIT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        let (stdout, mut stderr) = (
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        );
        if status.is_none() {
            stderr.push_str(&format!("\nterraform killed after {RUN_LIMIT:?}"));
        }
        Run {
            code: status.and_then(|s| s.code()).unwrap_or(-1),
            stdout,
            stderr,
        }
    }

    /// `terraform init` in `folder`.
    pub fn init(&self, folder: &str) -> Result<()> {
        self.run(folder, &["init", "-no-color"])
            .success()
            .with_context(|| format!("terraform init in {folder}"))?;
        Ok(())
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        // What a local run of Terraform leaves in the checkout is not copied.
        if name.to_string_lossy().starts_with(".terraform")
            || name.to_string_lossy().ends_with(".tfstate")
        {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name))?;
        } else {
            std::fs::copy(&path, to.join(&name))?;
        }
    }
    Ok(())
}
