//! End-to-end: `twinsan check` reports every problem with file, key and reason, and
//! `twinsan serve` runs a node with several targets and LUNs from a config file.

use std::process::Command;
use std::time::Duration;

use twinsan_e2e::{
    free_port, have_tool, run_with_timeout, scratch_dir, secret_file, twinsan_bin, Twinsan,
};

#[test]
fn check_reports_every_problem_and_exits_1() {
    let dir = scratch_dir();
    let cfg = dir.path().join("bad.toml");
    let loose = dir.path().join("loose.secret");
    std::fs::write(&loose, "a-secret-with-bad-mode").unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"
[[portal_group]]
tag = 1
listen = ["127.0.0.1:99999"]

[[target]]
iqn = "iqn.2026-11.org.twinsan.test:a"
chap_user = "u"
chap_secret_file = "{}"

[[target.lun]]
lun = 0
path = "/nonexistent/dir/a.img"
size = "12Q"

[[target.lun]]
lun = 1
path = "/nonexistent/dir/ro.img"
size = "1M"
read_only = true
"#,
            loose.display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new(twinsan_bin())
            .args(["check", "--config"])
            .arg(&cfg),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "portal_group[0].listen[0]",
        "target[0].chap_secret_file",
        "target[0].lun[0].size",
        "target[0].lun[1].path",
    ] {
        assert!(
            text.contains(&format!("{}: {key}: ", cfg.display())),
            "missing {key}:\n{text}"
        );
    }
    assert!(
        text.contains("chmod 600"),
        "no hint for the secret file mode:\n{text}"
    );
    assert!(!text.contains("a-secret-with-bad-mode"), "secret printed");
    // serve refuses the same file with the same reasons and exit code 2.
    let out = run_with_timeout(
        Command::new(twinsan_bin())
            .args(["serve", "--config"])
            .arg(&cfg),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn serve_runs_several_targets_and_luns_from_config() {
    if !have_tool("iscsi-ls") {
        return;
    }
    let dir = scratch_dir();
    let port = free_port();
    let secret = secret_file(dir.path(), "b.secret", "bob-secret-0123");
    let d = dir.path().display().to_string();
    let cfg = dir.path().join("twinsan.toml");
    std::fs::write(dir.path().join("a3.img"), vec![0u8; 16 << 20]).unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"
[node]
name = "test-node"

[iscsi]
queue_depth = 64

[[portal_group]]
tag = 7
listen = ["127.0.0.1:{port}"]

[[target]]
iqn = "iqn.2026-11.org.twinsan.test:alpha"
[[target.lun]]
lun = 0
path = "{d}/a0.img"
size = "8M"
[[target.lun]]
lun = 3
path = "{d}/a3.img"
read_only = true

[[target]]
iqn = "iqn.2026-11.org.twinsan.test:beta"
chap_user = "bob"
chap_secret_file = "{}"
[[target.lun]]
lun = 1
path = "{d}/b1.img"
size = "4M"
"#,
            secret.display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new(twinsan_bin())
            .args(["check", "--config"])
            .arg(&cfg),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let cfg_s = cfg.to_str().unwrap().to_owned();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut t = Twinsan::start(&["serve", "--config", &cfg_s], addr, dir);
    let out = run_with_timeout(
        Command::new("iscsi-ls")
            .args(["-i", "iqn.2026-11.org.twinsan.test:h"])
            .arg(format!("iscsi://{addr}")),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "iqn.2026-11.org.twinsan.test:alpha Portal:{addr},7"
        )),
        "{text}"
    );
    assert!(text.contains("iqn.2026-11.org.twinsan.test:beta"), "{text}");
    for (lun, size) in [(0, 8u64 << 20), (3, 16 << 20)] {
        let url = format!("iscsi://{addr}/iqn.2026-11.org.twinsan.test:alpha/{lun}");
        let out = run_with_timeout(
            Command::new("iscsi-readcapacity16").arg(&url),
            Duration::from_secs(60),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("Total size:{size}")),
            "LUN {lun}: {text}"
        );
    }
    // beta needs CHAP.
    let url = format!("iscsi://bob%bob-secret-0123@{addr}/iqn.2026-11.org.twinsan.test:beta/1");
    let out = run_with_timeout(
        Command::new("iscsi-readcapacity16").arg(&url),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Total size:4194304"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(t.stop(), Some(0), "{}", t.log());
}
