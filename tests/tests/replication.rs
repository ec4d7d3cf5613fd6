//! End-to-end: two `twinsan serve` processes on 127.0.0.1 replicating one volume
//! (sparse file, internal metadata, `create-md --assume-clean` on both, a 0600 secret).
//! A pattern written through node A's LUN while A is Primary is read back through node
//! B's LUN after the roles are switched with `twinsan repl secondary|primary`; a
//! Secondary's LUN answers NOT READY. A peer with the wrong secret is refused: no
//! connection, and status says why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use twinsan_e2e::raw::{rw16, sense_key_asc, RawSession};
use twinsan_e2e::{free_port, run_with_timeout, scratch_dir, secret_file, twinsan_bin, Twinsan};

const IQN: &str = "iqn.2026-11.org.twinsan.test:repl";
const INI: &str = "iqn.2026-11.org.twinsan.test:repl-host";
const UUID: &str = "3f0c6a52-9d1e-4c35-8b7e-2a61f0d4c9e1";

fn new_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// One node's files and addresses.
struct NodeSetup {
    dir: tempfile::TempDir,
    config: PathBuf,
    control: PathBuf,
    portal: SocketAddr,
}

/// Write the configuration of node `id` (1 or 2) into a fresh scratch directory.
fn setup(id: u8, me: SocketAddr, peer: SocketAddr, secret: &str) -> NodeSetup {
    let dir = scratch_dir();
    let portal = new_addr();
    let control = dir.path().join("control.sock");
    let secret = secret_file(dir.path(), "r0.secret", secret);
    let disk = dir.path().join("r0.img");
    let config = dir.path().join("twinsan.toml");
    let text = format!(
        r#"
[node]
name = "node{id}"
control_socket = "{control}"

[[portal_group]]
tag = 1
listen = ["{portal}"]

[[target]]
iqn = "{IQN}"

[[target.lun]]
lun = 0
replicated = "r0"

[[replicated]]
name = "r0"
volume_uuid = "{UUID}"
node_id = {id}
peer_node_id = {peer_id}
address = "{me}"
peer_address = "{peer}"
disk = "{disk}"
size = "64MiB"
secret_file = "{secret}"
ping_int_ms = 500
ping_timeout_ms = 1000
connect_int_ms = 100
"#,
        control = control.display(),
        peer_id = 3 - id,
        disk = disk.display(),
        secret = secret.display(),
    );
    std::fs::write(&config, text).unwrap();
    NodeSetup {
        dir,
        config,
        control,
        portal,
    }
}

