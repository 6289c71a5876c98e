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
        (
            &[("SWITCHBOARD__HTTP__TRUSTED_PROXIES", "10.0.0.0/33")],
            "http.trusted_proxies",
        ),
        (
            &[("SWITCHBOARD__HTTP__PROXY_PROTOCOL", "true")],
            "http.proxy_protocol",
        ),
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

#[test]
fn trusted_proxies_as_list_or_commas() {
    let s = load(&[(
        "SWITCHBOARD__HTTP__TRUSTED_PROXIES",
        "10.0.0.0/8, 2001:db8::/32,192.0.2.7",
    )])
    .unwrap();
    let shown: Vec<String> = s.http.trusted_proxies.iter().map(Cidr::to_string).collect();
    assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
    let s = load(&[
        ("SWITCHBOARD__HTTP__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
        ("SWITCHBOARD__HTTP__PROXY_PROTOCOL", "true"),
    ])
    .unwrap();
    assert!(s.http.proxy_protocol);
    assert_eq!(s.http.trusted_proxies.len(), 1);
}

#[test]
fn a_bad_cidr_is_named_with_its_key() {
    for (bad, says) in [
        ("10.0.0.0/33", "prefix length must be 0 to 32"),
        ("2001:db8::/129", "prefix length must be 0 to 128"),
        ("10.1.2.3/8", "the block would be 10.0.0.0/8"),
        ("ten.0.0.0/8", "not an IP address"),
        ("10.0.0.0/", "prefix length"),
        ("10.0.0.0/-1", "prefix length"),
        ("", "not an IP address"),
    ] {
        let e =
            load(&[("SWITCHBOARD__HTTP__TRUSTED_PROXIES", &format!("[{bad:?}]"))]).expect_err(bad);
        assert_eq!(e.key, "http.trusted_proxies", "{bad}: {e}");
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
}

#[test]
fn trusted_proxies_match_their_blocks_only() {
    let s = load(&[(
        "SWITCHBOARD__HTTP__TRUSTED_PROXIES",
        "10.0.0.0/8,2001:db8::/32,192.0.2.7",
    )])
    .unwrap();
    let trusted = |ip: &str| s.http.is_trusted_proxy(ip.parse().unwrap());
    assert!(trusted("10.255.0.1") && trusted("10.0.0.0"));
    assert!(!trusted("11.0.0.1") && !trusted("9.255.255.255"));
    assert!(trusted("192.0.2.7") && !trusted("192.0.2.8"));
    assert!(trusted("2001:db8:ffff::1") && !trusted("2001:db9::1"));
    // A dual-stack listener sees IPv4 peers as IPv4-mapped addresses.
    assert!(trusted("::ffff:10.1.2.3") && !trusted("::ffff:11.1.2.3"));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("203.0.113.9".parse().unwrap()));
    assert!(!all.contains("2001:db8::1".parse().unwrap()));
    assert!(!Settings::default()
        .http
        .is_trusted_proxy("127.0.0.1".parse().unwrap()));
}
