//! The store on real SQLite files and real PostgreSQL databases: every test written
//! once over a [`DbConnection`] runs on both (`<test>::sqlite`, `<test>::postgres`; the
//! latter on a throw-away cluster, see `test_pg`). The store enforces the state
//! machine itself: every one of the 25 (from, to) pairs is applied, and invalid ones
//! write nothing. A terminal status of a workload with a callback_url enqueues its
//! webhook delivery in the same write; attempts are recorded once, in order; a
//! database of the previous version opens with its data; retention deletes only old
//! finished work.

use crate::model::{transition, Payload, Runtime, Status, Workload, WorkloadId};
use crate::store::queries::{self, StatusChange};
use crate::store::{open_writer, Database, DbConnection, StoreError};
use chrono::Utc;

/// `#[test]`s `<name>::sqlite` and `<name>::postgres` for each `fn <name>(DbConnection)`,
/// each on a fresh database of its own.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    let dir = tempfile::tempdir().expect("dir");
                    let db = super::Database::Sqlite(dir.path().join("t.db"));
                    super::$name(super::open_writer(&db).expect("open"));
                }

                #[test]
                fn postgres() {
                    let Some(url) = crate::store::test_pg::fresh_database(module_path!()) else {
                        return;
                    };
                    let db = super::Database::Postgres(url);
                    super::$name(super::open_writer(&db).expect("open"));
                }
            }
        )*
    };
}

on_both_stores!(
    outputs_are_kept_as_json_text_and_old_rows_still_read,
    attempts_are_recorded_once_in_order_and_deleted_with_their_workload,
    store_applies_exactly_the_transition_table,
    unknown_workload_is_not_found,
    payload_survives_for_recovery,
    retention_deletes_only_old_finished_work_in_small_steps,
    a_terminal_status_with_a_callback_enqueues_exactly_one_delivery_in_the_same_write,
    retention_deletes_the_webhook_attempts_of_what_it_sweeps,
    kill_requests_are_kept_on_live_rows_and_read_back_per_node,
);

fn record() -> Workload {
    crate::model::pending_fixture()
}

/// The valid path from pending to `status`.
fn path_to(status: Status) -> Vec<Status> {
    match status {
        Status::Pending => vec![],
        Status::Running => vec![Status::Running],
        Status::Completed => vec![Status::Running, Status::Completed],
        Status::Failed => vec![Status::Running, Status::Failed],
        Status::Killed => vec![Status::Running, Status::Killed],
    }
}

