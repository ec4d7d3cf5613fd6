//! The built-in `process` fence agent: against a spawned `sleep` (pid file), and, when
//! running as root, against a throwaway network namespace with a link and a process in
//! it (always deleted by a drop guard).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use twinsan_agents::fence::{FenceAction, FenceAgent, Fencer, PowerState};

/// Wait (bounded) for `child` to exit; its status.
fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills and reaps a child on drop (also on panic).
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_exit(&mut self.0, Duration::from_secs(5));
    }
}

fn fencer(agent: FenceAgent) -> Fencer {
    let mut f = Fencer::new(agent);
    f.retries = 0;
    f.timeout_ms = 10_000;
    f
}

#[test]
fn pid_file_process_is_killed_and_confirmed() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let pid_file = d.path().join("peer.pid");
    let mut peer = Reap(Command::new("sleep").arg("600").spawn().unwrap());
    std::fs::write(&pid_file, format!("{}\n", peer.0.id())).unwrap();
    let f = fencer(FenceAgent::process(Some(pid_file.clone()), None, false));
    f.agent.validate().unwrap();

    let r = f.fence(FenceAction::Status);
    assert!(r.success && r.power == Some(PowerState::On), "{r}");

    let r = f.fence(FenceAction::Off);
    assert!(r.success && r.power == Some(PowerState::Off), "{r}");
    assert!(r.to_string().contains("confirmed off"), "{r}");
    // Not reaped yet (a zombie): status must already say off.
    let r = f.fence(FenceAction::Status);
    assert!(r.success && r.power == Some(PowerState::Off), "{r}");
    let status = wait_exit(&mut peer.0, Duration::from_secs(2)).expect("peer still running");
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    // Off again (nothing alive) is still a confirmed off; so is a missing pid file.
    assert!(f.fence(FenceAction::Off).success);
    std::fs::remove_file(&pid_file).unwrap();
    let r = f.fence(FenceAction::Off);
    assert!(r.success, "{r}");
    let r = f.fence(FenceAction::Status);
    assert_eq!(r.power, Some(PowerState::Off), "{r}");
}

#[test]
fn garbage_pid_file_fails_without_retry() {
    let d = tempfile::tempdir().unwrap();
    let pid_file = d.path().join("peer.pid");
    std::fs::write(&pid_file, "not-a-pid\n").unwrap();
    let mut f = Fencer::new(FenceAgent::process(Some(pid_file), None, false));
    f.retry_interval_ms = 10;
    assert!(f.agent.validate().is_err());
    let r = f.fence(FenceAction::Off);
    assert!(!r.success);
    assert_eq!(r.attempts.len(), 1, "{r}");
}

// ---------------------------------------------------------------------------------------
// Network namespace (root only)

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A unique namespace, deleted on drop (also on panic) after killing what runs in it.
struct Netns {
    name: String,
    procs: Vec<Child>,
}

impl Netns {
    fn create() -> Option<Netns> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "twfence-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        if let Err(e) = ip(&["netns", "add", &name]) {
            eprintln!("skipping: cannot create a network namespace: {e}");
            return None;
        }
        Some(Netns {
            name,
            procs: Vec::new(),
        })
    }

    /// Non-loopback link names and whether each is administratively up.
    fn links(&self) -> Vec<(String, bool)> {
        ip(&["-n", &self.name, "-o", "link"])
            .unwrap()
            .lines()
            .filter_map(|l| {
                let rest = l.split_once(": ")?.1;
                let (name, rest) = rest.split_once(": ")?;
                let name = name.split('@').next()?.to_owned();
                let flags = rest.split_once('>')?.0;
                let up = flags.trim_start_matches('<').split(',').any(|f| f == "UP");
                (name != "lo").then_some((name, up))
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = wait_exit(p, Duration::from_secs(5));
        }
        if let Ok(out) = ip(&["netns", "pids", &self.name]) {
            for pid in out.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a positive pid found in our test namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete netns {}: {e}", self.name);
        }
    }
}

#[test]
fn netns_is_powered_off_and_on() {
    use std::os::unix::process::ExitStatusExt;
    if !is_root() {
        eprintln!("skipping netns fencing test: not root");
        return;
    }
    let Some(mut ns) = Netns::create() else {
        return;
    };
    let n = ns.name.clone();
    // A dummy link where the kernel has the module, else a veth pair inside the ns.
    if ip(&["-n", &n, "link", "add", "d0", "type", "dummy"]).is_err() {
        ip(&[
            "-n", &n, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ])
        .unwrap();
        ip(&["-n", &n, "link", "set", "d1", "up"]).unwrap();
    }
    ip(&["-n", &n, "link", "set", "d0", "up"]).unwrap();
    ns.procs.push(
        Command::new("ip")
            .args(["netns", "exec", &n, "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait (bounded) until the sleep is in the namespace.
    let until = Instant::now() + Duration::from_secs(5);
    while ip(&["netns", "pids", &n]).unwrap().trim().is_empty() {
        assert!(Instant::now() < until, "process never appeared in {n}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ns.links().iter().all(|(_, up)| *up));

    let f = fencer(FenceAgent::process(None, Some(n.clone()), true));
    f.agent.validate().unwrap();
    let r = f.fence(FenceAction::Status);
    assert!(r.success && r.power == Some(PowerState::On), "{r}");

    let r = f.fence(FenceAction::Off);
    assert!(r.success && r.power == Some(PowerState::Off), "{r}");
    let status = wait_exit(&mut ns.procs[0], Duration::from_secs(2)).expect("sleep survived");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let links = ns.links();
    assert!(
        !links.is_empty() && links.iter().all(|(_, up)| !up),
        "{links:?}"
    );
    assert!(ip(&["netns", "pids", &n]).unwrap().trim().is_empty());

    let r = f.fence(FenceAction::Status);
    assert!(r.success && r.power == Some(PowerState::Off), "{r}");

    let r = f.fence(FenceAction::On);
    assert!(r.success && r.power == Some(PowerState::On), "{r}");
    assert!(ns.links().iter().all(|(_, up)| *up), "{:?}", ns.links());
    // Links up count as powered on.
    let r = f.fence(FenceAction::Status);
    assert_eq!(r.power, Some(PowerState::On), "{r}");

    // Reboot = off, then on.
    let r = f.fence(FenceAction::Reboot);
    assert!(r.success, "{r}");
    assert!(ns.links().iter().all(|(_, up)| *up));

    // Without links_down, status only looks at processes: nothing runs, so off.
    let f = fencer(FenceAgent::process(None, Some(n.clone()), false));
    let r = f.fence(FenceAction::Status);
    assert_eq!(r.power, Some(PowerState::Off), "{r}");
}

#[test]
fn missing_netns_is_an_error_not_off() {
    if !is_root() {
        eprintln!("skipping: not root");
        return;
    }
    let name = format!("twfence-absent-{}", std::process::id());
    let f = fencer(FenceAgent::process(None, Some(name), true));
    let r = f.fence(FenceAction::Status);
    assert!(!r.success && r.power.is_none(), "{r}");
    let r = f.fence(FenceAction::Off);
    assert!(!r.success, "{r}");
}
