//! The external (fence-agents) fence agent against fake agents written into a tempdir:
//! the stdin protocol, exit-code semantics, retries, secret files and redaction, and the
//! timeout with its process-group kill.

mod common;
use common::script;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use twinsan_agents::fence::{FenceAction, FenceAgent, FenceError, Fencer, PowerState};

const SECRET: &str = "Zq8-very-secret-pw";

fn secret_file(dir: &Path, mode: u32) -> PathBuf {
    let p = dir.join(format!("pw-{mode:o}"));
    std::fs::write(&p, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A fake fence agent: records its stdin, leaks the password on stderr (so redaction is
/// tested), and exits with the code given in its `exit_code` parameter.
fn recording_agent(dir: &Path) -> (PathBuf, PathBuf) {
    let record = dir.join("stdin.txt");
    let body = format!(
        "cat > {rec}\n\
         pw=$(sed -n 's/^password=//p' {rec})\n\
         echo \"Success? logging in with password $pw\"\n\
         echo \"debug: password=$pw\" >&2\n\
         code=$(sed -n 's/^exit_code=//p' {rec})\n\
         exit ${{code:-0}}\n",
        rec = record.display()
    );
    (script(dir, "fence_fake", &body), record)
}

fn fencer(program: &Path, exit_code: i32, secret: Option<PathBuf>) -> Fencer {
    let params = vec![
        ("ip".to_owned(), "192.0.2.10".to_owned()),
        ("username".to_owned(), "admin".to_owned()),
        ("plug".to_owned(), "node-b".to_owned()),
        ("exit_code".to_owned(), exit_code.to_string()),
    ];
    let secrets = secret
        .map(|p| ("password".to_owned(), p))
        .into_iter()
        .collect();
    let mut f = Fencer::new(FenceAgent::external(program, params, secrets));
    f.retry_interval_ms = 10;
    f.timeout_ms = 10_000;
    f
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(SECRET), "secret leaked: {text}");
    assert!(!text.contains("Zq8"), "secret prefix leaked: {text}");
}

#[test]
fn off_sends_key_value_lines_and_succeeds() {
    let d = tempfile::tempdir().unwrap();
    let (prog, record) = recording_agent(d.path());
    let f = fencer(&prog, 0, Some(secret_file(d.path(), 0o600)));
    f.agent.validate().unwrap();
    let r = f.fence(FenceAction::Off);
    assert!(r.success, "{r}");
    assert_eq!(r.power, Some(PowerState::Off));
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].exit_code, Some(0));
    assert_eq!(r.agent, "fence_fake");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        format!(
            "ip=192.0.2.10\nusername=admin\nplug=node-b\nexit_code=0\npassword={SECRET}\naction=off\n"
        )
    );
    // The agent printed the password; what we keep and show has it redacted.
    assert!(r.attempts[0].message.contains("password=***"), "{r}");
    assert_no_secret(&r.to_string());
    assert_no_secret(&format!("{r:?}"));
    assert_no_secret(&format!("{f:?}"));
}

#[test]
fn failures_are_retried_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let (prog, _) = recording_agent(d.path());
    let f = fencer(&prog, 1, Some(secret_file(d.path(), 0o400)));
    let r = f.fence(FenceAction::Off);
    assert!(!r.success);
    assert_eq!(r.attempts.len(), 3, "{r}");
    assert!(r
        .attempts
        .iter()
        .all(|a| a.exit_code == Some(1) && !a.success));
    let line = r.to_string();
    assert!(
        line.starts_with("fence off via fence_fake: FAILED (3 attempts,"),
        "{line}"
    );
    assert!(!line.contains('\n'));
    assert_no_secret(&line);
}

#[test]
fn retry_then_success() {
    let d = tempfile::tempdir().unwrap();
    let count = d.path().join("count");
    let body = format!(
        "cat >/dev/null\n\
         n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
         [ $n -ge 2 ] && exit 0\n\
         echo 'Failed: device busy' >&2; exit 1\n",
        c = count.display()
    );
    let prog = script(d.path(), "fence_flaky", &body);
    let mut f = Fencer::new(FenceAgent::external(&prog, vec![], vec![]));
    f.retry_interval_ms = 10;
    let r = f.fence(FenceAction::Reboot);
    assert!(r.success, "{r}");
    assert_eq!(r.attempts.len(), 2);
    assert!(
        r.attempts[0]
            .message
            .contains("exit 1: Failed: device busy"),
        "{r:?}"
    );
    assert_eq!(r.power, None);
}