fn store_applies_exactly_the_transition_table(mut conn: DbConnection) {
    let mut checked = 0;
    for from in Status::ALL {
        for to in Status::ALL {
            let w = record();
            queries::insert_workload(&mut conn, &w, &Payload::Code("x".into()), b"null")
                .expect("insert");
            for step in path_to(from) {
                queries::apply_change(&mut conn, w.id, &StatusChange::to(step))
                    .expect("valid path");
            }
            let before = queries::get_workload(&mut conn, w.id).expect("get");
            assert_eq!(before.status, from);
            let change = StatusChange::to(to).with_error("e");
            let res = queries::apply_change(&mut conn, w.id, &change);
            let after = queries::get_workload(&mut conn, w.id).expect("get");
            match transition(from, to) {
                Ok(_) => {
                    assert_eq!(res.expect("allowed").status, to, "{from} -> {to}");
                    assert_eq!(after.status, to);
                }
                Err(_) => {
                    assert!(
                        matches!(res, Err(StoreError::InvalidTransition(_))),
                        "{from} -> {to} must be refused by the store"
                    );
                    assert_eq!(after, before, "{from} -> {to} wrote something");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 25);
}

fn kill_requests_are_kept_on_live_rows_and_read_back_per_node(mut conn: DbConnection) {
    let put = |conn: &mut DbConnection, node: &str| {
        let mut w = record();
        w.node_id = node.into();
        queries::insert_workload(conn, &w, &Payload::Code("x".into()), b"null").expect("insert");
        w.id
    };
    let (queued, running, done, elsewhere, untouched) = (
        put(&mut conn, "a"),
        put(&mut conn, "a"),
        put(&mut conn, "a"),
        put(&mut conn, "b"),
        put(&mut conn, "a"),
    );
    for id in [running, done] {
        queries::apply_change(&mut conn, id, &StatusChange::to(Status::Running)).expect("run");
    }
    queries::apply_change(&mut conn, done, &StatusChange::to(Status::Completed)).expect("end");
    for (id, live) in [
        (queued, true),
        (running, true),
        (done, false),
        (elsewhere, true),
    ] {
        assert_eq!(
            queries::request_kill(&mut conn, id, Utc::now()).expect("request"),
            live,
            "{id}"
        );
    }
    let mut asked = queries::kill_requests(&mut conn, "a").expect("read");
    asked.sort();
    let mut want = vec![queued, running];
    want.sort();
    assert_eq!(
        asked, want,
        "node a's live requests, not b's, not the ended one"
    );
    assert!(!asked.contains(&untouched), "a live row nobody asked about");
    // Once it ends, a request is no longer live.
    queries::apply_change(&mut conn, running, &StatusChange::to(Status::Killed)).expect("kill");
    assert_eq!(
        queries::kill_requests(&mut conn, "a").expect("read"),
        vec![queued]
    );
}

fn unknown_workload_is_not_found(mut conn: DbConnection) {
    let res = queries::apply_change(
        &mut conn,
        WorkloadId::new(),
        &StatusChange::to(Status::Running),
    );
    assert!(matches!(res, Err(StoreError::NotFound)));
}

fn payload_survives_for_recovery(mut conn: DbConnection) {
    let mut pending = record();
    pending.runtime = Runtime::Oci;
    let payload = Payload::Image {
        reference: "busybox:1.36".into(),
        command: Some(vec!["sh".into(), "-c".into()]),
    };
    queries::insert_workload(&mut conn, &pending, &payload, b"{\"a\":1}").expect("insert");
    let running = record();
    queries::insert_workload(
        &mut conn,
        &running,
        &Payload::Archive(vec![1, 2, 3]),
        b"null",
    )
    .expect("insert");
    queries::apply_change(&mut conn, running.id, &StatusChange::to(Status::Running)).expect("run");
    let rec = queries::recover(&mut conn, None).expect("recover");
    assert_eq!(rec.interrupted.len(), 1);
    assert_eq!(rec.interrupted[0].status, Status::Failed);
    assert_eq!(
        rec.interrupted[0].error.as_deref(),
        Some(queries::INTERRUPTED)
    );
    assert_eq!(rec.pending.len(), 1);
    // An OCI workload's payload is read at once (its image is pulled while it waits).
    let (got, input) = rec.pending[0].payload.clone().expect("oci payload");
    assert_eq!(got, payload);
    assert_eq!(input, b"{\"a\":1}");
    let stored_command = r#"["sh","-c"]"#;
    assert_eq!(
        rec.pending[0].payload_bytes,
        ("busybox:1.36".len() + stored_command.len() + 7) as u64
    );
}

fn outputs_are_kept_as_json_text_and_old_rows_still_read(mut conn: DbConnection) {
    use super::schema::workloads;
    use diesel::prelude::*;
    // A row finished by the previous version: it stored serde_json's rendering of a
    // parsed value. It must read back (and serve) as that same JSON.
    let old = record();
    queries::insert_workload(&mut conn, &old, &Payload::Code("1".into()), b"null").expect("insert");
    diesel::update(workloads::table.find(old.id.to_string()))
        .set((
            workloads::status.eq("completed"),
            workloads::output.eq(r#"{"sum":3,"list":[1,"x"]}"#),
        ))
        .execute(&mut conn)
        .expect("old-style row");
    let read = queries::get_workload(&mut conn, old.id).expect("read");
    let out = read.output.expect("output");
    assert_eq!(out.as_str(), r#"{"sum":3,"list":[1,"x"]}"#);
    // A row finished now keeps the workload's own text, spacing and key order included.
    let new = record();
    queries::insert_workload(&mut conn, &new, &Payload::Code("1".into()), b"null").expect("insert");
    queries::apply_change(&mut conn, new.id, &StatusChange::to(Status::Running)).expect("run");
    let mut done = StatusChange::to(Status::Completed);
    done.output = crate::model::output_value(b"{\"b\": 2, \"a\": 1}\n");
    queries::apply_change(&mut conn, new.id, &done).expect("done");
    let read = queries::get_workload(&mut conn, new.id).expect("read");
    let json = serde_json::to_string(&read).expect("serialise");
    assert!(json.contains(r#""output":{"b": 2, "a": 1}"#), "{json}");
}

/// A database written by the previous version (only the first migration applied)
/// opens with this one: the new migrations run, and every row is still there.
#[test]
fn a_database_of_the_previous_version_opens_and_keeps_its_data() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    use diesel_migrations::MigrationHarness;

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("old.db");
    let w = record();
    {
        let mut old = diesel::sqlite::SqliteConnection::establish(path.to_str().expect("utf8"))
            .expect("open");
        old.run_next_migration(crate::store::MIGRATIONS)
            .expect("the first migration only");
        // Rows as the previous version wrote them.
        old.batch_execute(&format!(
            "INSERT INTO workloads (id, status, isolation, requested_isolation, backend, \
             runtime, node_id, input_hash, cpu_limit, mem_limit, timeout_s, created_at, \
             code, input) VALUES ('{}', 'pending', 'isolate', 'auto', 'isolate', 'node', \
             'n', 'sha256:00', 1, 128, 30, '2026-11-27T09:05:48.123Z', 'x', X'6E756C6C');
             INSERT INTO log_lines (workload_id, seq, line, created_at) \
             VALUES ('{}', 0, 'kept', '2026-11-27T09:05:48.200Z');",
            w.id, w.id
        ))
        .expect("old rows");
    }
    let mut conn = open_writer(&Database::Sqlite(path.clone())).expect("the new version opens it");
    let got = queries::get_workload(&mut conn, w.id).expect("kept");
    assert_eq!(got.status, Status::Pending);
    assert_eq!(got.backend, "isolate");
    let lines = queries::log_lines(&mut conn, w.id, None, None, None).expect("lines");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].line, "kept");
    let rec = queries::recover(&mut conn, None).expect("recover");
    assert_eq!(rec.pending.len(), 1);
    // Code stays in the database until the workload is dispatched.
    assert!(rec.pending[0].payload.is_none());
    assert_eq!(rec.pending[0].payload_bytes, 1 + 4);
    assert_eq!(
        queries::load_payload(&mut conn, w.id).expect("payload"),
        (Payload::Code("x".into()), b"null".to_vec())
    );
    // The new table is there and usable.
    let key = crate::model::IdempotencyKey::parse(b"k", None).expect("key");
    let found = queries::find_idempotency_key(&mut conn, &key, chrono::DateTime::<Utc>::MIN_UTC)
        .expect("query");
    assert_eq!(found, None);
    // Its vacuum mode is kept (switching needs a full VACUUM): freed pages are reused,
    // and the retention sweep works on it all the same.
    assert_eq!(pragma(&mut conn, "auto_vacuum"), 0);
    let done = StatusChange {
        at: Utc::now() - chrono::Duration::days(30),
        ..StatusChange::to(Status::Killed)
    };
    queries::apply_change(&mut conn, w.id, &done).expect("killed long ago");
    let swept =
        queries::sweep_step(&mut conn, Utc::now(), queries::SweepBatch::STORE).expect("sweep");
    assert_eq!((swept.workloads, swept.log_lines), (1, 1));
    assert!(matches!(
        queries::get_workload(&mut conn, w.id),
        Err(StoreError::NotFound)
    ));
}

/// A SQLite PRAGMA's value (the SQLite file's own bookkeeping; call on SQLite only).
fn pragma(conn: &mut DbConnection, name: &str) -> i32 {
    assert!(!conn.is_pg(), "PRAGMA {name} is SQLite's");
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct V {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        v: i32,
    }
    diesel::sql_query(format!("SELECT {name} AS v FROM pragma_{name}"))
        .get_result::<V>(conn)
        .expect("pragma")
        .v
}

/// A workload recorded and driven to `status`, finished `age` ago (when terminal).
fn stored(
    conn: &mut DbConnection,
    status: Status,
    age: chrono::Duration,
    lines: u64,
) -> WorkloadId {
    let w = record();
    queries::insert_workload(conn, &w, &Payload::Code("x".into()), b"null").expect("insert");
    for step in path_to(status) {
        let change = StatusChange {
            at: Utc::now() - age,
            ..StatusChange::to(step)
        };
        queries::apply_change(conn, w.id, &change).expect("step");
    }
    let log: Vec<(WorkloadId, crate::model::LogLine)> = (0..lines)
        .map(|seq| {
            (
                w.id,
                crate::model::LogLine {
                    seq,
                    line: format!("line {seq}"),
                    created_at: Utc::now(),
                },
            )
        })
        .collect();
    queries::append_logs(conn, &log).expect("logs");
    w.id
}

fn retention_deletes_only_old_finished_work_in_small_steps(mut conn: DbConnection) {
    // A SQLite database created by this version returns freed pages (incremental
    // vacuum); PostgreSQL's autovacuum has the space reused instead.
    let sqlite = !conn.is_pg();
    if sqlite {
        assert_eq!(pragma(&mut conn, "auto_vacuum"), 2);
    }
    let old = chrono::Duration::days(8);
    let recent = chrono::Duration::hours(1);
    let big = stored(&mut conn, Status::Completed, old, 20_000);
    let gone = [
        stored(&mut conn, Status::Completed, old, 23),
        stored(&mut conn, Status::Failed, old, 0),
        stored(&mut conn, Status::Killed, old, 4),
    ];
    // Pending and running work is older still, and untouched.
    let kept = [
        stored(&mut conn, Status::Completed, recent, 5),
        stored(&mut conn, Status::Pending, old, 0),
        stored(&mut conn, Status::Running, old, 3),
    ];
    let key = crate::model::IdempotencyKey::parse(b"k", None).expect("key");
    let keyed = record();
    let rec = crate::model::IdempotencyRecord {
        fingerprint: "f".into(),
        workload_id: keyed.id,
        kind: crate::model::SubmitKind::Async,
    };
    queries::insert_keyed_workload(
        &mut conn,
        &keyed,
        &Payload::Code("x".into()),
        b"null",
        &key,
        &rec,
        Utc::now() - chrono::Duration::days(1),
    )
    .expect("keyed");
    for step in path_to(Status::Completed) {
        let change = StatusChange {
            at: Utc::now() - old,
            ..StatusChange::to(step)
        };
        queries::apply_change(&mut conn, keyed.id, &change).expect("step");
    }
    let before = Utc::now() - chrono::Duration::days(7);
    let pages_before = if sqlite {
        pragma(&mut conn, "page_count")
    } else {
        0
    };
    // The big log goes first (a full-size batch), and its pages go back to the disk.
    let s = queries::sweep_step(&mut conn, before, queries::SweepBatch::STORE).expect("step");
    assert_eq!((s.workloads, s.log_lines, s.more), (0, 5000, true));
    while queries::get_workload(&mut conn, big).is_ok() {
        queries::sweep_step(
            &mut conn,
            before,
            queries::SweepBatch {
                workloads: 1,
                log_lines: 5000,
            },
        )
        .expect("step");
    }
    if sqlite {
        assert!(pragma(&mut conn, "freelist_count") > 0);
    }
    queries::incremental_vacuum(&mut conn, 100_000).expect("vacuum");
    if sqlite {
        assert_eq!(pragma(&mut conn, "freelist_count"), 0);
        assert!(
            pragma(&mut conn, "page_count") < pages_before / 2,
            "space is reclaimed"
        );
    }
    let batch = queries::SweepBatch {
        workloads: 2,
        log_lines: 10,
    };
    let mut total = queries::Swept::default();
    let mut steps = 0;
    loop {
        let s = queries::sweep_step(&mut conn, before, batch).expect("step");
        assert!(s.log_lines <= 10, "{s:?}");
        assert!(s.workloads <= 2, "{s:?}");
        total.workloads += s.workloads;
        total.log_lines += s.log_lines;
        steps += 1;
        if !s.more {
            break;
        }
        assert!(steps < 50, "the sweep ends");
    }
    assert!(steps >= 3, "small steps: {steps}");
    assert_eq!((total.workloads, total.log_lines), (4, 27));
    for id in gone.iter().chain([&keyed.id]) {
        assert!(matches!(
            queries::get_workload(&mut conn, *id),
            Err(StoreError::NotFound)
        ));
        assert!(queries::log_lines(&mut conn, *id, None, None, None)
            .expect("lines")
            .is_empty());
    }
    // Its Idempotency-Key went with it.
    assert_eq!(
        queries::find_idempotency_key(&mut conn, &key, chrono::DateTime::<Utc>::MIN_UTC)
            .expect("query"),
        None
    );
    for (id, lines) in kept.iter().zip([5, 0, 3]) {
        queries::get_workload(&mut conn, *id).expect("kept");
        assert_eq!(
            queries::log_lines(&mut conn, *id, None, None, None)
                .expect("lines")
                .len(),
            lines
        );
    }
    // Nothing left to sweep.
    let s = queries::sweep_step(&mut conn, before, batch).expect("step");
    assert_eq!(s, queries::Swept::default());
}

fn with_callback(url: &str) -> Workload {
    Workload {
        callback_url: Some(url.into()),
        ..record()
    }
}

fn count(conn: &mut DbConnection, sql: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .expect("count")
        .n
}

fn a_terminal_status_with_a_callback_enqueues_exactly_one_delivery_in_the_same_write(
    mut conn: DbConnection,
) {
    let code = Payload::Code("x".into());

    let plain = record();
    queries::insert_workload(&mut conn, &plain, &code, b"null").expect("insert");
    let hooked = with_callback("https://hooks.example.com/a");
    queries::insert_workload(&mut conn, &hooked, &code, b"null").expect("insert");
    let cancelled = with_callback("https://hooks.example.com/b");
    queries::insert_workload(&mut conn, &cancelled, &code, b"null").expect("insert");

    for w in [&plain, &hooked] {
        queries::apply_change(&mut conn, w.id, &StatusChange::to(Status::Running)).expect("run");
    }
    let queued = "SELECT COUNT(*) AS n FROM workloads WHERE delivery_due_at IS NOT NULL";
    assert_eq!(count(&mut conn, queued), 0, "running is not terminal");
    for w in [&plain, &hooked] {
        let done = queries::apply_change(&mut conn, w.id, &StatusChange::to(Status::Completed))
            .expect("complete");
        assert_eq!(done.callback_url, w.callback_url);
    }
    queries::apply_change(&mut conn, cancelled.id, &StatusChange::to(Status::Killed))
        .expect("kill pending");
    // A refused transition out of a terminal status enqueues nothing more.
    let refused = queries::apply_change(&mut conn, hooked.id, &StatusChange::to(Status::Failed));
    assert!(matches!(refused, Err(StoreError::InvalidTransition(_))));

    let queue =
        crate::store::deliveries::due_deliveries(&mut conn, Utc::now(), 10, &[]).expect("queue");
    let mut due: Vec<WorkloadId> = queue.due.iter().map(|d| d.workload_id).collect();
    due.sort();
    let mut want = vec![hooked.id, cancelled.id];
    want.sort();
    assert_eq!(
        due, want,
        "one delivery per terminal workload with a callback_url"
    );
    assert_eq!(queue.pending, 2);
    assert_eq!(count(&mut conn, queued), 2);
    assert!(queue
        .due
        .iter()
        .all(|d| d.attempts == 0 && d.delivery_id.len() == 26));
    assert_ne!(queue.due[0].delivery_id, queue.due[1].delivery_id);
    // Due from the moment the status was recorded, under the id chosen at submission.
    let report = crate::store::deliveries::deliveries(&mut conn, hooked.id).expect("report");
    let finished = queries::get_workload(&mut conn, hooked.id)
        .expect("get")
        .finished_at;
    assert_eq!(report.next_attempt_at, finished);
    let due_id = queue
        .due
        .iter()
        .find(|d| d.workload_id == hooked.id)
        .map(|d| d.delivery_id.clone());
    assert_eq!(report.delivery_id, due_id);
    let none = crate::store::deliveries::deliveries(&mut conn, plain.id).expect("report");
    assert_eq!(
        (none.delivery_id, none.state, none.next_attempt_at),
        (None, None, None)
    );
}

fn attempts_are_recorded_once_in_order_and_deleted_with_their_workload(mut conn: DbConnection) {
    use crate::model::{DeliveryAttempt, DeliveryState};
    use crate::store::deliveries::{self, AttemptRecord};

    let w = with_callback("https://hooks.example.com/a");
    queries::insert_workload(&mut conn, &w, &Payload::Code("x".into()), b"null").expect("insert");
    queries::apply_change(&mut conn, w.id, &StatusChange::to(Status::Failed)).expect("fail");

    let now = Utc::now();
    let later = now + chrono::Duration::seconds(60);
    let attempt =
        |n: u32, code: Option<u16>, next: Option<chrono::DateTime<Utc>>| DeliveryAttempt {
            attempt: n,
            started_at: now,
            finished_at: now,
            status_code: code,
            error: (code != Some(200)).then(|| "receiver answered 500".to_string()),
            next_attempt_at: next,
        };
    let rec = |a: DeliveryAttempt| AttemptRecord {
        workload_id: w.id,
        attempt: a,
    };
    let first = rec(attempt(1, Some(500), Some(later)));
    assert!(deliveries::record_attempt(&mut conn, &first).expect("record"));
    assert!(
        !deliveries::record_attempt(&mut conn, &first).expect("again"),
        "the same attempt is recorded once"
    );
    let skipped = rec(attempt(3, Some(200), None));
    assert!(!deliveries::record_attempt(&mut conn, &skipped).expect("gap"));

    let report = deliveries::deliveries(&mut conn, w.id).expect("report");
    assert_eq!(report.state, Some(DeliveryState::Pending));
    assert_eq!(report.attempts.len(), 1);
    // Not due before its time; due after it.
    let q = deliveries::due_deliveries(&mut conn, now, 10, &[]).expect("queue");
    assert!(q.due.is_empty());
    assert_eq!(q.pending, 1);
    assert_eq!(
        q.next_due.map(|t| t.timestamp_millis()),
        Some(later.timestamp_millis())
    );
    let q = deliveries::due_deliveries(&mut conn, later, 10, &[]).expect("queue");
    assert_eq!(q.due.len(), 1);
    assert_eq!(q.due[0].attempts, 1);
    let q = deliveries::due_deliveries(&mut conn, later, 10, &[w.id]).expect("queue");
    assert!(q.due.is_empty(), "deliveries in flight are left out");

    let second = rec(attempt(2, Some(200), None));
    assert!(deliveries::record_attempt(&mut conn, &second).expect("record"));
    let third = rec(attempt(3, Some(200), None));
    assert!(
        !deliveries::record_attempt(&mut conn, &third).expect("settled"),
        "nothing is recorded after delivery"
    );
    let report = deliveries::deliveries(&mut conn, w.id).expect("report");
    assert_eq!(report.state, Some(DeliveryState::Delivered));
    assert_eq!(report.next_attempt_at, None);
    let numbers: Vec<u32> = report.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, vec![1, 2]);
    assert_eq!(
        report.attempts[0]
            .next_attempt_at
            .map(|t| t.timestamp_millis()),
        Some(later.timestamp_millis())
    );
    let q = deliveries::due_deliveries(&mut conn, later, 10, &[]).expect("queue");
    assert_eq!(q.pending, 0);

    // Retention deletes workloads: their deliveries and attempts go with them.
    {
        use diesel::prelude::*;
        diesel::sql_query(format!("DELETE FROM workloads WHERE id = '{}'", w.id))
            .execute(&mut conn)
            .expect("delete");
    }
    assert_eq!(
        count(&mut conn, "SELECT COUNT(*) AS n FROM webhook_attempts"),
        0
    );
    assert!(matches!(
        deliveries::deliveries(&mut conn, w.id),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn a_database_of_the_previous_version_opens_with_its_data_and_recovers() {
    use diesel::migration::MigrationSource;
    use diesel::prelude::*;
    use diesel_migrations::MigrationHarness;

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("old.db");
    // The previous version: only the first migration, rows written with its columns.
    {
        let mut conn =
            diesel::sqlite::SqliteConnection::establish(&path.to_string_lossy()).expect("open");
        let migrations =
            MigrationSource::<diesel::sqlite::Sqlite>::migrations(&crate::store::MIGRATIONS)
                .expect("migrations");
        assert_eq!(
            migrations[0].name().to_string(),
            "2026-11-27-000001_create_workloads"
        );
        conn.applied_migrations().expect("migrations table");
        conn.run_migration(&migrations[0]).expect("old schema");
        for (id, status) in [
            ("01ARZ3NDEKTSV4RRFFQ69G5FA1", "completed"),
            ("01ARZ3NDEKTSV4RRFFQ69G5FA2", "running"),
            ("01ARZ3NDEKTSV4RRFFQ69G5FA3", "pending"),
        ] {
            diesel::sql_query(format!(
                "INSERT INTO workloads (id, status, isolation, requested_isolation, backend, runtime,
                 node_id, input_hash, output, cpu_limit, mem_limit, timeout_s, created_at, code, input)
                 VALUES ('{id}', '{status}', 'isolate', 'auto', 'isolate', 'node', 'n', 'sha256:00',
                 '{{\"sum\":3}}', 1, 128, 30, '2026-11-27T09:05:48.123Z', '42', x'6e756c6c')"
            ))
            .execute(&mut conn)
            .expect("old row");
        }
        diesel::sql_query(
            "INSERT INTO log_lines VALUES ('01ARZ3NDEKTSV4RRFFQ69G5FA1', 0, 'hello', '2026-11-27T09:05:48.200Z')",
        )
        .execute(&mut conn)
        .expect("old log line");
    }

    // The new version opens it (migrating forward) and reads everything back.
    let mut conn = open_writer(&Database::Sqlite(path.clone())).expect("open with the new version");
    let done = queries::get_workload(&mut conn, "01ARZ3NDEKTSV4RRFFQ69G5FA1".parse().expect("id"))
        .expect("old workload");
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        done.output.as_ref().map(crate::model::Output::to_value),
        Some(serde_json::json!({"sum": 3}))
    );
    assert_eq!(done.callback_url, None);
    let lines = queries::log_lines(&mut conn, done.id, None, None, None).expect("lines");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].line, "hello");
    let rec = queries::recover(&mut conn, None).expect("recover");
    assert_eq!(rec.interrupted.len(), 1);
    assert_eq!(rec.pending.len(), 1);
    assert!(rec.pending[0].payload.is_none(), "read when dispatched");
    assert_eq!(
        queries::load_payload(&mut conn, rec.pending[0].workload.id).expect("payload"),
        (Payload::Code("42".into()), b"null".to_vec())
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM workloads WHERE delivery_due_at IS NOT NULL"
        ),
        0,
        "old workloads have no callback_url, so no delivery"
    );
    // Only the indexes the queries use are left; the statistics are seeded from the
    // migrated rows by one grouped query.
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'index' \
             AND name = 'workloads_backend_duration'"
        ),
        0
    );
    let seeded = crate::store::counters::StatsCounters::seeded(
        queries::stat_groups(&mut conn).expect("groups"),
    )
    .snapshot();
    assert_eq!(seeded, queries::stats(&mut conn).expect("scan"));
    assert_eq!(seeded.total, 3);
    assert_eq!(seeded.by_status["failed"], 1, "the interrupted one");
    // Cluster columns: old rows keep the node that accepted them, claimed by no
    // generation; no node is registered (a single node never registers).
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM workloads WHERE node_id = 'n' AND node_generation = 0"
        ),
        3
    );
    assert_eq!(count(&mut conn, "SELECT COUNT(*) AS n FROM nodes"), 0);
}

