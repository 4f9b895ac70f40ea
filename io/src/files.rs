//! Text files read with their path in the error, and written atomically (write, sync, rename),
//! owner-only when they hold a secret.

use std::fs;
use std::path::Path;

use strait_federation::pki::PkiError;

/// Reads a text file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|error| PkiError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Writes a file, owner-only when it holds a secret; atomically (write then rename).
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let fail = |error| PkiError::Write {
        path: path.to_owned(),
        error,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    // One temporary file per target (issuer.crt and issuer.key must not share one).
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = path.with_file_name(name);
    {
        use std::io::Write;
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&temporary).map_err(fail)?;
        #[cfg(unix)]
        {
            // The mode above applies only when the file is created: a stale temporary file
            // left by a crash keeps its own.
            use std::os::unix::fs::PermissionsExt;
            let mode = if secret { 0o600 } else { 0o644 };
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(fail)?;
        }
        file.write_all(contents.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    fs::rename(&temporary, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_written_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/key.pem");
        write_file(&path, "secret", true).unwrap();
        assert_eq!(read_file(&path).unwrap(), "secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.crt");
        let error = read_file(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("cannot read {}", path.display())),
            "{error}"
        );
    }
}
