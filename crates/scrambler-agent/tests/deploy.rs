//! Every manifest in deploy/ parses as the Kubernetes type its `kind` names (k8s-openapi),
//! loses nothing in a round trip through that type (a misspelt or misplaced field would be
//! dropped, and the test says which), and what the DaemonSet references exists.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every YAML document of every manifest: (file, document).
fn documents() -> Vec<(String, serde_json::Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest in deploy/");
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = serde_json::Value::deserialize_from(doc, &f, i);
            if !v.is_null() {
                out.push((
                    format!("{}#{i}", f.file_name().unwrap().to_string_lossy()),
                    v,
                ));
            }
        }
    }
    out
}

trait FromYamlDoc {
    fn deserialize_from(doc: serde_yaml::Deserializer, f: &std::path::Path, i: usize) -> Self;
}

impl FromYamlDoc for serde_json::Value {
    fn deserialize_from(doc: serde_yaml::Deserializer, f: &std::path::Path, i: usize) -> Self {
        use serde::Deserialize;
        serde_json::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} document {i}: not YAML: {e}", f.display()))
    }
}

/// Parses `v` as `T` and checks the round trip keeps every field.
fn typed<T: DeserializeOwned + Serialize>(name: &str, v: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{name}: not a valid {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&t).unwrap();
    let mut lost = Vec::new();
    diff("", v, &back, &mut lost);
    assert!(
        lost.is_empty(),
        "{name}: fields the Kubernetes type does not know: {lost:?}"
    );
    t
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, lost: &mut Vec<String>) {
    use serde_json::Value as V;
    match (a, b) {
        (V::Object(x), V::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => diff(&format!("{path}.{k}"), va, vb, lost),
                    None => lost.push(format!("{path}.{k}")),
                }
            }
        }
        (V::Array(x), V::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, lost);
            }
        }
        (x, y) if x == y => {}
        (x, y) => lost.push(format!("{path}: {x} became {y}")),
    }
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut config_keys = BTreeSet::new();
    let mut secret_keys = BTreeSet::new();
    let mut daemonsets = Vec::new();
    let mut status_files = BTreeSet::new();
    for (name, v) in documents() {
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no kind"))
            .to_string();
        match kind.as_str() {
            "DaemonSet" => daemonsets.push((name.clone(), typed::<DaemonSet>(&name, &v))),
            "ConfigMap" => {
                let cm = typed::<ConfigMap>(&name, &v);
                let cm_name = cm.metadata.name.clone().unwrap();
                for (k, val) in cm.data.clone().unwrap_or_default() {
                    if k.ends_with(".conflist") {
                        let c: serde_json::Value = serde_json::from_str(&val)
                            .unwrap_or_else(|e| panic!("{name}: {k} is not JSON: {e}"));
                        assert_eq!(c["plugins"][0]["type"], "scrambler-cni", "{name}: {k}");
                        assert!(
                            val.contains("__POD_CIDR__"),
                            "{name}: {k} has no pod CIDR placeholder"
                        );
                        let f = c["plugins"][0]["tunnelStatusFile"]
                            .as_str()
                            .unwrap_or_else(|| panic!("{name}: {k}: no tunnelStatusFile gate"));
                        status_files.insert(f.to_string());
                    }
                    config_keys.insert((cm_name.clone(), k));
                }
            }
            "Secret" => {
                let s = typed::<Secret>(&name, &v);
                let s_name = s.metadata.name.clone().unwrap();
                for k in s.string_data.unwrap_or_default().into_keys() {
                    secret_keys.insert((s_name.clone(), k));
                }
                for k in s.data.unwrap_or_default().into_keys() {
                    secret_keys.insert((s_name.clone(), k));
                }
            }
            "ServiceAccount" => {
                typed::<ServiceAccount>(&name, &v);
            }
            other => panic!("{name}: kind {other} has no check here: add it"),
        }
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(kinds.get("DaemonSet"), Some(&1), "{kinds:?}");
    let (name, ds) = &daemonsets[0];
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        spec.host_network,
        Some(true),
        "{name}: the agent needs the host network"
    );
    let volumes: BTreeSet<_> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in all {
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains(&m.name),
                "{name}: {} mounts unknown volume {}",
                c.name,
                m.name
            );
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                assert!(
                    config_keys.contains(&(r.name.clone(), r.key.clone())),
                    "{name}: {} env {}: no ConfigMap key {}/{}",
                    c.name,
                    e.name,
                    r.name,
                    r.key
                );
            }
            if let Some(r) = &from.secret_key_ref {
                assert!(
                    secret_keys.contains(&(r.name.clone(), r.key.clone())),
                    "{name}: {} env {}: no Secret key {}/{}",
                    c.name,
                    e.name,
                    r.name,
                    r.key
                );
            }
        }
        // the capabilities it needs and no more
        let sc = c.security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{name}: {}",
            c.name
        );
        for cap in caps.add.iter().flatten() {
            assert_eq!(cap, "NET_ADMIN", "{name}: {} adds {cap}", c.name);
        }
        assert_ne!(
            sc.privileged,
            Some(true),
            "{name}: {} is privileged",
            c.name
        );
    }
    // the agent writes the file the CNI plugin gates ADD on, at the same path on the host
    let agent = spec
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("an agent container");
    let env = |n: &str| {
        agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    let file = env("SCRAMBLER_TUNNEL_STATUS_FILE").expect("agent: SCRAMBLER_TUNNEL_STATUS_FILE");
    assert_eq!(
        status_files,
        BTreeSet::from([file.clone()]),
        "{name}: the conflist's tunnelStatusFile is not the agent's"
    );
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| std::path::Path::new(&file).starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("{name}: {file} is not on a mounted volume"));
    let host = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.host_path.as_ref())
        .unwrap_or_else(|| panic!("{name}: {file}: volume {} is no hostPath", mount.name));
    assert_eq!(
        host.path, mount.mount_path,
        "{name}: {file} is not the host's path"
    );
    // liveness and readiness from `scrambler agent-check` (the image has no shell)
    for (probe, what) in [
        (&agent.liveness_probe, "live"),
        (&agent.readiness_probe, "ready"),
    ] {
        let cmd = probe
            .as_ref()
            .and_then(|p| p.exec.as_ref())
            .and_then(|e| e.command.clone())
            .unwrap_or_else(|| panic!("{name}: agent: no exec {what} probe"));
        assert_eq!(cmd[..2], ["scrambler", "agent-check"], "{name}: {cmd:?}");
        assert_eq!(
            cmd.last().map(String::as_str),
            Some(what),
            "{name}: {cmd:?}"
        );
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = &v.secret {
            assert_eq!(
                s.default_mode,
                Some(0o400),
                "{name}: secret volume {} not 0400",
                v.name
            );
        }
    }
}
