//! Completion webhooks over HTTP, against a real receiver on a loopback port (loopback
//! explicitly allowed in these tests' configuration): signed and verifiable with the
//! documented method, retried with backoff until a 2xx, durable across a SIGKILL,
//! concurrent, SSRF-safe, and harmless whatever the receiver does.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{Received, Receiver, Reply};
use common::scripted::{self, job, Options};
use common::{TestApp, TestAppBuilder};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const SECRET: &str = "whsec_test_0123456789";

/// An app with the scripted backend and webhooks on for the loopback receiver.
fn hooks_app() -> TestAppBuilder {
    hooks_app_with(Options::default())
}

/// [`hooks_app`] with these scripted backend options.
fn hooks_app_with(options: Options) -> TestAppBuilder {
    let (f, _) = scripted::factory(options);
    common::app()
        .backend(f)
        .env("VULCAN_WEBHOOKS__ALLOWED_HOSTS", "127.0.0.1")
        .env("VULCAN_WEBHOOKS__PRIVATE_HOSTS", "127.0.0.1")
        .env("VULCAN_WEBHOOKS__ALLOW_HTTP", "true")
        .env("VULCAN_WEBHOOKS__SECRET", SECRET)
        .env("VULCAN_WEBHOOKS__RETRY_BASE_MS", "100")
        .env("VULCAN_WEBHOOKS__TIMEOUT_S", "5")
}

/// A scripted job that completes with `output`, reporting to `callback`.
fn job_with_callback(output: Value, callback: &str) -> Value {
    let mut body = job("node", json!({"output": output}));
    body["callback_url"] = json!(callback);
    body
}

