//! End-to-end: libiscsi's conformance suite (`iscsi-test-cu`, family ALL) against
//! `twinsan export` of a scratch file, scored by ../shared/conformance/iscsi-conformance.
//! Asserts the counts the foundation issue promises: 0 failed and at least
//! `MIN_PASSED` passed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use twinsan_e2e::{have_tool, run_with_timeout, Twinsan};

const IQN: &str = "iqn.2026-11.org.twinsan.test:conformance";
const MIN_PASSED: u32 = 140;

fn scorer() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/iscsi-conformance");
    assert!(
        p.exists(),
        "conformance scorer not found at {}",
        p.display()
    );
    p
}

fn counts(out: &str) -> (u32, u32, u32) {
    let last = out
        .lines()
        .rev()
        .find(|l| l.ends_with("skipped") && l.contains("passed"))
        .unwrap_or_else(|| panic!("no summary line in scorer output:\n{out}"));
    let nums: Vec<u32> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3, "unexpected summary line {last:?}");
    (nums[0], nums[1], nums[2])
}

#[test]
fn libiscsi_conformance_all() {
    if !have_tool("iscsi-test-cu") || !have_tool("python3") {
        return;
    }
    let t = Twinsan::export(IQN, "256M", &[]);
    let log = t.dir.path().join("conformance.log");
    let out = run_with_timeout(
        Command::new("python3")
            .arg(scorer())
            .arg(t.url(IQN, 0))
            .arg("--log")
            .arg(&log),
        Duration::from_secs(1800),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    let (passed, failed, skipped) = counts(&text);
    println!("conformance: {passed} passed, {failed} failed, {skipped} skipped");
    if failed != 0 || passed < MIN_PASSED {
        let detail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = detail
            .lines()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("conformance: {passed} passed, {failed} failed (want 0 failed, ≥ {MIN_PASSED} passed)\n{text}\n--- log tail ---\n{tail}\n--- target log ---\n{}", t.log());
    }
}
