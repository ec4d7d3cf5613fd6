//! End-to-end: the real `twinsan export` against real initiators (libiscsi tools and
//! qemu-img): data round trip, CHAP, ACLs, digests, two initiators at once, clean stop.

use std::process::Command;
use std::time::Duration;

use twinsan_e2e::{have_tool, run_with_timeout, scratch_dir, secret_file, Twinsan};

const IQN: &str = "iqn.2026-11.org.twinsan.test:disk";
const INITIATOR: &str = "iqn.2026-11.org.twinsan.test:host1";
const LIMIT: Duration = Duration::from_secs(120);

fn ok(cmd: &mut Command) -> String {
    let out = run_with_timeout(cmd, LIMIT);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(cmd: &mut Command) -> String {
    let out = run_with_timeout(cmd, LIMIT);
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sha(path: &std::path::Path) -> String {
    let out = ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

/// Users store data through the LUN and read back exactly what they wrote: 64 MiB of
/// random data copied in with qemu-img and copied out again have equal checksums, and
/// the backing file holds the same bytes.
#[test]
fn qemu_img_round_trip_64m() {
    if !have_tool("qemu-img") {
        return;
    }
    let t = Twinsan::export(IQN, "64M", &[]);
    let src = t.dir.path().join("src.raw");
    let back = t.dir.path().join("back.raw");
    let mut data = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &data).unwrap();
    let url = t.url(IQN, 0);
    ok(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&url));
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(&url)
        .arg(&back));
    assert_eq!(
        sha(&src),
        sha(&back),
        "data read back differs from data written"
    );
    let mut t = t;
    assert_eq!(
        t.stop(),
        Some(0),
        "twinsan did not exit 0 on SIGTERM:\n{}",
        t.log()
    );
    assert_eq!(
        sha(&src),
        sha(&t.image()),
        "backing file differs after a clean stop"
    );
}

/// A target with CHAP admits an initiator with the right secret and refuses a wrong one.
#[test]
fn chap_right_secret_admitted_wrong_refused() {
    if !have_tool("iscsi-inq") {
        return;
    }
    let dir = scratch_dir();
    let sf = secret_file(dir.path(), "chap.secret", "correct-horse-battery\n");
    let sf = sf.to_str().unwrap().to_owned();
    let t = Twinsan::export_in(
        dir,
        IQN,
        "16M",
        &["--chap-user", "alice", "--chap-secret-file", &sf],
    );
    let good = format!("iscsi://alice%correct-horse-battery@{}/{IQN}/0", t.addr);
    let bad = format!("iscsi://alice%wrong-horse-battery@{}/{IQN}/0", t.addr);
    let none = t.url(IQN, 0);
    let out = ok(Command::new("iscsi-inq").args(["-i", INITIATOR]).arg(&good));
    assert!(out.contains("TWINSAN"), "unexpected INQUIRY output: {out}");
    fails(Command::new("iscsi-inq").args(["-i", INITIATOR]).arg(&bad));
    fails(Command::new("iscsi-inq").args(["-i", INITIATOR]).arg(&none));
    assert!(
        !t.log().contains("correct-horse"),
        "secret leaked into the log"
    );
}

/// Mutual CHAP: the target proves itself to the initiator with its own secret.
#[test]
fn mutual_chap() {
    if !have_tool("iscsi-inq") {
        return;
    }
    let dir = scratch_dir();
    let sf = secret_file(dir.path(), "chap.secret", "initiator-secret-1");
    let mf = secret_file(dir.path(), "mutual.secret", "target-secret-22");
    let (sf, mf) = (
        sf.to_str().unwrap().to_owned(),
        mf.to_str().unwrap().to_owned(),
    );
    let t = Twinsan::export_in(
        dir,
        IQN,
        "16M",
        &[
            "--chap-user",
            "alice",
            "--chap-secret-file",
            &sf,
            "--mutual-chap-user",
            "tgt",
            "--mutual-chap-secret-file",
            &mf,
        ],
    );
    let url = |tp: &str| {
        format!(
            "iscsi://alice%initiator-secret-1@{}/{IQN}/0?target_user=tgt&target_password={tp}",
            t.addr
        )
    };
    ok(Command::new("iscsi-inq")
        .args(["-i", INITIATOR])
        .arg(url("target-secret-22")));
    // The initiator expects a different target secret: it must refuse the target.
    fails(
        Command::new("iscsi-inq")
            .args(["-i", INITIATOR])
            .arg(url("not-the-secret")),
    );
}

/// ACL: only listed initiators may log in.
#[test]
fn acl_refuses_unlisted_initiator() {
    if !have_tool("iscsi-inq") {
        return;
    }
    let t = Twinsan::export(IQN, "16M", &["--allow-initiator", INITIATOR]);
    ok(Command::new("iscsi-inq")
        .args(["-i", INITIATOR])
        .arg(t.url(IQN, 0)));
    fails(
        Command::new("iscsi-inq")
            .args(["-i", "iqn.2026-11.org.twinsan.test:intruder"])
            .arg(t.url(IQN, 0)),
    );
    // Discovery does not reveal the target to an initiator that may not use it.
    let out = ok(Command::new("iscsi-ls")
        .args(["-i", "iqn.2026-11.org.twinsan.test:intruder"])
        .arg(format!("iscsi://{}", t.addr)));
    assert!(
        !out.contains(IQN),
        "discovery revealed a target to a refused initiator: {out}"
    );
    let out = ok(Command::new("iscsi-ls")
        .args(["-i", INITIATOR])
        .arg(format!("iscsi://{}", t.addr)));
    assert!(
        out.contains(IQN),
        "discovery hid the target from an allowed initiator: {out}"
    );
}