#[test]
fn status_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let (prog, record) = recording_agent(d.path());
    let r = fencer(&prog, 0, None).fence(FenceAction::Status);
    assert!(r.success && r.power == Some(PowerState::On), "{r}");
    assert!(std::fs::read_to_string(&record)
        .unwrap()
        .ends_with("action=status\n"));
    let r = fencer(&prog, 2, None).fence(FenceAction::Status);
    assert!(r.success && r.power == Some(PowerState::Off), "{r}");
    assert_eq!(r.attempts.len(), 1);
    let mut f = fencer(&prog, 1, None);
    f.retries = 0;
    let r = f.fence(FenceAction::Status);
    assert!(!r.success && r.power.is_none(), "{r}");
    // For off, exit 2 is not success.
    let r = fencer(&prog, 2, None).fence(FenceAction::Off);
    assert!(!r.success, "{r}");
}

#[test]
fn unsafe_secret_file_is_refused_without_leaking() {
    let d = tempfile::tempdir().unwrap();
    let (prog, record) = recording_agent(d.path());
    let loose = secret_file(d.path(), 0o644);
    let f = fencer(&prog, 0, Some(loose.clone()));
    let e = f.agent.validate().unwrap_err();
    assert!(
        matches!(e, FenceError::SecretMode { mode: 0o644, .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&loose.display().to_string()), "{msg}");
    assert_no_secret(&msg);
    // Fencing refuses too, at once (a configuration error is not retried), and the
    // agent never ran.
    let r = f.fence(FenceAction::Off);
    assert!(!r.success);
    assert_eq!(r.attempts.len(), 1);
    assert!(
        r.attempts[0].message.contains("must be 0600 or 0400"),
        "{r}"
    );
    assert_no_secret(&r.to_string());
    assert!(!record.exists());
}

#[test]
fn missing_program() {
    let f = Fencer::new(FenceAgent::external(
        "/nonexistent/fence_nothing",
        vec![],
        vec![],
    ));
    assert!(matches!(
        f.agent.validate(),
        Err(FenceError::ProgramNotFound(_))
    ));
    let r = f.fence(FenceAction::Off);
    assert!(!r.success);
    assert_eq!(r.attempts.len(), 1, "not retried: {r}");
    assert!(r.to_string().contains("/nonexistent/fence_nothing"), "{r}");
    let d = tempfile::tempdir().unwrap();
    let not_exec = d.path().join("fence_text");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    assert!(matches!(
        FenceAgent::external(&not_exec, vec![], vec![]).validate(),
        Err(FenceError::NotExecutable(_))
    ));
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z' | 'X') | None
        )
    })
}

#[test]
fn hanging_agent_is_killed_with_its_children() {
    let d = tempfile::tempdir().unwrap();
    let gc = d.path().join("grandchild.pid");
    let body = format!(
        "cat >/dev/null\nsleep 600 & echo $! > {}\necho 'connecting...' >&2\nwait\n",
        gc.display()
    );
    let prog = script(d.path(), "fence_hang", &body);
    let agent = FenceAgent::External {
        program: prog,
        params: vec![],
        secret_params: vec![],
        timeout_ms: 400,
    };
    let mut f = Fencer::new(agent);
    f.retries = 1;
    f.retry_interval_ms = 10;
    let t0 = Instant::now();
    let r = f.fence(FenceAction::Off);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(!r.success);
    assert_eq!(r.attempts.len(), 2);
    for a in &r.attempts {
        assert!(a.timed_out && a.exit_code.is_none(), "{a}");
        assert!(a.message.starts_with("timed out after"), "{a}");
        assert!(a.message.contains("connecting..."), "{a}");
    }
    let pid: i32 = std::fs::read_to_string(&gc)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    while alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(pid), "grandchild sleep {pid} survived");
}

#[test]
fn fencer_timeout_caps_agent_timeout() {
    let d = tempfile::tempdir().unwrap();
    let prog = script(d.path(), "fence_slow", "cat >/dev/null\nexec sleep 600\n");
    let mut f = Fencer::new(FenceAgent::external(&prog, vec![], vec![]));
    f.retries = 0;
    f.timeout_ms = 300;
    let t0 = Instant::now();
    let r = f.fence(FenceAction::Monitor);
    assert!(!r.success && r.attempts[0].timed_out, "{r}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}
