//! The environments the real binary must tolerate: variables orchestrators inject,
//! client variables, tokens that look like numbers, listening beyond loopback; and
//! the mistakes it must still refuse (bad values, unknown keys in a file). Defaults
//! come from the embedded config/default.toml only.

mod common;

use common::binary::Binary;
use serde_json::{json, Value};
use vulcan::config::Config;

#[tokio::test]
async fn injected_and_client_variables_are_one_warning_and_tokens_stay_verbatim() {
    let dir = tempfile::tempdir().expect("dir");
    // What a Kubernetes Service named `vulcan` injects, plus the CLI's own variables.
    let server = Binary::serve(
        dir.path(),
        &[
            ("VULCAN_PORT", "tcp://10.96.0.12:8080"),
            ("VULCAN_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("VULCAN_SERVICE_HOST", "10.96.0.12"),
            ("VULCAN_SERVER", "http://vulcan.example:8080"),
            ("VULCAN_API_TOKEN", "000123"),
        ],
    )
    .await;
    let warnings: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.contains("not Vulcan settings"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {}", server.log_text());
    let w = &warnings[0];
    assert!(w.contains("WARN"), "{w}");
    for name in [
        "VULCAN_PORT",
        "VULCAN_PORT_8080_TCP_ADDR",
        "VULCAN_SERVICE_HOST",
    ] {
        assert!(w.contains(name), "{name} not named: {w}");
    }
    assert!(
        !w.contains("VULCAN_SERVER"),
        "client variables are known: {w}"
    );
    let log = server.log_text();
    assert!(
        !log.contains("10.96.0.12") && !log.contains("000123"),
        "values (maybe secrets) never reach the log:\n{log}"
    );

    // The token is "000123", not the number 123.
    let client = reqwest::Client::new();
    let url = format!("{}/v1/workloads", server.base);
    for (token, status) in [("000123", 200), ("123", 401)] {
        let res = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status().as_u16(), status, "token {token}");
    }
}

#[tokio::test]
async fn bad_values_and_unknown_file_keys_still_stop_the_server() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("x.db");
    let db = db.to_str().expect("utf8");
    let (code, log) = Binary::run(
        &["serve"],
        &[("VULCAN_DB_PATH", db), ("VULCAN_MAX_QUEUE", "lots")],
    )
    .await;
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("max_queue"), "{log}");

    let file = dir.path().join("vulcan.toml");
    std::fs::write(&file, "listen_adress = \"127.0.0.1:0\"\n").expect("write");
    let (code, log) = Binary::run(
        &["check-config"],
        &[("VULCAN_CONFIG", file.to_str().expect("utf8"))],
    )
    .await;
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("listen_adress"), "{log}");
    assert!(!dir.path().join("x.db").exists(), "nothing started");
}

#[tokio::test]
async fn listening_beyond_loopback_without_a_token_is_warned_about() {
    let warned = |b: &Binary| b.lines().iter().any(|l| l.contains("without an API token"));
    let dir = tempfile::tempdir().expect("dir");
    let open = Binary::serve(dir.path(), &[("VULCAN_LISTEN_ADDR", "0.0.0.0:0")]).await;
    assert!(warned(&open), "{}", open.log_text());
    drop(open);

    let dir = tempfile::tempdir().expect("dir");
    let with_token = Binary::serve(
        dir.path(),
        &[
            ("VULCAN_LISTEN_ADDR", "0.0.0.0:0"),
            ("VULCAN_API_TOKEN", "t0ken"),
        ],
    )
    .await;
    assert!(!warned(&with_token), "{}", with_token.log_text());
    drop(with_token);

    let dir = tempfile::tempdir().expect("dir");
    let loopback = Binary::serve(dir.path(), &[]).await;
    assert!(!warned(&loopback), "{}", loopback.log_text());
}

#[tokio::test]
async fn the_running_server_applies_the_embedded_defaults() {
    let defaults = Config::defaults().expect("embedded defaults");
    let dir = tempfile::tempdir().expect("dir");
    let server = Binary::serve(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let w: Value = client
        .post(format!("{}/v1/workloads", server.base))
        .json(&json!({"runtime": "node", "code": "export default () => 1"}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["cpu_limit"], defaults.default_cpus);
    assert_eq!(w["mem_limit"], defaults.default_mem_mb);
    assert_eq!(w["timeout_s"], defaults.default_timeout_s);
    // Above the configured maximum: refused, with the maximum in the message.
    let res = client
        .post(format!("{}/v1/workloads", server.base))
        .json(&json!({"runtime": "node", "code": "1",
                      "resources": {"timeout_s": defaults.max_timeout_s + 1}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(res.status(), 400);
    let msg = res.json::<Value>().await.expect("json")["error"].to_string();
    assert!(msg.contains(&defaults.max_timeout_s.to_string()), "{msg}");
}
