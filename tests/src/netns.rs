//! Two network namespaces joined by one veth pair, for multi-node tests: each head runs
//! as a real process inside its namespace; a partition takes the link down on both
//! sides, healing brings it back. Everything is removed on drop (processes in the
//! namespaces are killed first), also when the test panics.
//!
//! Owns: namespace lifecycle. Uses only addresses inside the namespaces it creates
//! (10.213.N.1/2 on a /30).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces `a` and `b` with one link between them.
#[derive(Debug)]
pub struct NetPair {
    /// Namespace of head A.
    pub a: String,
    /// Namespace of head B.
    pub b: String,
    /// Head A's address.
    pub addr_a: Ipv4Addr,
    /// Head B's address.
    pub addr_b: Ipv4Addr,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ip_checked(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetPair {
    /// Create the pair, or `None` (with a message) where namespaces cannot be made
    /// (not root, no `ip`). With `TWINSAN_E2E_REQUIRED=1` that is a failure instead.
    pub fn create() -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !ip(&["netns", "list"]) {
            assert!(
                !crate::tools_required(),
                "network namespaces are required (TWINSAN_E2E_REQUIRED=1): run as root with iproute2"
            );
            eprintln!("SKIP: network namespaces need root and iproute2");
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("tw{}x{n}", std::process::id());
        let subnet = (std::process::id() as u8).wrapping_add(n as u8 * 7);
        let pair = NetPair {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
            addr_a: Ipv4Addr::new(10, 213, subnet, 1),
            addr_b: Ipv4Addr::new(10, 213, subnet, 2),
        };
        ip_checked(&["netns", "add", &pair.a]);
        ip_checked(&["netns", "add", &pair.b]);
        ip_checked(&[
            "-n", &pair.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &pair.b,
        ]);
        for (ns, addr) in [(&pair.a, pair.addr_a), (&pair.b, pair.addr_b)] {
            ip_checked(&["-n", ns, "link", "set", "lo", "up"]);
            ip_checked(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                "eth0",
            ]);
            ip_checked(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        Some(pair)
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(&self, ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Cut the link (both ends down): no packet passes either way.
    pub fn partition(&self) {
        ip_checked(&["-n", &self.a, "link", "set", "eth0", "down"]);
        ip_checked(&["-n", &self.b, "link", "set", "eth0", "down"]);
    }

    /// Restore the link.
    pub fn heal(&self) {
        ip_checked(&["-n", &self.a, "link", "set", "eth0", "up"]);
        ip_checked(&["-n", &self.b, "link", "set", "eth0", "up"]);
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            ip(&["netns", "del", ns]);
        }
    }
}
