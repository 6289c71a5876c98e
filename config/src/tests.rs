use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load_with_env(None, env(pairs))
}

fn key_of(pairs: &[(&str, &str)]) -> String {
    load(pairs).expect_err("should be refused").key
}

#[test]
fn defaults_are_a_single_local_node() {
    let s = load(&[]).unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.auth.mode, AuthMode::None);
    assert_eq!(s.cluster.listen, None);
    assert_eq!(s.heartbeat.timeout_ms, 60_000);
}

#[test]
fn shipped_file_is_exactly_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("switchboard.toml");
    let s = Settings::load_with_env(Some(&path), env(&[])).unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn env_overrides_file() {
    let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "[node]\nname = \"from-file\"\n[limits]\noutbound_queue = 7\npublish_per_s = 9\n",
    )
    .unwrap();
    let s = Settings::load_with_env(
        Some(&file),
        env(&[
            ("SWITCHBOARD__LIMITS__OUTBOUND_QUEUE", "11"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(s.node.name, "from-file");
    assert_eq!(s.limits.outbound_queue, 11);
    assert_eq!(s.limits.publish_per_s, 9);
}

#[test]
fn timeout_follows_interval_unless_set() {
    let s = load(&[("SWITCHBOARD__HEARTBEAT__INTERVAL_MS", "1000")]).unwrap();
    assert_eq!(s.heartbeat.timeout_ms, 2000);
    let s = load(&[
        ("SWITCHBOARD__HEARTBEAT__INTERVAL_MS", "1000"),
        ("SWITCHBOARD__HEARTBEAT__TIMEOUT_MS", "5000"),
    ])
    .unwrap();
    assert_eq!(s.heartbeat.timeout_ms, 5000);
}

#[test]
fn every_rule_names_its_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("SWITCHBOARD__HEARTBEAT__INTERVAL_MS", "1000"),
                ("SWITCHBOARD__HEARTBEAT__TIMEOUT_MS", "1000"),
            ],
            "heartbeat.timeout_ms",
        ),
        (
            &[("SWITCHBOARD__HEARTBEAT__INTERVAL_MS", "5")],
            "heartbeat.interval_ms",
        ),
        (&[("SWITCHBOARD__AUTH__MODE", "jwt")], "auth.hs256_secret"),
        (&[("SWITCHBOARD__AUTH__MODE", "basic")], "auth.mode"),
        (
            &[("SWITCHBOARD__LIMITS__MAX_FRAME_BYTES", "10")],
            "limits.max_frame_bytes",
        ),
        (
            &[("SWITCHBOARD__LIMITS__OUTBOUND_QUEUE", "0")],
            "limits.outbound_queue",
        ),
        (
            &[("SWITCHBOARD__LIMITS__OUTBOUND_QUEUE", "lots")],
            "limits.outbound_queue",
        ),
        (
            &[("SWITCHBOARD__LIMITS__PUBLISH_BURST", "0")],
            "limits.publish_burst",
        ),
        (&[("SWITCHBOARD__HISTORY__TTL_S", "0")], "history.ttl_s"),
        (&[("SWITCHBOARD__NODE__NAME", "bad name")], "node.name"),
        (&[("SWITCHBOARD__HTTP__LISTEN", "nowhere")], "http.listen"),
        (&[("SWITCHBOARD__CLUSTER__SEEDS", "a:1,b")], "cluster.seeds"),
        (&[("SWITCHBOARD__CLUSTER__DNS", "svc")], "cluster.dns"),
        (&[("SWITCHBOARD__API__KEY", "")], "api.key"),
        (
            &[("SWITCHBOARD__SHUTDOWN__DRAIN_S", "99999")],
            "shutdown.drain_s",
        ),
        (&[("SWITCHBOARD__LIMITS__TYPO", "1")], "limits.typo"),
    ];
    for (pairs, key) in cases {
        assert_eq!(&key_of(pairs), key, "{pairs:?}");
    }
}

#[test]
fn unknown_keys_in_a_file_are_refused() {
    let dir = std::env::temp_dir().join(format!("sb-config-u-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "[limits]\noutbound_queu = 7\n").unwrap();
    let e = Settings::load_with_env(Some(&file), env(&[])).unwrap_err();
    assert_eq!(e.key, "limits.outbound_queu");
    std::fs::write(&file, "[nosuch]\nx = 1\n").unwrap();
    let e = Settings::load_with_env(Some(&file), env(&[])).unwrap_err();
    assert_eq!(e.key, "nosuch");
    let e = Settings::load_with_env(Some(&dir.join("missing.toml")), env(&[])).unwrap_err();
    assert!(e.key.ends_with("missing.toml"), "{e}");
}

#[test]
fn seeds_as_list_or_commas() {
    let s = load(&[("SWITCHBOARD__CLUSTER__SEEDS", "a:1, b:2")]).unwrap();
    assert_eq!(s.cluster.seeds, vec!["a:1", "b:2"]);
    let s = load(&[("SWITCHBOARD__CLUSTER__SEEDS", "[\"a:1\", \"b:2\"]")]).unwrap();
    assert_eq!(s.cluster.seeds, vec!["a:1", "b:2"]);
}
