//! The gateway's web dashboard in a real browser: `strait demo` runs clusters east and west with
//! live traffic between them, and headless Chromium loads east's dashboard, which must draw both
//! clusters and the traffic across them without a script error. Skipped where `chromium` is not
//! installed (Debian package `chromium`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use strait_tests::{Mesh, Process, http_get, wait_for};

/// How long the page runs in Chromium's virtual time: two polls of the mesh at least.
const VIRTUAL_TIME_MS: u32 = 5_000;

/// The longest one Chromium run may take, start to exit.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn easts_dashboard_in_chromium_draws_both_clusters_and_the_traffic_between_them() -> Result<()> {
    let Some(chromium) = on_path("chromium") else {
        println!("skipped: chromium is not installed (Debian package chromium)");
        return Ok(());
    };
    let mesh = Mesh::new()?;
    let demo_dir = mesh.dir.path().join("demo");
    let args: Vec<String> = ["demo", "--duration", "90s", "-o", "json", "--dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([demo_dir.display().to_string()])
        .collect();
    let mut demo = Process::start(&mesh, "demo", &args)?;
    ensure!(
        demo.started["event"] == "ready",
        "the demo's first line is not its ready event: {}",
        demo.started
    );
    let url = demo.started["dashboards"]["east"]
        .as_str()
        .ok_or_else(|| {
            anyhow!(
                "the ready event names no dashboard for east: {}",
                demo.started
            )
        })?
        .to_owned();

    // The CLI finds the same page from the context the demo added.
    let printed = mesh.ctl("east", &["dashboard", "--url"]).success()?;
    ensure!(
        printed.trim() == url,
        "`strait --context east dashboard --url` printed {printed:?}, the demo {url:?}"
    );

    // The graph draws `traffic` rows: wait until east's API has one across clusters.
    let admin = admin_addr(&url)?;
    wait_for(
        Duration::from_secs(30),
        "east's /api/v1/mesh showing traffic between east and west",
        || {
            let (status, body) = http_get(admin, "/api/v1/mesh")?;
            ensure!(status == 200, "/api/v1/mesh answered {status}: {body}");
            let mesh: Value = serde_json::from_str(&body).context("/api/v1/mesh is not JSON")?;
            Ok(crosses_to_or_from_west(&mesh).then_some(()))
        },
    )
    .with_context(|| demo.log_tail())?;

    let work = mesh.dir.path().join("chromium");
    std::fs::create_dir_all(&work)?;
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&artifacts)?;

    // The screenshot first: it is there to look at when an assertion below fails.
    let screenshot = artifacts.join("east.png");
    let _ = std::fs::remove_file(&screenshot);
    let flag = format!("--screenshot={}", screenshot.display());
    run_chromium(
        &chromium,
        &work,
        "screenshot",
        &[&flag, "--window-size=1400,1000"],
        &url,
    )?;
    let png = std::fs::read(&screenshot).unwrap_or_default();
    ensure!(
        png.starts_with(b"\x89PNG"),
        "Chromium wrote no screenshot at {}",
        screenshot.display()
    );
    println!("screenshot of east's dashboard: {}", screenshot.display());

    let run = run_chromium(&chromium, &work, "dom", &["--dump-dom"], &url)?;
    let dom_file = artifacts.join("east.html");
    std::fs::write(&dom_file, &run.stdout)?;
    println!(
        "east's dashboard as Chromium drew it: {}",
        dom_file.display()
    );

    let tags = start_tags(&run.stdout);
    let body = tags
        .iter()
        .find(|t| t.name == "body")
        .ok_or_else(|| anyhow!("Chromium's DOM has no body; see {}", dom_file.display()))?;
    ensure!(
        body.get("data-ready") == Some("true"),
        "the page never drew the mesh (body data-ready {:?}); see {}",
        body.get("data-ready"),
        dom_file.display()
    );
    ensure!(
        matches!(body.get("data-errors"), None | Some("0")),
        "the page counted {:?} uncaught errors; see {}",
        body.get("data-errors"),
        dom_file.display()
    );
    for cluster in ["east", "west"] {
        ensure!(
            tags.iter().any(|t| t.get("data-cluster") == Some(cluster)),
            "the service graph has no box for cluster {cluster}; see {}",
            dom_file.display()
        );
    }
    let crossing: Vec<&Tag> = tags
        .iter()
        .filter(|t| {
            let rps = t.get("data-rps").and_then(|r| r.parse::<f64>().ok());
            matches!((t.get("data-source"), t.get("data-destination")), (Some(s), Some(d)) if s != d)
                && rps.is_some_and(|r| r > 0.0)
        })
        .collect();
    ensure!(
        !crossing.is_empty(),
        "the service graph has no edge between two clusters with traffic; see {}",
        dom_file.display()
    );

    // This Chromium logs every console message of a page at INFO whatever its level, so the
    // level cannot be told from the log: the dashboard writes to the console only when
    // something is wrong (and Chromium for uncaught errors and refused loads), so any console
    // line at all is a failure.
    let console = console_lines(&run.stderr);
    ensure!(
        console.is_empty(),
        "the page wrote to the console:\n{}",
        console.join("\n")
    );

    demo.kill()?;
    Ok(())
}

/// A program's path when it is an executable file in a folder of `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The admin address in a dashboard URL (`http://127.0.0.1:PORT/dashboard/`).
fn admin_addr(url: &str) -> Result<SocketAddr> {
    url.strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| anyhow!("the dashboard URL {url:?} is not http://ADDRESS/..."))?
        .parse()
        .with_context(|| format!("the address in the dashboard URL {url:?}"))
}

