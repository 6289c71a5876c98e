//! The Kubernetes manifests' configuration forms a cluster: the config file
//! from the ConfigMap and the environment the StatefulSet gives each pod,
//! with pod names, pod IPs and secrets filled in as Kubernetes would, and
//! the DNS name replaced by seeds on loopback.

mod common;

use std::time::Duration;

use common::{http, Server};
use serde_yaml::Value;

fn manifest(name: &str) -> Value {
    let path = format!("{}/../k8s/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The environment the StatefulSet gives pod `pod`.
fn pod_env(pod: &str) -> Vec<(String, String)> {
    let sts = manifest("statefulset.yaml");
    let secret = manifest("secret.example.yaml");
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let mut env = Vec::new();
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            v.to_owned()
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.name" => pod.to_owned(),
                "status.podIP" => "127.0.0.1".to_owned(),
                other => panic!("unexpected fieldRef {other}"),
            }
        } else if let Some(key) = var["valueFrom"]["secretKeyRef"]["key"].as_str() {
            secret["stringData"][key].as_str().unwrap().to_owned()
        } else {
            panic!("unexpected env {name}");
        };
        env.push((name, value));
    }
    env
}

#[tokio::test]
async fn the_manifests_configuration_forms_a_cluster() {
    let toml = manifest("configmap.yaml")["data"]["switchboard.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(toml.contains("dns = \"switchboard-peers:7100\""));
    let cookie = common::cookie();
    let dir = std::env::temp_dir().join(format!("sb-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut nodes: Vec<Server> = Vec::new();
    for i in 0..3 {
        let pod = format!("switchboard-{i}");
        let file = dir.join(format!("{pod}.toml"));
        // Port 0, and the pods started before this one as seeds, in place
        // of the headless Service's DNS name.
        let config = toml
            .replace("0.0.0.0:7100", "127.0.0.1:0")
            .replace("dns = \"switchboard-peers:7100\"", "");
        std::fs::write(&file, config).unwrap();
        let seeds = nodes
            .iter()
            .filter_map(|n| n.cluster_addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut env = pod_env(&pod);
        env.push(("SWITCHBOARD__CLUSTER__SEEDS".into(), seeds));
        env.push(("SWITCHBOARD__CLUSTER__COOKIE".into(), cookie.clone()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        nodes
            .push(Server::start_with(&env, file.to_str()).unwrap_or_else(|e| panic!("{pod}: {e}")));
    }
    for n in &nodes {
        n.wait_nodes(3, Duration::from_secs(20)).await;
    }
    // auth.mode = "jwt" from the ConfigMap: an upgrade without a token is refused.
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let (status, _) = http(&nodes[0].addr, "GET", "/ws", &upgrade, b"").await;
    assert_eq!(status, 401);
    // api.key from the Secret protects the HTTP API.
    let (status, _) = nodes[1]
        .http("GET", "/api/rooms/r/presence", &[], b"")
        .await;
    assert_eq!(status, 401);
    let (status, _) = nodes[1]
        .http(
            "GET",
            "/api/rooms/r/presence",
            &[("Authorization", "Bearer REPLACE-ME-api-key")],
            b"",
        )
        .await;
    assert_eq!(status, 200);
    // Node names come from the pod names.
    assert!(nodes[2].logs().contains("node=switchboard-2"));
}

#[test]
fn the_service_monitor_and_services_agree_with_the_pods() {
    let sts = manifest("statefulset.yaml");
    let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
    let ports: Vec<&str> = sts["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for file in ["service.yaml", "service-peers.yaml"] {
        let svc = manifest(file);
        for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(&pod_labels[k], v, "{file} selects pods by {k:?}");
        }
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            assert!(ports.contains(&p["targetPort"].as_str().unwrap()), "{file}");
        }
    }
    let peers = manifest("service-peers.yaml");
    assert_eq!(peers["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        peers["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert_eq!(
        sts["spec"]["serviceName"].as_str(),
        Some("switchboard-peers")
    );
    // The ServiceMonitor (a CRD, so no schema in CI) scrapes the client Service's http port.
    let sm = manifest("servicemonitor.yaml");
    let svc = manifest("service.yaml");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v);
    }
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("http"));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    // The grace period outlasts the preStop pause plus the drain.
    let toml = manifest("configmap.yaml")["data"]["switchboard.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let drain: u64 = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_s = "))
        .unwrap()
        .parse()
        .unwrap();
    let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > drain + 5,
        "grace {grace}s <= drain {drain}s + preStop 5s"
    );
}