/// The verification of docs/api.md ("Verifying a delivery"), written independently of
/// the server's signer: split the header, HMAC-SHA256 over `t.body`, compare in
/// constant time, bound the age of `t`. Returns `t`.
fn verify(secret: &str, header: &str, body: &[u8]) -> Result<i64, String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (t, v1) = t.zip(v1).ok_or(format!("malformed header {header:?}"))?;
    let t: i64 = t.parse().map_err(|_| format!("bad t in {header:?}"))?;
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return Err(format!("t={t} is more than 5 minutes away"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    if bool::from(expected.as_bytes().ct_eq(v1.as_bytes())) {
        Ok(t)
    } else {
        Err("signature mismatch".into())
    }
}

/// The Python sample of docs/api.md, run as documented (None when python3 is missing).
fn verify_with_documented_python(secret: &str, header: &str, body: &[u8]) -> Option<bool> {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
        .expect("docs/api.md");
    let section = docs
        .split("### Verifying a delivery")
        .nth(1)
        .expect("docs/api.md has a 'Verifying a delivery' section");
    let sample = section
        .split("```python\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a python sample in the section");
    let program = format!(
        "{sample}\nimport os, sys\nsys.exit(0 if verify(os.environ['SECRET'].encode(), os.environ['SIG'], sys.stdin.buffer.read()) else 1)\n"
    );
    let mut child = match Command::new("python3")
        .arg("-c")
        .arg(program)
        .env("SECRET", secret)
        .env("SIG", header)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED: the documented Python verification needs python3 ({e})");
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write body");
    Some(child.wait().expect("python3").success())
}

async fn deliveries(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/v1/workloads/{id}/deliveries"), 200)
        .await
}

/// Poll the deliveries of `id` until its state is `state`.
async fn wait_delivery(app: &TestApp, id: &str, state: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let d = deliveries(app, id).await;
        if d["state"] == state {
            return d;
        }
        assert!(
            start.elapsed() < within,
            "delivery of {id} not {state} after {within:?}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn id_of(w: &Value) -> String {
    w["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn completion_is_posted_signed_and_verifiable_with_the_documented_method() {
    let receiver = Receiver::start().await;
    let app = hooks_app().spawn().await;
    let w = app
        .submit_async(&job_with_callback(
            json!({"sum": 3}),
            &receiver.url("/hook?src=test"),
        ))
        .await;
    let id = id_of(&w);
    assert_eq!(w["callback_url"], receiver.url("/hook?src=test"));

    let got = receiver.wait_for("/hook", 1, Duration::from_secs(20)).await;
    let hit = &got[0];
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("vulcan-event"), "workload.finished");
    let delivery_id = hit.header("vulcan-delivery").to_string();
    assert_eq!(delivery_id.len(), 26, "a ULID: {delivery_id}");
    assert!(delivery_id.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_ne!(delivery_id, id, "the delivery has its own id");

    // The body is the workload object, byte for byte the JSON of GET.
    let stored = app.get(&format!("/v1/workloads/{id}")).await;
    assert_eq!(stored.status(), 200);
    let stored = stored.bytes().await.expect("body");
    assert_eq!(hit.body, stored.to_vec(), "webhook body differs from GET");
    assert_eq!(hit.json()["status"], "completed");
    assert_eq!(hit.json()["output"], json!({"sum": 3}));

    // The signature verifies with the documented method; a changed byte, another key
    // or an old timestamp do not.
    let signature = hit.header("vulcan-signature").to_string();
    verify(SECRET, &signature, &hit.body).expect("documented verification");
    let mut tampered = hit.body.clone();
    tampered[1] ^= 1;
    assert!(verify(SECRET, &signature, &tampered).is_err());
    assert!(verify("another secret", &signature, &hit.body).is_err());
    if let Some(ok) = verify_with_documented_python(SECRET, &signature, &hit.body) {
        assert!(
            ok,
            "the Python sample of docs/api.md rejects a genuine delivery"
        );
        assert_eq!(
            verify_with_documented_python(SECRET, &signature, &tampered),
            Some(false),
            "the Python sample accepts a tampered body"
        );
        let old = format!(
            "t=1000000000,v1={}",
            signature.split("v1=").nth(1).expect("v1")
        );
        assert_eq!(
            verify_with_documented_python(SECRET, &old, &hit.body),
            Some(false),
            "the Python sample accepts a replayed timestamp"
        );
    }

    let d = wait_delivery(&app, &id, "delivered", Duration::from_secs(10)).await;
    assert_eq!(d["workload_id"], id.as_str());
    assert_eq!(d["delivery_id"], delivery_id.as_str());
    assert_eq!(d["callback_url"], receiver.url("/hook?src=test"));
    assert_eq!(d["next_attempt_at"], Value::Null);
    let attempts = d["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{d}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["status_code"], 200);
    assert_eq!(attempts[0]["error"], Value::Null);
    assert_eq!(attempts[0]["next_attempt_at"], Value::Null);

    // Delivered means never again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received("/hook").len(), 1);
    app.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn failed_and_killed_workloads_and_sync_submissions_are_delivered_too() {
    let receiver = Receiver::start().await;
    let app = hooks_app().spawn().await;
    let mut expected = Vec::new();

    let mut failing = job("node", json!({"error": "boom", "exit_code": 3}));
    failing["callback_url"] = json!(receiver.url("/failed"));
    let res = app.post("/v1/workloads", &failing).await;
    assert_eq!(res.status(), 200);
    let w: Value = res.json().await.expect("json");
    assert_eq!(w["status"], "failed");
    expected.push(("/failed", id_of(&w), "failed"));

    let mut long = job("node", json!({"delay_ms": 60000}));
    long["callback_url"] = json!(receiver.url("/killed"));
    let w = app.submit_async(&long).await;
    app.wait_status(&id_of(&w), "running", Duration::from_secs(10))
        .await;
    // Not terminal yet: the delivery has its id, nothing else.
    let d = deliveries(&app, &id_of(&w)).await;
    assert_eq!(d["callback_url"], receiver.url("/killed"));
    assert!(d["delivery_id"].is_string(), "{d}");
    assert_eq!(
        (&d["state"], &d["next_attempt_at"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(d["attempts"], json!([]));
    assert_eq!(
        app.delete(&format!("/v1/workloads/{}", id_of(&w)))
            .await
            .status(),
        200
    );
    expected.push(("/killed", id_of(&w), "killed"));

    let res = app
        .post(
            "/v1/workloads",
            &job_with_callback(json!(1), &receiver.url("/sync")),
        )
        .await;
    assert_eq!(res.status(), 200);
    let w: Value = res.json().await.expect("json");
    expected.push(("/sync", id_of(&w), "completed"));

    for (path, id, status) in expected {
        let got = receiver.wait_for(path, 1, Duration::from_secs(20)).await;
        assert_eq!(got[0].json()["id"], id.as_str());
        assert_eq!(got[0].json()["status"], status);
        verify(SECRET, got[0].header("vulcan-signature"), &got[0].body).expect("signed");
        wait_delivery(&app, &id, "delivered", Duration::from_secs(10)).await;
    }

    // Without callback_url: nothing is sent, and the deliveries answer is empty.
    let w = app.post("/v1/workloads", &job("node", json!({}))).await;
    let w: Value = w.json().await.expect("json");
    assert_eq!(w["callback_url"], Value::Null);
    let d = deliveries(&app, &id_of(&w)).await;
    assert_eq!(
        d,
        json!({"workload_id": id_of(&w), "callback_url": null, "delivery_id": null,
               "state": null, "next_attempt_at": null, "attempts": []})
    );
    assert_eq!(receiver.all().len(), 3);
    assert_eq!(
        app.get("/v1/workloads/01ARZ3NDEKTSV4RRFFQ69G5FAV/deliveries")
            .await
            .status(),
        404
    );
    app.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_receiver_failing_the_first_three_attempts_gets_the_fourth() {
    let receiver = Receiver::start().await;
    // Failure kinds: an error status, no answer in time, a redirect (not followed).
    receiver.script(
        "/hook",
        vec![
            Reply::Status(500),
            Reply::After(Duration::from_secs(4), 200),
            Reply::Redirect(receiver.url("/elsewhere")),
        ],
        Reply::Status(204),
    );
    let base_ms = 300u64;
    let app = hooks_app()
        .env("VULCAN_WEBHOOKS__RETRY_BASE_MS", &base_ms.to_string())
        .env("VULCAN_WEBHOOKS__TIMEOUT_S", "1")
        .spawn()
        .await;
    let w = app
        .submit_async(&job_with_callback(json!("x"), &receiver.url("/hook")))
        .await;
    let id = id_of(&w);

    let d = wait_delivery(&app, &id, "delivered", Duration::from_secs(60)).await;
    let got = receiver.received("/hook");
    assert_eq!(got.len(), 4, "exactly four attempts reached the receiver");
    assert!(
        receiver.received("/elsewhere").is_empty(),
        "a redirect was followed"
    );
    for hit in &got {
        assert_eq!(
            hit.header("vulcan-delivery"),
            got[0].header("vulcan-delivery")
        );
        assert_eq!(hit.body, got[0].body, "every attempt sends the same body");
        verify(SECRET, hit.header("vulcan-signature"), &hit.body).expect("signed");
    }

    let attempts = d["attempts"].as_array().expect("attempts").clone();
    assert_eq!(attempts.len(), 4, "{d}");
    let want = [
        (json!(500), Some("500")),
        (Value::Null, Some("no answer within 1s")),
        (json!(302), Some("302")),
        (json!(204), None),
    ];
    for (i, (a, (code, error))) in attempts.iter().zip(want).enumerate() {
        assert_eq!(a["attempt"], i + 1);
        assert_eq!(a["status_code"], code, "attempt {}: {a}", i + 1);
        match error {
            Some(e) => assert!(
                a["error"].as_str().unwrap_or("").contains(e),
                "attempt {}: {a}",
                i + 1
            ),
            None => assert_eq!(a["error"], Value::Null),
        }
    }

    // Exponential backoff with jitter: retry n is scheduled between half of and all of
    // base * 2^(n-1) after attempt n ended, and was not sent before it was due.
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("time")).expect("rfc3339")
    };
    for n in 1..=3usize {
        let a = &attempts[n - 1];
        let ceiling = (base_ms << (n - 1)) as i64;
        let waited = (time(&a["next_attempt_at"]) - time(&a["finished_at"])).num_milliseconds();
        assert!(
            (ceiling / 2 - 1..=ceiling + 1).contains(&waited),
            "retry {n} scheduled {waited} ms after attempt {n}, outside [{}, {ceiling}]",
            ceiling / 2
        );
        assert!(
            time(&attempts[n]["started_at"]) >= time(&a["next_attempt_at"]),
            "attempt {} started before it was due",
            n + 1
        );
        let gap = got[n].at.duration_since(got[n - 1].at).as_millis() as i64;
        assert!(
            gap + 5 >= ceiling / 2,
            "attempts {n} and {} only {gap} ms apart",
            n + 1
        );
    }
    assert_eq!(attempts[3]["next_attempt_at"], Value::Null);

    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    for (series, want) in [
        (
            "vulcan_webhook_deliveries_total{outcome=\"delivered\"}",
            1.0,
        ),
        ("vulcan_webhook_attempts_total{result=\"http_status\"}", 2.0),
        ("vulcan_webhook_attempts_total{result=\"timeout\"}", 1.0),
        ("vulcan_webhook_attempts_total{result=\"success\"}", 1.0),
    ] {
        assert_eq!(metric(&metrics, series), want, "{series}\n{metrics}");
    }
    app.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn deliveries_that_never_succeed_end_failed_after_max_attempts() {
    // A port nobody listens on: every attempt is a connection error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let app = hooks_app()
        .env("VULCAN_WEBHOOKS__MAX_ATTEMPTS", "3")
        .env("VULCAN_WEBHOOKS__RETRY_BASE_MS", "50")
        .spawn()
        .await;
    let w = app
        .submit_async(&job_with_callback(
            json!(1),
            &format!("http://127.0.0.1:{closed}/hook"),
        ))
        .await;
    let d = wait_delivery(&app, &id_of(&w), "failed", Duration::from_secs(30)).await;
    let attempts = d["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "{d}");
    for a in attempts {
        assert_eq!(a["status_code"], Value::Null);
        assert!(
            a["error"]
                .as_str()
                .unwrap_or("")
                .contains("could not connect"),
            "{a}"
        );
    }
    assert!(attempts[1]["next_attempt_at"].is_string());
    assert_eq!(attempts[2]["next_attempt_at"], Value::Null);
    assert_eq!(d["next_attempt_at"], Value::Null);

    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert_eq!(
        metric(
            &metrics,
            "vulcan_webhook_deliveries_total{outcome=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "vulcan_webhook_attempts_total{result=\"error\"}"),
        3.0
    );
    // The gauge is refreshed when the deliverer next reads its queue, just after it
    // recorded the last attempt: wait for that read (a liveness bound, not a timing check).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.get("/metrics").await.text().await.expect("metrics");
        let depth = metric(&metrics, "vulcan_webhook_queue_depth");
        if depth == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue depth stays {depth}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

/// `vulcan serve` on `port` and `db`, webhooks on for loopback.
fn serve(db: &std::path::Path, port: u16, retry_base_ms: u64) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_vulcan"))
        .arg("serve")
        .env("VULCAN_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("VULCAN_DB_PATH", db)
        .envs(common::store::db_url(db).map(|url| ("VULCAN_DB_URL", url)))
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .env("VULCAN_BACKENDS__MICROVM__ENABLED", "false")
        .env("VULCAN_WEBHOOKS__ALLOWED_HOSTS", "127.0.0.1")
        .env("VULCAN_WEBHOOKS__PRIVATE_HOSTS", "127.0.0.1")
        .env("VULCAN_WEBHOOKS__ALLOW_HTTP", "true")
        .env("VULCAN_WEBHOOKS__SECRET", SECRET)
        .env("VULCAN_WEBHOOKS__RETRY_BASE_MS", retry_base_ms.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vulcan serve")
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let t = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigkill(child: &mut std::process::Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test]
async fn server_killed_between_attempts_resumes_after_restart_without_duplicates() {
    let receiver = Receiver::start().await;
    receiver.script("/hook", vec![Reply::Status(503)], Reply::Status(200));
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("vulcan.db");
    let client = reqwest::Client::new();
    // A long base (retry 3-6 s after the first failure) leaves ample time to kill the
    // server between the attempts.
    let retry_base_ms = 6000;

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(&db, port, retry_base_ms);
    wait_healthy(&client, &base).await;
    let res = client
        .post(format!("{base}/v1/workloads/async"))
        .json(&json!({"runtime": "node", "code": "42", "callback_url": receiver.url("/hook")}))
        .send()
        .await
        .expect("submit");
    assert_eq!(res.status(), 202);
    let id = id_of(&res.json().await.expect("json"));

    // Wait until the failed first attempt is recorded, then SIGKILL.
    let t = Instant::now();
    let before = loop {
        let d: Value = client
            .get(format!("{base}/v1/workloads/{id}/deliveries"))
            .send()
            .await
            .expect("deliveries")
            .json()
            .await
            .expect("json");
        if d["attempts"].as_array().is_some_and(|a| a.len() == 1) {
            break d;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "first attempt not recorded: {d}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sigkill(&mut server);
    assert_eq!(before["state"], "pending");
    assert_eq!(before["attempts"][0]["status_code"], 503);
    assert_eq!(
        receiver.received("/hook").len(),
        1,
        "killed between the attempts"
    );
    let due = chrono::DateTime::parse_from_rfc3339(
        before["next_attempt_at"].as_str().expect("next attempt"),
    )
    .expect("time");

    // Restart on the same database: the delivery resumes when due.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(&db, port, retry_base_ms);
    wait_healthy(&client, &base).await;
    let got = receiver.wait_for("/hook", 2, Duration::from_secs(60)).await;
    assert!(
        chrono::Utc::now() >= due,
        "the second attempt came before it was due"
    );
    assert_eq!(
        got[1].header("vulcan-delivery"),
        got[0].header("vulcan-delivery")
    );
    assert_eq!(got[1].json()["id"], id.as_str());
    verify(SECRET, got[1].header("vulcan-signature"), &got[1].body).expect("signed");
    let t = Instant::now();
    let after = loop {
        let d: Value = client
            .get(format!("{base}/v1/workloads/{id}/deliveries"))
            .send()
            .await
            .expect("deliveries")
            .json()
            .await
            .expect("json");
        if d["state"] == "delivered" {
            break d;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not delivered: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        after["attempts"].as_array().map(Vec::len),
        Some(2),
        "{after}"
    );
    assert_eq!(after["attempts"][1]["status_code"], 200);

    // After the 2xx: another SIGKILL and restart send nothing more.
    sigkill(&mut server);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(&db, port, retry_base_ms);
    wait_healthy(&client, &base).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.received("/hook").len(),
        2,
        "a delivered webhook was sent again"
    );
    sigkill(&mut server);
    receiver.stop().await;
}

#[tokio::test]
async fn a_slow_receiver_does_not_slow_other_workloads_or_deliveries() {
    let receiver = Receiver::start().await;
    receiver.script("/slow", vec![], Reply::After(Duration::from_secs(120), 200));
    let app = hooks_app()
        .env("VULCAN_WEBHOOKS__TIMEOUT_S", "300")
        .env("VULCAN_WEBHOOKS__MAX_CONCURRENCY", "4")
        .spawn()
        .await;
    let slow = app
        .submit_async(&job_with_callback(json!("slow"), &receiver.url("/slow")))
        .await;
    receiver.wait_for("/slow", 1, Duration::from_secs(20)).await;

    // While that attempt hangs: plain workloads run, and other deliveries go out.
    let started = Instant::now();
    for i in 0..20 {
        let res = app
            .post("/v1/workloads", &job("node", json!({"output": i})))
            .await;
        let w: Value = res.json().await.expect("json");
        assert_eq!(w["status"], "completed");
    }
    let mut ids = Vec::new();
    for i in 0..10 {
        let w = app
            .submit_async(&job_with_callback(json!(i), &receiver.url("/fast")))
            .await;
        ids.push(id_of(&w));
    }
    receiver
        .wait_for("/fast", 10, Duration::from_secs(30))
        .await;
    for id in &ids {
        wait_delivery(&app, id, "delivered", Duration::from_secs(10)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "liveness: other work took {:?}",
        started.elapsed()
    );
    let d = deliveries(&app, &id_of(&slow)).await;
    assert_eq!(
        d["state"], "pending",
        "the slow attempt is still in flight: {d}"
    );
    assert_eq!(d["attempts"], json!([]));
    assert_eq!(receiver.received("/slow").len(), 1);
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert_eq!(
        metric(&metrics, "vulcan_webhook_in_flight"),
        1.0,
        "{metrics}"
    );
    app.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn disallowed_and_private_address_callback_urls_are_refused_at_submission() {
    let receiver = Receiver::start().await;
    // Webhooks off by default: any callback_url is refused.
    let (f, _) = scripted::factory(Options::default());
    let off = common::app().backend(f).spawn().await;
    let res = off
        .post(
            "/v1/workloads/async",
            &job_with_callback(json!(1), &receiver.url("/x")),
        )
        .await;
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.expect("json");
    assert!(
        v["error"].as_str().unwrap_or("").contains("not enabled"),
        "{v}"
    );
    off.stop().await;

    let long = format!("https://a.example.org/{}", "x".repeat(2100));
    let cases: Vec<(&str, &str, &str)> = vec![
        // (allowed_hosts, callback_url, the 400 names)
        (
            "127.0.0.1,*.example.org",
            "https://other.example.com/",
            "not allowed",
        ),
        (
            "127.0.0.1,*.example.org",
            "https://example.org/",
            "not allowed",
        ),
        (
            "127.0.0.1,*.example.org",
            "http://a.example.org/",
            "must use https",
        ),
        (
            "127.0.0.1,*.example.org",
            "ftp://a.example.org/",
            "must be an https URL",
        ),
        (
            "127.0.0.1,*.example.org",
            "https://u:p@a.example.org/",
            "credentials",
        ),
        (
            "127.0.0.1,*.example.org",
            "a.example.org/hook",
            "not a valid URL",
        ),
        ("127.0.0.1,*.example.org", &long, "longer than"),
        ("*", "https://127.0.0.2/", "loopback"),
        ("*", "https://2130706433/", "loopback"),
        ("*", "https://[::1]/", "loopback"),
        ("*", "https://10.1.2.3/", "private"),
        ("*", "https://192.168.0.1/", "private"),
        (
            "*",
            "https://169.254.169.254/latest/meta-data/",
            "cloud metadata",
        ),
        ("*", "https://[fd00:ec2::254]/", "cloud metadata"),
        ("*", "https://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("*", "https://100.64.0.1/", "CGNAT"),
        ("*", "https://0.0.0.0/", "unspecified"),
        ("*", "https://224.0.0.1/", "multicast"),
    ];
    let mut by_policy: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for (allowed, url, why) in cases {
        match by_policy.iter_mut().find(|(a, _)| *a == allowed) {
            Some((_, list)) => list.push((url, why)),
            None => by_policy.push((allowed, vec![(url, why)])),
        }
    }
    for (allowed, cases) in by_policy {
        let app = hooks_app()
            .env("VULCAN_WEBHOOKS__ALLOWED_HOSTS", allowed)
            .env("VULCAN_WEBHOOKS__PRIVATE_HOSTS", "")
            .env("VULCAN_WEBHOOKS__ALLOW_HTTP", "false")
            .spawn()
            .await;
        for (url, why) in cases {
            for path in ["/v1/workloads", "/v1/workloads/async"] {
                let res = app.post(path, &job_with_callback(json!(1), url)).await;
                assert_eq!(res.status(), 400, "{path} {url}");
                let v: Value = res.json().await.expect("json");
                let msg = v["error"].as_str().unwrap_or("");
                assert!(msg.contains(why), "{url}: {msg:?} should say {why:?}");
            }
        }
        // Nothing was recorded, the server is fine, the next workload runs at once.
        let list = app.get_json("/v1/workloads", 200).await;
        assert_eq!(list["total"], 0, "a refused submission was recorded");
        let res = app
            .post("/v1/workloads", &job("node", json!({"output": 7})))
            .await;
        let w: Value = res.json().await.expect("json");
        assert_eq!(w["status"], "completed");
        app.stop().await;
    }

    // A callback_url that is not a string is a 400 too.
    let app = hooks_app().spawn().await;
    let mut body = job("node", json!({}));
    body["callback_url"] = json!(42);
    assert_eq!(app.post("/v1/workloads", &body).await.status(), 400);
    app.stop().await;
    assert!(receiver.all().is_empty());
    receiver.stop().await;
}

#[tokio::test]
async fn a_host_resolving_to_a_private_address_is_refused_at_delivery_time() {
    let receiver = Receiver::start().await;
    // "localhost" is an allowed host name, but not a private host: whatever it resolves
    // to (127.0.0.1, ::1) is loopback, so no attempt may connect.
    let app = hooks_app()
        .env("VULCAN_WEBHOOKS__ALLOWED_HOSTS", "localhost,127.0.0.1")
        .env("VULCAN_WEBHOOKS__MAX_ATTEMPTS", "2")
        .env("VULCAN_WEBHOOKS__RETRY_BASE_MS", "50")
        .spawn()
        .await;
    let url = format!("http://localhost:{}/hook", receiver.port());
    let w = app.submit_async(&job_with_callback(json!(1), &url)).await;
    assert_eq!(w["callback_url"], url.as_str(), "accepted at submission");
    let d = wait_delivery(&app, &id_of(&w), "failed", Duration::from_secs(30)).await;
    let attempts = d["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{d}");
    for a in attempts {
        let error = a["error"].as_str().unwrap_or("");
        assert!(
            error.contains("localhost resolves to") && error.contains("loopback address"),
            "{a}"
        );
        assert_eq!(a["status_code"], Value::Null);
    }
    assert!(
        receiver.all().is_empty(),
        "a refused address was connected to"
    );
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert_eq!(
        metric(
            &metrics,
            "vulcan_webhook_attempts_total{result=\"refused\"}"
        ),
        2.0
    );

    // The same receiver through the private host is delivered at once.
    let w = app
        .submit_async(&job_with_callback(json!(2), &receiver.url("/hook")))
        .await;
    wait_delivery(&app, &id_of(&w), "delivered", Duration::from_secs(20)).await;
    assert_eq!(receiver.all().len(), 1);
    app.stop().await;
    receiver.stop().await;
}

/// A raw TCP "receiver" that answers every connection with `answer` (then closes).
fn raw_receiver(answer: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer);
        }
    });
    port
}

#[tokio::test]
async fn hostile_receivers_fail_the_attempt_clearly_and_harm_nothing() {
    let receiver = Receiver::start().await;
    receiver.script("/hang", vec![], Reply::After(Duration::from_secs(60), 200));
    receiver.script(
        "/metadata",
        vec![],
        Reply::Redirect("http://169.254.169.254/latest/meta-data/".into()),
    );
    receiver.script("/huge", vec![], Reply::Huge(256 * 1024 * 1024));
    let garbage = raw_receiver(b"this is not HTTP at all\r\n\r\n");
    let closing = raw_receiver(b"");
    let app = hooks_app()
        .env("VULCAN_WEBHOOKS__TIMEOUT_S", "1")
        .env("VULCAN_WEBHOOKS__MAX_ATTEMPTS", "1")
        .spawn()
        .await;
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        // (callback_url, final state, the recorded error names)
        (receiver.url("/hang"), "failed", Some("no answer within 1s")),
        (receiver.url("/metadata"), "failed", Some("302")),
        (receiver.url("/huge"), "delivered", None),
        (
            format!("http://127.0.0.1:{garbage}/x"),
            "failed",
            Some("request failed"),
        ),
        (
            format!("http://127.0.0.1:{closing}/x"),
            "failed",
            Some("request failed"),
        ),
    ];
    for (url, state, error) in cases {
        let started = Instant::now();
        let w = app.submit_async(&job_with_callback(json!(1), &url)).await;
        let d = wait_delivery(&app, &id_of(&w), state, Duration::from_secs(30)).await;
        let attempt = &d["attempts"][0];
        match error {
            Some(e) => assert!(
                attempt["error"].as_str().unwrap_or("").contains(e),
                "{url}: {attempt}"
            ),
            None => assert_eq!(attempt["error"], Value::Null, "{url}: {attempt}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url}: the attempt was not bounded ({:?})",
            started.elapsed()
        );
        // The server is fine and the next workload runs at once.
        assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
        let res = app
            .post("/v1/workloads", &job("node", json!({"output": 1})))
            .await;
        let next: Value = res.json().await.expect("json");
        assert_eq!(next["status"], "completed", "{url}");
    }
    assert!(receiver.received("/latest/meta-data/").is_empty());
    app.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn hundred_workloads_with_callbacks_are_all_delivered() {
    let receiver = Receiver::start().await;
    let app = hooks_app().spawn().await;
    let mut ids = std::collections::HashSet::new();
    for i in 0..100 {
        let w = app
            .submit_async(&job_with_callback(
                json!({"n": i}),
                &receiver.url(&format!("/many?n={i}")),
            ))
            .await;
        ids.insert(id_of(&w));
    }
    let got = receiver
        .wait_for("/many", 100, Duration::from_secs(120))
        .await;
    let delivered: std::collections::HashSet<String> = got
        .iter()
        .map(|r: &Received| r.json()["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(delivered, ids, "every workload delivered");
    let delivery_ids: std::collections::HashSet<&str> =
        got.iter().map(|r| r.header("vulcan-delivery")).collect();
    assert_eq!(delivery_ids.len(), 100, "one delivery id per workload");
    for r in &got {
        verify(SECRET, r.header("vulcan-signature"), &r.body).expect("signed");
    }
    for id in &ids {
        wait_delivery(&app, id, "delivered", Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received("/many").len(), 100, "no duplicates");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert_eq!(
        metric(
            &metrics,
            "vulcan_webhook_deliveries_total{outcome=\"delivered\"}"
        ),
        100.0
    );
    assert_eq!(metric(&metrics, "vulcan_webhook_queue_depth"), 0.0);
    app.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn callbacks_survive_a_crash_with_pending_and_interrupted_workloads() {
    let receiver = Receiver::start().await;
    let one_slot = || {
        hooks_app_with(Options {
            max_concurrency: 1,
            ..Options::default()
        })
    };
    let app = one_slot().spawn().await;
    let mut running = job("node", json!({"delay_ms": 60000}));
    running["callback_url"] = json!(receiver.url("/interrupted"));
    let running = id_of(&app.submit_async(&running).await);
    app.wait_status(&running, "running", Duration::from_secs(10))
        .await;
    let queued = id_of(
        &app.submit_async(&job_with_callback(json!("later"), &receiver.url("/queued")))
            .await,
    );
    assert_eq!(
        app.get_json(&format!("/v1/workloads/{queued}"), 200).await["status"],
        "pending"
    );
    let db = app.db_path.clone();
    let _dir = app.crash().await;
    assert!(receiver.all().is_empty());

    // Restart: the running one is recorded as interrupted and its webhook goes out; the
    // pending one kept its callback_url, runs, and is delivered.
    let app = one_slot().db(db).spawn().await;
    let got = receiver
        .wait_for("/interrupted", 1, Duration::from_secs(20))
        .await;
    assert_eq!(got[0].json()["id"], running.as_str());
    assert_eq!(got[0].json()["status"], "failed");
    assert_eq!(got[0].json()["error"], "interrupted by server restart");
    let got = receiver
        .wait_for("/queued", 1, Duration::from_secs(20))
        .await;
    assert_eq!(got[0].json()["id"], queued.as_str());
    assert_eq!(got[0].json()["status"], "completed");
    assert_eq!(got[0].json()["callback_url"], receiver.url("/queued"));
    for id in [&running, &queued] {
        wait_delivery(&app, id, "delivered", Duration::from_secs(10)).await;
    }
    app.stop().await;
    receiver.stop().await;
}