/// Whether a mesh document has a `traffic` row between west and another cluster with requests
/// per second above zero.
fn crosses_to_or_from_west(mesh: &Value) -> bool {
    mesh["traffic"].as_array().into_iter().flatten().any(|row| {
        let source = row["source_cluster"].as_str().unwrap_or_default();
        let destination = row["destination_cluster"].as_str().unwrap_or_default();
        source != destination
            && (source == "west" || destination == "west")
            && row["rps"].as_f64().is_some_and(|rps| rps > 0.0)
    })
}

/// What a finished Chromium run printed.
struct ChromiumRun {
    stdout: String,
    stderr: String,
}

/// A Chromium process in a process group of its own (the browser and its helpers), killed
/// whole when dropped.
struct Browser {
    child: Option<Child>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The group's id is the browser's process id (`process_group(0)`).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs headless Chromium on `url` with `flags` and waits (bounded) for it to exit; its
/// output goes to files in `work` named after `name`.
fn run_chromium(
    chromium: &Path,
    work: &Path,
    name: &str,
    flags: &[&str],
    url: &str,
) -> Result<ChromiumRun> {
    let stdout_file = work.join(format!("{name}.out"));
    let stderr_file = work.join(format!("{name}.err"));
    let child = Command::new(chromium)
        .args([
            "--headless",
            // Chromium refuses to run as root with its sandbox, and tests often run as root.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            work.join(format!("{name}-profile")).display()
        ))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .args(flags)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_file)?)
        .stderr(std::fs::File::create(&stderr_file)?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", chromium.display()))?;
    let mut browser = Browser { child: Some(child) };
    let status = wait_for(
        CHROMIUM_LIMIT,
        &format!("chromium ({name}) to exit"),
        || match browser.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("chromium is gone"),
        },
    );
    let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    let status = status.with_context(|| tail(&stderr))?;
    // Whatever it left behind in its group goes too.
    drop(browser);
    ensure!(
        status.success(),
        "chromium ({name}) exited with {status}\n{}",
        tail(&stderr)
    );
    Ok(ChromiumRun {
        stdout: std::fs::read_to_string(&stdout_file)?,
        stderr,
    })
}

/// The last lines of Chromium's log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    format!(
        "--- last lines of chromium's log ---\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// The console messages in Chromium's log: lines like
/// `[1:1:1206/181208.612782:INFO:CONSOLE:5] "message", source: URL (5)` (older versions write
/// `CONSOLE(5)`).
fn console_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(":CONSOLE:") || line.contains(":CONSOLE("))
        .map(str::to_owned)
        .collect()
}

/// A start tag of an HTML document: its name and attributes (values unescaped).
struct Tag {
    name: String,
    attributes: BTreeMap<String, String>,
}

impl Tag {
    fn get(&self, attribute: &str) -> Option<&str> {
        self.attributes.get(attribute).map(String::as_str)
    }
}

/// The start tags of a serialized DOM, as Chromium's `--dump-dom` writes it (attribute values
/// always in double quotes, `"` and `&` escaped). Text and comments are skipped.
fn start_tags(html: &str) -> Vec<Tag> {
    let mut tags = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if rest.starts_with("!--") {
            rest = rest.find("-->").map_or("", |end| &rest[end + 3..]);
            continue;
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let mut tag = Tag {
            name: name.to_ascii_lowercase(),
            attributes: BTreeMap::new(),
        };
        rest = &rest[name_end..];
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
            if rest.is_empty() || rest.starts_with('>') {
                break;
            }
            let key_end = rest
                .find(|c: char| c.is_whitespace() || c == '=' || c == '>')
                .unwrap_or(rest.len());
            let key = rest[..key_end].to_ascii_lowercase();
            rest = &rest[key_end..];
            let value = match rest.strip_prefix("=\"") {
                Some(quoted) => {
                    let end = quoted.find('"').unwrap_or(quoted.len());
                    rest = quoted.get(end + 1..).unwrap_or("");
                    unescape(&quoted[..end])
                }
                None => String::new(),
            };
            tag.attributes.insert(key, value);
        }
        tags.push(tag);
    }
    tags
}

/// An attribute value with HTML's character references for `"`, `&`, `<`, `>` and no-break
/// space replaced.
fn unescape(value: &str) -> String {
    value
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[test]
fn start_tags_reads_attributes_as_chromium_serializes_them() {
    let html = r#"<!DOCTYPE html><html><body data-ready="true" data-errors="0"><!-- <p x="1"> -->
<svg><g class="edge" data-source="east" data-destination="we&quot;st &amp; &lt;b&gt;" data-rps="4.0"></g></svg>
<input disabled><br/></body></html>"#;
    let tags = start_tags(html);
    let names: Vec<&str> = tags.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["html", "body", "svg", "g", "input", "br"]);
    assert_eq!(tags[1].get("data-ready"), Some("true"));
    assert_eq!(tags[3].get("data-destination"), Some("we\"st & <b>"));
    assert_eq!(tags[3].get("data-rps"), Some("4.0"));
    assert_eq!(tags[4].get("disabled"), Some(""));
}

#[test]
fn console_lines_are_found_in_either_format_and_nothing_else() {
    let log = "[1:1:1206/181208.029016:ERROR:dbus/bus.cc:405] Failed to connect to the bus\n\
               [1:1:1206/181208.612782:INFO:CONSOLE:5] \"an error\", source: http://x/ (5)\n\
               [1:1:1206/181208.612782:INFO:CONSOLE(7)] \"Uncaught Error: boom\", source: http://x/ (7)\n";
    let lines = console_lines(log);
    assert_eq!(lines.len(), 2);
    assert!(lines[0].contains("an error") && lines[1].contains("boom"));
}
