//! External OCF agents: a fake agent written into a tempdir that records its argv and
//! OCF environment, keeps state in a file, prints meta-data XML and exits per action.

mod common;
use common::script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use twinsan_agents::ocf::{check_params, OcfAction, OcfAgent, OcfError, OcfStatus};

const META: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Fake" version="0.1">
<version>1.1</version>
<shortdesc lang="en">Fake agent for tests</shortdesc>
<parameters>
<parameter name="state" required="1" unique="1">
<shortdesc lang="en">State file</shortdesc>
<content type="string"/>
</parameter>
<parameter name="envfile" required="1">
<content type="string"/>
</parameter>
<parameter name="mode" required="0">
<content type="string" default="plain"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="15s"/>
<action name="stop" timeout="25s"/>
<action name="monitor" timeout="10s" interval="5s"/>
<action name="meta-data" timeout="5s"/>
<action name="validate-all" timeout="5s"/>
</actions>
</resource-agent>
"#;

/// The fake agent under `root/resource.d/test/Fake`.
fn fake_agent(root: &Path) -> PathBuf {
    let body = format!(
        r#"{{ echo "argv1=$1"; env | grep '^OCF_' | sort; }} > "${{OCF_RESKEY_envfile:-/dev/null}}"
case "$1" in
meta-data)
cat <<'XML'
{META}XML
exit 0 ;;
validate-all)
if [ -z "$OCF_RESKEY_state" ]; then echo "ocf-exit-reason:state is not set" >&2; exit 6; fi
exit 0 ;;
start) touch "$OCF_RESKEY_state"; exit 0 ;;
stop) rm -f "$OCF_RESKEY_state"; exit 0 ;;
monitor)
[ "$OCF_RESKEY_mode" = degraded ] && exit 190
[ -f "$OCF_RESKEY_state" ] && exit 0
exit 7 ;;
promote) exit 8 ;;
demote)
sleep 600 &
echo $! > "$OCF_RESKEY_state.gc"
wait ;;
notify) echo "notify $OCF_RESKEY_CRM_meta_notify_type-$OCF_RESKEY_CRM_meta_notify_operation"; exit 0 ;;
*) exit 3 ;;
esac
"#
    );
    script(root, "resource.d/test/Fake", &body)
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    envfile: PathBuf,
    agent: OcfAgent,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ocf");
    fake_agent(&root);
    let state = dir.path().join("state");
    let envfile = dir.path().join("env.txt");
    let agent = OcfAgent::from_spec("test:Fake", "fake-1", &root)
        .unwrap()
        .param("state", state.to_str().unwrap())
        .param("envfile", envfile.to_str().unwrap())
        .with_timeout_ms(OcfAction::Start, 15_000);
    Setup {
        _dir: dir,
        root,
        state,
        envfile,
        agent,
    }
}

fn recorded_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn environment_and_argv() {
    let s = setup();
    s.agent.validate().unwrap();
    let r = s.agent.run(OcfAction::Start);
    assert_eq!(r.status, OcfStatus::Success, "{r}");
    let env = recorded_env(&s.envfile);
    let root = s.root.to_str().unwrap();
    assert_eq!(env["argv1"], "start");
    assert_eq!(env["OCF_ROOT"], root);
    assert_eq!(env["OCF_FUNCTIONS_DIR"], format!("{root}/lib/heartbeat"));
    assert_eq!(env["OCF_RA_VERSION_MAJOR"], "1");
    assert_eq!(env["OCF_RA_VERSION_MINOR"], "1");
    assert_eq!(env["OCF_RESOURCE_INSTANCE"], "fake-1");
    assert_eq!(env["OCF_RESOURCE_TYPE"], "Fake");
    assert_eq!(env["OCF_RESOURCE_PROVIDER"], "test");
    assert_eq!(env["OCF_RESKEY_state"], s.state.to_str().unwrap());
    assert_eq!(env["OCF_RESKEY_CRM_meta_timeout"], "15000");
    // Another action gets its own (default) timeout.
    s.agent.run(OcfAction::Stop);
    let env = recorded_env(&s.envfile);
    assert_eq!(env["argv1"], "stop");
    assert_eq!(env["OCF_RESKEY_CRM_meta_timeout"], "20000");
}

#[test]
fn lifecycle_statuses() {
    let s = setup();
    assert_eq!(
        s.agent.run(OcfAction::Monitor).status,
        OcfStatus::NotRunning
    );
    assert!(!s.agent.run(OcfAction::Monitor).status.is_running());
    assert_eq!(s.agent.run(OcfAction::Start).status, OcfStatus::Success);
    let m = s.agent.run(OcfAction::Monitor);
    assert!(m.status.is_running(), "{m}");
    let p = s.agent.run(OcfAction::Promote);
    assert_eq!(p.status, OcfStatus::RunningPromoted);
    assert!(p.status.is_promoted());
    assert_eq!(
        s.agent.run(OcfAction::Reload).status,
        OcfStatus::ErrUnimplemented
    );
    assert!(s.agent.run(OcfAction::Reload).status.is_hard_error());
    assert_eq!(s.agent.run(OcfAction::Stop).status, OcfStatus::Success);
    assert_eq!(
        s.agent.run(OcfAction::Monitor).status,
        OcfStatus::NotRunning
    );

    let degraded = s.agent.clone().param("mode", "degraded");
    let r = degraded.run(OcfAction::Monitor);
    assert_eq!(r.status, OcfStatus::Degraded);
    assert!(r.status.is_running() && r.status.is_degraded());
    assert_eq!(r.exit_code, Some(190));
}