/// Header digests (CRC32C) negotiated and used for a whole data transfer.
#[test]
fn header_digest_crc32c() {
    if !have_tool("qemu-img") {
        return;
    }
    let t = Twinsan::export(IQN, "16M", &[]);
    let url = format!("{}?header_digest=crc32c", t.url(IQN, 0));
    ok(Command::new("iscsi-inq").args(["-i", INITIATOR]).arg(&url));
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={},target={IQN},lun=0,header-digest=crc32c",
        t.addr
    );
    ok(Command::new("qemu-img").args([
        "bench",
        "-w",
        "-c",
        "2000",
        "-d",
        "8",
        "-s",
        "4k",
        "--image-opts",
        &opts,
    ]));
    ok(Command::new("qemu-img").args([
        "bench",
        "-c",
        "2000",
        "-d",
        "8",
        "-s",
        "4k",
        "--image-opts",
        &opts,
    ]));
}

/// Two initiators at once: both run I/O concurrently and each sees the other's writes.
#[test]
fn two_initiators_at_once() {
    if !have_tool("qemu-img") || !have_tool("iscsi-perf") {
        return;
    }
    let t = Twinsan::export(IQN, "64M", &[]);
    let url = t.url(IQN, 0);
    let w = {
        let url = url.clone();
        std::thread::spawn(move || {
            run_with_timeout(
                Command::new("qemu-img")
                    .args([
                        "bench", "-w", "-c", "20000", "-d", "16", "-s", "4k", "-S", "8k",
                    ])
                    .arg(&url),
                LIMIT,
            )
        })
    };
    let r = run_with_timeout(
        Command::new("timeout")
            .args([
                "-k",
                "5",
                "60",
                "iscsi-perf",
                "-i",
                "iqn.2026-11.org.twinsan.test:host2",
                "-m",
                "16",
                "-t",
                "3",
                "-r",
            ])
            .arg(&url),
        LIMIT,
    );
    let w = w.join().unwrap();
    assert!(
        w.status.success(),
        "writer failed: {}",
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(
        r.status.success(),
        "reader failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    // Data written through one session is read back through another.
    let src = t.dir.path().join("pattern.raw");
    std::fs::write(&src, vec![0xA5u8; 1 << 20]).unwrap();
    ok(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&url));
    let back = t.dir.path().join("back.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(&url)
        .arg(&back));
    let got = std::fs::read(&back).unwrap();
    assert!(
        got[..1 << 20].iter().all(|&b| b == 0xA5),
        "second session did not see the first one's data"
    );
}

/// A read-only export reports write protection and refuses writes; the file is untouched.
#[test]
fn read_only_export_refuses_writes() {
    if !have_tool("qemu-img") {
        return;
    }
    let dir = scratch_dir();
    std::fs::write(dir.path().join("lun0.img"), vec![0x5Au8; 16 << 20]).unwrap();
    let t = Twinsan::export_in(dir, IQN, "16M", &["--read-only"]);
    let before = sha(&t.image());
    let src = t.dir.path().join("src.raw");
    std::fs::write(&src, vec![1u8; 1 << 20]).unwrap();
    fails(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(t.url(IQN, 0)),
    );
    assert_eq!(before, sha(&t.image()));
}

/// Discovery lists the target with its portal and portal group tag.
#[test]
fn discovery_lists_target_and_portal() {
    if !have_tool("iscsi-ls") {
        return;
    }
    let t = Twinsan::export(IQN, "16M", &[]);
    let out = ok(Command::new("iscsi-ls")
        .args(["-i", INITIATOR, "-s"])
        .arg(format!("iscsi://{}", t.addr)));
    assert!(out.contains(IQN), "{out}");
    assert!(
        out.contains(&format!("{},1", t.addr)),
        "portal/tpgt missing: {out}"
    );
}

/// The README's first command: `twinsan demo` serves a LUN that initiators can use, and
/// SIGTERM (handled like Ctrl-C) stops it with exit 0, keeping a --dir backing file.
#[test]
fn demo_serves_a_lun() {
    if !have_tool("iscsi-inq") {
        return;
    }
    let port = twinsan_e2e::free_port();
    let listen = format!("127.0.0.1:{port}");
    let demo_dir = scratch_dir();
    let d = demo_dir.path().join("demo");
    let d = d.to_str().unwrap().to_owned();
    let mut t = Twinsan::start(
        &[
            "demo", "single", "--listen", &listen, "--size", "64M", "--dir", &d,
        ],
        listen.parse().unwrap(),
        scratch_dir(),
    );
    let out = ok(Command::new("iscsi-readcapacity16")
        .arg(format!("iscsi://{listen}/iqn.2026-11.org.twinsan:demo/0")));
    assert!(out.contains("Total size:67108864"), "{out}");
    assert_eq!(t.stop(), Some(0), "{}", t.log());
    assert!(std::path::Path::new(&d).join("demo-lun0.img").exists());
}
