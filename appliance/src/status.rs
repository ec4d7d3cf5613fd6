//! `twinsan status`: one view of a running head across layers, gathered through its
//! control socket (HA manager, replicated volumes, ALUA, sessions) and rendered as one
//! JSON object or as text.
//!
//! Owns: the JSON layout of `twinsan status --json` (documented in the README) and its
//! text rendering.
//!
//! May not touch: the head's state (read-only requests).

use std::path::Path;

use serde_json::{json, Value};

use crate::control::{request, Request};

fn one_json(path: &Path, req: &Request) -> anyhow::Result<Option<Value>> {
    match request(path, req)? {
        Ok(lines) => match lines.first() {
            Some(l) => Ok(Some(serde_json::from_str(l)?)),
            None => Ok(None),
        },
        // A part the head does not have (no [cluster], no volumes).
        Err(_) => Ok(None),
    }
}

/// Gather the status of the head behind `path`.
pub fn collect(path: &Path) -> anyhow::Result<Value> {
    let ha = one_json(path, &Request::HaStatus)?;
    let volumes = one_json(
        path,
        &Request::ReplStatus {
            name: None,
            json: true,
        },
    )?
    .unwrap_or_else(|| json!([]));
    let sessions = one_json(path, &Request::Sessions)?.unwrap_or_else(|| json!([]));
    let alua: Vec<Value> = match request(path, &Request::AluaShow { target: None })? {
        Ok(lines) => lines
            .iter()
            .map(|l| {
                let mut o = serde_json::Map::new();
                for kv in l.split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        o.insert(k.to_string(), Value::String(v.to_string()));
                    }
                }
                Value::Object(o)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    Ok(json!({
        "control": path,
        "ha": ha,
        "volumes": volumes,
        "alua": alua,
        "sessions": sessions,
    }))
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in ms.
fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// One external resource: name, placement, state here and what keeps it from running.
fn resource_line(r: &Value) -> String {
    let mut notes = Vec::new();
    if r["managed"].as_bool() == Some(false) {
        notes.push("UNMANAGED".to_string());
    }
    if r["target_role"].as_str() == Some("stopped") {
        notes.push("target-role stopped".into());
    }
    if let Some(b) = r["blocked"].as_str() {
        notes.push(format!("BLOCKED: {b}"));
    }
    if r["stopped_by_failure"].as_bool() == Some(true) {
        notes.push("stopped after a failure".into());
    }
    if r["banned_here"].as_bool() == Some(true) {
        notes.push("banned here".into());
    }
    if r["failcount"].as_u64().unwrap_or(0) > 0 {
        notes.push(format!("failcount {}", s(&r["failcount"])));
    }
    if let Some(e) = r["last_error"].as_str() {
        notes.push(format!("last error: {e}"));
    }
    format!(
        "  resource {} ({}): {}{}\n",
        s(&r["name"]),
        s(&r["placement"]),
        s(&r["state"]),
        if notes.is_empty() {
            String::new()
        } else {
            format!(", {}", notes.join(", "))
        }
    )
}

/// Text rendering.
pub fn text(v: &Value) -> String {
    let mut out = String::new();
    let ha = &v["ha"];
    if ha.is_null() {
        out += "HA: not configured (no [cluster] section)\n";
    } else {
        out += &format!(
            "Cluster {} — this head: node {} (boot {}), service {}{}\n",
            s(&ha["cluster"]),
            s(&ha["node_id"]),
            s(&ha["boot"]),
            s(&ha["service"]),
            match ha["waiting"].as_str() {
                Some(w) => format!(" ({w})"),
                None => String::new(),
            }
        );
        out += &format!(
            "  peer node {}: {}{}{}{}\n",
            s(&ha["peer_node_id"]),
            if ha["peer_alive"].as_bool() == Some(true) {
                "alive"
            } else {
                "LOST"
            },
            if ha["peer_active"].as_bool() == Some(true) {
                ", runs the service"
            } else {
                ""
            },
            if ha["peer_standby"].as_bool() == Some(true) {
                ", standby"
            } else {
                ""
            },
            if ha["peer_fenced"].as_bool() == Some(true) {
                ", fenced"
            } else {
                ""
            },
        );
        out += &format!(
            "  quorum: {} ({}), no-quorum-policy {}, witness {}\n",
            if ha["quorum"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO"
            },
            s(&ha["quorum_reason"]),
            s(&ha["no_quorum_policy"]),
            s(&ha["witness"]),
        );
        for l in ha["links"].as_array().into_iter().flatten() {
            out += &format!(
                "  link {}: {} -> {} {} (last heartbeat {} ms ago, {} rejected)\n",
                s(&l["index"]),
                s(&l["local"]),
                s(&l["peer"]),
                if l["up"].as_bool() == Some(true) {
                    "up"
                } else {
                    "DOWN"
                },
                s(&l["last_rx_ago_ms"]),
                s(&l["rejected"]),
            );
        }
        out += &format!(
            "  standby {}, maintenance {}, moved {}, failcount {}{}\n",
            s(&ha["standby"]),
            s(&ha["maintenance"]),
            s(&ha["moved"]),
            s(&ha["failcount"]),
            if ha["failed_here"].as_bool() == Some(true) {
                " (migration threshold reached here)"
            } else {
                ""
            }
        );
        if let Some(f) = ha["last_fence"].as_str() {
            out += &format!("  last fence: {f}\n");
        }
        if let Some(b) = ha["banned"].as_str() {
            out += &format!("  the service cannot run here: {b}\n");
        }
        for r in ha["resources"].as_array().into_iter().flatten() {
            out += &resource_line(r);
        }
        for vip in ha["vips"].as_array().into_iter().flatten() {
            out += &format!(
                "  portal IP {}: {}\n",
                s(&vip[0]),
                if vip[1].as_bool() == Some(true) {
                    "held here"
                } else {
                    "not here"
                }
            );
        }
    }
    for vol in v["volumes"].as_array().into_iter().flatten() {
        out += &format!(
            "Volume {}: {} {} {}, peer {} {}, out of sync {} bytes{}\n",
            s(&vol["name"]),
            s(&vol["role"]),
            s(&vol["disk"]),
            s(&vol["connection"]),
            s(&vol["peer_role"]),
            s(&vol["peer_disk"]),
            s(&vol["out_of_sync_bytes"]),
            if vol["split_brain"].as_bool() == Some(true) {
                ", SPLIT BRAIN"
            } else {
                ""
            },
        );
    }
    for g in v["alua"].as_array().into_iter().flatten() {
        out += &format!(
            "Target {} group {}: {}\n",
            s(&g["target"]),
            s(&g["group"]),
            s(&g["state"])
        );
    }
    let sessions = v["sessions"].as_array().map(Vec::len).unwrap_or(0);
    out += &format!("Sessions: {sessions}\n");
    for se in v["sessions"].as_array().into_iter().flatten() {
        out += &format!(
            "  {} from {} -> {}\n",
            s(&se["initiator"]),
            s(&se["peer"]),
            s(&se["target"])
        );
    }
    if let Some(ev) = ha["events"].as_array() {
        out += "Recent events:\n";
        for e in ev
            .iter()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            out += &format!(
                "  {} {}\n",
                clock(e["at_unix_ms"].as_u64().unwrap_or(0)),
                s(&e["what"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_listed_with_what_keeps_them_from_running() {
        let v = serde_json::json!({
            "ha": {
                "service": "active",
                "banned": null,
                "resources": [
                    {"name": "fs", "placement": "with-service", "state": "running",
                     "managed": true, "target_role": "started", "blocked": null,
                     "stopped_by_failure": false, "banned_here": false, "failcount": 0,
                     "last_error": null},
                    {"name": "app", "placement": "with-service", "state": "failed",
                     "managed": true, "target_role": "started",
                     "blocked": "stop failed: exit 1", "stopped_by_failure": false,
                     "banned_here": true, "failcount": 2, "last_error": "stop: exit 1"},
                    {"name": "backup", "placement": "away-from-service", "state": "stopped",
                     "managed": false, "target_role": "stopped", "blocked": null,
                     "stopped_by_failure": false, "banned_here": false, "failcount": 0,
                     "last_error": null}
                ]
            }
        });
        let t = text(&v);
        assert!(t.contains("  resource fs (with-service): running\n"), "{t}");
        assert!(
            t.contains(
                "  resource app (with-service): failed, BLOCKED: stop failed: exit 1, banned here, failcount 2, last error: stop: exit 1\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "  resource backup (away-from-service): stopped, UNMANAGED, target-role stopped\n"
            ),
            "{t}"
        );
    }
}