#[test]
fn notify_with_extra_env() {
    let s = setup();
    let extra = vec![
        (
            "OCF_RESKEY_CRM_meta_notify_type".to_owned(),
            "pre".to_owned(),
        ),
        (
            "OCF_RESKEY_CRM_meta_notify_operation".to_owned(),
            "promote".to_owned(),
        ),
    ];
    let r = s.agent.run_with_env(OcfAction::Notify, &extra);
    assert_eq!(r.status, OcfStatus::Success);
    assert_eq!(r.stdout, "notify pre-promote\n");
}

#[test]
fn validate_all_reports_exit_reason() {
    let s = setup();
    assert_eq!(s.agent.validate_all().status, OcfStatus::Success);
    let mut bare = s.agent.clone();
    bare.params.retain(|(k, _)| k != "state");
    let r = bare.validate_all();
    assert_eq!(r.status, OcfStatus::ErrConfigured);
    assert!(r.status.is_hard_error() && r.status.is_fatal());
    assert_eq!(r.exit_reason(), Some("state is not set"));
    assert_eq!(
        r.to_string(),
        format!(
            "validate-all: not configured (6) in {} ms: state is not set",
            r.elapsed_ms
        )
    );
}

#[test]
fn meta_data_and_param_check() {
    let s = setup();
    let md = s.agent.meta_data().unwrap();
    assert_eq!(md.name.as_deref(), Some("Fake"));
    let required: Vec<&str> = md
        .parameters
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(required, ["state", "envfile"]);
    assert_eq!(md.param("mode").unwrap().default.as_deref(), Some("plain"));
    assert_eq!(md.timeout_ms(OcfAction::Stop), Some(25_000));
    assert_eq!(md.action("monitor").unwrap().interval_ms, Some(5_000));
    assert_eq!(md.xml, META);
    s.agent.check_params(&md).unwrap();
    let e = check_params(&md, &[("mode".to_owned(), "x".to_owned())]).unwrap_err();
    match &e {
        OcfError::MissingParams { agent, names } => {
            assert_eq!(agent, "Fake");
            assert_eq!(names, &["state".to_owned(), "envfile".to_owned()]);
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        e.to_string(),
        "resource agent Fake requires parameter(s) state, envfile which are not configured"
    );
}

#[test]
fn meta_data_failure_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), "broken", "echo 'oops' >&2; exit 1\n");
    let agent = OcfAgent::from_spec(path.to_str().unwrap(), "b", dir.path()).unwrap();
    let e = agent.meta_data().unwrap_err();
    assert!(
        matches!(
            e,
            OcfError::Action {
                status: OcfStatus::ErrGeneric,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("oops"), "{e}");
    let path = script(
        dir.path(),
        "garbage",
        "echo '<resource-agent name='; exit 0\n",
    );
    let agent = OcfAgent::from_spec(path.to_str().unwrap(), "g", dir.path()).unwrap();
    assert!(matches!(
        agent.meta_data(),
        Err(OcfError::BadMetaData { .. })
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
fn timeout_kills_agent_and_children() {
    let s = setup();
    let agent = s.agent.clone().with_timeout_ms(OcfAction::Demote, 300);
    let t0 = Instant::now();
    let r = agent.run(OcfAction::Demote);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(r.status, OcfStatus::Timeout, "{r}");
    assert_eq!(r.exit_code, None);
    assert!(!r.status.is_hard_error() && !r.status.is_running());
    let gc_file = PathBuf::from(format!("{}.gc", s.state.display()));
    let pid: i32 = std::fs::read_to_string(gc_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    while alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(pid), "agent's child {pid} survived the timeout");
}

#[test]
fn missing_agent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = OcfAgent::from_spec("heartbeat:NoSuchAgent", "x", dir.path()).unwrap();
    assert!(matches!(agent.validate(), Err(OcfError::NotFound(_))));
    let r = agent.run(OcfAction::Start);
    assert_eq!(r.status, OcfStatus::SpawnFailed);
    assert!(r.to_string().contains("NoSuchAgent"), "{r}");
    assert!(matches!(agent.meta_data(), Err(OcfError::Action { .. })));
}

#[test]
fn validate_rejects_bad_names() {
    let s = setup();
    assert!(matches!(
        s.agent.clone().param("bad-name", "x").validate(),
        Err(OcfError::BadName { .. })
    ));
    assert!(s.agent.clone().param("state", "dup").validate().is_err());
    let mut zero = s.agent.clone();
    zero.default_timeout_ms = 0;
    assert!(matches!(zero.validate(), Err(OcfError::ZeroTimeout(_))));
}