fn retention_deletes_the_webhook_attempts_of_what_it_sweeps(mut conn: DbConnection) {
    let hooked = with_callback("https://hooks.example.com/old");
    queries::insert_workload(&mut conn, &hooked, &Payload::Code("x".into()), b"null")
        .expect("insert");
    for step in path_to(Status::Completed) {
        let change = StatusChange {
            at: Utc::now() - chrono::Duration::days(8),
            ..StatusChange::to(step)
        };
        queries::apply_change(&mut conn, hooked.id, &change).expect("step");
    }
    let attempt = crate::store::deliveries::AttemptRecord {
        workload_id: hooked.id,
        attempt: crate::model::DeliveryAttempt {
            attempt: 1,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            status_code: Some(200),
            error: None,
            next_attempt_at: None,
        },
    };
    assert!(crate::store::deliveries::record_attempt(&mut conn, &attempt).expect("record"));
    let attempts = "SELECT COUNT(*) AS n FROM webhook_attempts";
    assert_eq!(count(&mut conn, attempts), 1);
    let swept = queries::sweep_step(
        &mut conn,
        Utc::now() - chrono::Duration::days(7),
        queries::SweepBatch::STORE,
    )
    .expect("sweep");
    assert_eq!(swept.workloads, 1);
    assert_eq!(
        count(&mut conn, attempts),
        0,
        "attempts go with their workload"
    );
}

