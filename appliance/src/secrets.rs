//! Reading secrets (CHAP secrets, later replication and heartbeat keys) from files.
//!
//! Owns: the rules a secret file must meet — a regular file, owned by the user running
//! twinsan, not readable or writable by group or others (mode 0600 or 0400), not empty,
//! at most 255 bytes after one trailing newline is removed. Secrets are returned as
//! bytes and never logged or printed; errors name the file, never the content.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's permissions let others read or change it.
    #[error("secret file {path} has mode {mode:04o}: it must not be accessible to group or others (chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is owned by another user.
    #[error("secret file {path} is owned by uid {owner}, not by uid {me} running twinsan")]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our uid.
        me: u32,
    },
    /// Not a regular file.
    #[error("secret file {0} is not a regular file")]
    NotRegular(PathBuf),
    /// Empty or too long.
    #[error("secret in {path} must be 1 to 255 bytes (found {len_bytes})")]
    Length {
        /// The file.
        path: PathBuf,
        /// Length found.
        len_bytes: usize,
    },
}

/// Read a secret from `path`, enforcing the rules in the module doc.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(SecretError::NotRegular(path.to_owned()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(SecretError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mut bytes = std::fs::read(path).map_err(io)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() || bytes.len() > 255 {
        return Err(SecretError::Length {
            path: path.to_owned(),
            len_bytes: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Fill `buf` from the kernel's random source (secrets, nonces).
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn accepts_private_file_and_strips_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "s", b"verysecretpassword\n", 0o600);
        assert_eq!(read_secret_file(&p).unwrap(), b"verysecretpassword");
    }

    #[test]
    fn refuses_group_readable_and_does_not_leak_content() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "s", b"topsecret-value", 0o640);
        let e = read_secret_file(&p).unwrap_err();
        assert!(matches!(e, SecretError::Permissions { mode: 0o640, .. }));
        assert!(!e.to_string().contains("topsecret"));
    }

    #[test]
    fn refuses_empty_and_missing() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "s", b"\n", 0o600);
        assert!(matches!(
            read_secret_file(&p).unwrap_err(),
            SecretError::Length { len_bytes: 0, .. }
        ));
        assert!(matches!(
            read_secret_file(&d.path().join("nope")).unwrap_err(),
            SecretError::Io { .. }
        ));
    }
}