fn twinsan(args: &[&str]) -> Output {
    let mut c = Command::new(twinsan_bin());
    c.args(args);
    run_with_timeout(&mut c, Duration::from_secs(30))
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn create_md(n: &NodeSetup) {
    let cfg = n.config.to_str().unwrap();
    let o = twinsan(&["repl", "create-md", "--config", cfg, "r0", "--assume-clean"]);
    assert!(o.status.success(), "create-md: {}", text(&o));
    // A second create-md refuses to overwrite the metadata without --force.
    let o = twinsan(&["repl", "create-md", "--config", cfg, "r0"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
}

fn start(n: NodeSetup) -> (Twinsan, PathBuf) {
    let cfg = n.config.to_str().unwrap().to_owned();
    let control = n.control.clone();
    let t = Twinsan::start(&["serve", "--config", &cfg], n.portal, n.dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !control.exists() {
        assert!(Instant::now() < deadline, "no control socket:\n{}", t.log());
        std::thread::sleep(Duration::from_millis(25));
    }
    (t, control)
}

fn repl(control: &Path, args: &[&str]) -> Output {
    let mut v = vec!["repl", args[0]];
    v.extend_from_slice(&args[1..]);
    v.push("--control");
    v.push(control.to_str().unwrap());
    twinsan(&v)
}

fn status_json(control: &Path) -> String {
    let o = repl(control, &["status", "r0", "--json"]);
    assert!(o.status.success(), "status: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Poll `status --json` (bounded) until every fragment is present.
fn wait_status(t: &Twinsan, control: &Path, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_json(control);
        if want.iter().all(|w| s.contains(w)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {want:?}; last: {s}\nlog:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CONNECTED: [&str; 4] = [
    "\"connection\":\"Connected\"",
    "\"disk\":\"UpToDate\"",
    "\"peer_disk\":\"UpToDate\"",
    "\"out_of_sync_bytes\":0",
];

const WRITE16: u8 = 0x8A;
const READ16: u8 = 0x88;
const BLOCKS: u32 = 128;
const LBA: u64 = 1000;

fn pattern() -> Vec<u8> {
    (0..BLOCKS as usize * 512)
        .map(|i| (i * 7 + i / 512) as u8)
        .collect()
}

#[test]
fn write_on_a_read_on_b_after_switchover() {
    let (ra, rb) = (new_addr(), new_addr());
    let secret = "a-shared-replication-secret\n";
    let (na, nb) = (setup(1, ra, rb, secret), setup(2, rb, ra, secret));
    create_md(&na);
    create_md(&nb);
    let cfg_a = na.config.to_str().unwrap().to_owned();
    let o = twinsan(&["check", "--config", &cfg_a]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 replicated volume(s)"), "{}", text(&o));
    let (a, ca) = start(na);
    let (b, cb) = start(nb);

    wait_status(&a, &ca, &CONNECTED);
    // The node's config file finds its control socket too.
    let o = twinsan(&["repl", "status", "--config", &cfg_a]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("name=r0 role=Secondary"), "{}", text(&o));
    wait_status(&b, &cb, &CONNECTED);

    // Secondary: writes and reads are refused with NOT READY.
    let mut sa = RawSession::login(a.addr, INI, IQN);
    let data = pattern();
    let (st, sense, ..) = sa
        .command(&rw16(WRITE16, LBA, BLOCKS), data.len() as u32, false, &data)
        .expect("write");
    assert_eq!(st, 0x02, "a write to a Secondary must fail");
    assert_eq!(sense_key_asc(&sense).map(|s| s.0), Some(0x02), "NOT READY");

    let o = repl(&ca, &["primary", "r0"]);
    assert!(
        o.status.success(),
        "primary on A: {}\n{}",
        text(&o),
        a.log()
    );
    let (st, sense, ..) = sa
        .command(&rw16(WRITE16, LBA, BLOCKS), data.len() as u32, false, &data)
        .expect("write");
    assert_eq!(
        st,
        0,
        "write on the Primary: sense {sense:02x?}\n{}",
        a.log()
    );
    // SYNCHRONIZE CACHE(10).
    let (st, ..) = sa
        .command(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, false, &[])
        .expect("sync cache");
    assert_eq!(st, 0);

    let sa_json = wait_status(&a, &ca, &CONNECTED);
    assert!(sa_json.contains("\"role\":\"Primary\""), "{sa_json}");
    let sb_json = wait_status(&b, &cb, &CONNECTED);
    assert!(sb_json.contains("\"role\":\"Secondary\""), "{sb_json}");
    assert!(sb_json.contains("\"peer_role\":\"Primary\""), "{sb_json}");
    assert!(
        sb_json.contains(&format!("\"data_received_bytes\":{}", data.len())),
        "{sb_json}"
    );
    // Text status too.
    let o = repl(&cb, &["status"]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        t.contains("name=r0 role=Secondary disk=UpToDate conn=Connected"),
        "{t}"
    );

    // Switch over.
    let o = repl(&cb, &["primary", "r0"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "two primaries refused: {}",
        text(&o)
    );
    let o = repl(&ca, &["secondary", "r0"]);
    assert!(o.status.success(), "secondary on A: {}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = repl(&cb, &["primary", "r0"]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "primary on B: {}\n{}",
            text(&o),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sb = RawSession::login(b.addr, INI, IQN);
    let (st, sense, got, _) = sb
        .command(&rw16(READ16, LBA, BLOCKS), data.len() as u32, true, &[])
        .expect("read");
    assert_eq!(st, 0, "read on B: sense {sense:02x?}\n{}", b.log());
    assert!(got == data, "B returned different data");
    // A is Secondary now: its LUN refuses reads.
    let (st, sense, ..) = sa
        .command(&rw16(READ16, LBA, BLOCKS), data.len() as u32, true, &[])
        .expect("read");
    assert_eq!(st, 0x02);
    assert_eq!(sense_key_asc(&sense).map(|s| s.0), Some(0x02));

    // Operator verbs that are not implemented say so.
    let o = repl(&cb, &["resize", "r0"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o).contains("not implemented yet"), "{}", text(&o));
    let o = repl(&cb, &["primary", "nosuch"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    drop(sa);
    drop(sb);
    let o = repl(&cb, &["secondary", "r0"]);
    assert!(o.status.success(), "{}", text(&o));
    let (mut a, mut b) = (a, b);
    assert_eq!(b.stop(), Some(0), "{}", b.log());
    assert_eq!(a.stop(), Some(0), "{}", a.log());
}

#[test]
fn peer_with_the_wrong_secret_is_refused() {
    let (ra, rb) = (new_addr(), new_addr());
    let na = setup(1, ra, rb, "the-right-replication-secret");
    let nb = setup(2, rb, ra, "a-wrong-replication-secret!!");
    create_md(&na);
    create_md(&nb);
    let (a, ca) = start(na);
    let (b, cb) = start(nb);
    let s = wait_status(&a, &ca, &["authentication failed"]);
    assert!(s.contains("\"connection\":\"Connecting\""), "{s}");
    assert!(s.contains("\"link\":null"), "{s}");
    assert!(!s.contains("replication-secret"), "secret leaked: {s}");
    let s = wait_status(&b, &cb, &["authentication failed"]);
    assert!(s.contains("\"link\":null"), "{s}");
    // A moment later: still not connected, and the logs name the reason, not the secret.
    std::thread::sleep(Duration::from_millis(500));
    let s = status_json(&ca);
    assert!(s.contains("\"connection\":\"Connecting\""), "{s}");
    let log = a.log();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!log.contains("replication-secret"), "secret in the log");
    assert!(!b.log().contains("replication-secret"), "secret in the log");
}