/// Both engines end with the same schema only if every migration has its twin: the
/// trees hold the same migration names, and nothing else sits in migrations/ (a
/// migration put there would be embedded in neither).
#[test]
fn every_migration_has_a_sqlite_and_a_postgres_twin() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read migrations")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&root), vec!["postgres", "sqlite"]);
    let sqlite = names(&root.join("sqlite"));
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, names(&root.join("postgres")));
}

/// One `schema.rs` serves both engines: after their migrations, SQLite and PostgreSQL
/// hold the same tables with the same columns, in the same order, of the types Diesel
/// maps alike (TEXT, INTEGER, BIGINT, BLOB = BYTEA) and the same nullability.
#[test]
fn both_engines_end_with_the_same_columns() {
    use diesel::prelude::*;
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Column {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        column_name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        data_type: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        nullable: bool,
    }
    let Some(url) = crate::store::test_pg::fresh_database("both_engines_end_with_the_same_columns")
    else {
        return;
    };
    let mut pg = open_writer(&Database::Postgres(url)).expect("open pg");
    let dir = tempfile::tempdir().expect("dir");
    let mut sqlite = open_writer(&Database::Sqlite(dir.path().join("t.db"))).expect("open");
    let on_pg: Vec<Column> = diesel::sql_query(
        "SELECT CAST(table_name AS TEXT) AS table_name, CAST(column_name AS TEXT) AS column_name, \
         CASE data_type WHEN 'bytea' THEN 'BLOB' ELSE upper(CAST(data_type AS TEXT)) END \
         AS data_type, is_nullable = 'YES' AS nullable FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations' \
         ORDER BY table_name, ordinal_position",
    )
    .load(&mut pg)
    .expect("pg columns");
    let on_sqlite: Vec<Column> = diesel::sql_query(
        "SELECT m.name AS table_name, p.name AS column_name, upper(p.type) AS data_type, \
         (p.\"notnull\" = 0 AND p.pk = 0) AS nullable \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name <> '__diesel_schema_migrations' \
         ORDER BY m.name, p.cid",
    )
    .load(&mut sqlite)
    .expect("sqlite columns");
    assert!(on_sqlite.len() > 30, "{on_sqlite:?}");
    assert_eq!(on_pg, on_sqlite);
}
