//! Helpers shared by the agents' integration tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Write an executable shell script at `dir/rel` (creating its directory) and wait
/// until it can be executed: a concurrent fork in another test thread may briefly hold
/// the write descriptor (ETXTBSY). The script exits 0 at once when `TW_PROBE` is set.
pub fn script(dir: &Path, rel: &str, body: &str) -> PathBuf {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let text = format!("#!/bin/sh\n[ -n \"$TW_PROBE\" ] && exit 0\n{body}");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for _ in 0..200 {
        match std::process::Command::new(&path)
            .env("TW_PROBE", "1")
            .status()
        {
            Ok(_) => return path,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("probe {}: {e}", path.display()),
        }
    }
    panic!("{} stays busy", path.display());
}
