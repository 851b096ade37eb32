// @generated automatically by Diesel CLI.

diesel::table! {
    idempotency_keys (scope, key) {
        scope -> Text,
        key -> Text,
        fingerprint -> Text,
        workload_id -> Text,
        kind -> Text,
        created_at -> Text,
    }
}

diesel::table! {
    log_lines (workload_id, seq) {
        workload_id -> Text,
        seq -> BigInt,
        line -> Text,
        created_at -> Text,
    }
}

diesel::table! {
    nodes (node_id) {
        node_id -> Text,
        generation -> BigInt,
        backends -> Text,
        started_at -> Text,
        heartbeat_at -> Text,
        state -> Text,
    }
}

diesel::table! {
    webhook_attempts (workload_id, attempt) {
        workload_id -> Text,
        attempt -> Integer,
        started_at -> Text,
        finished_at -> Text,
        status_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        next_attempt_at -> Nullable<Text>,
    }
}

diesel::table! {
    workloads (id) {
        id -> Text,
        status -> Text,
        isolation -> Text,
        requested_isolation -> Text,
        backend -> Text,
        runtime -> Text,
        node_id -> Text,
        input_hash -> Text,
        output -> Nullable<Text>,
        exit_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        cpu_limit -> Integer,
        mem_limit -> Integer,
        timeout_s -> Integer,
        duration_ms -> Nullable<BigInt>,
        created_at -> Text,
        started_at -> Nullable<Text>,
        finished_at -> Nullable<Text>,
        code -> Nullable<Text>,
        code_archive -> Nullable<Binary>,
        input -> Binary,
        image -> Nullable<Text>,
        command -> Nullable<Text>,
        callback_url -> Nullable<Text>,
        delivery_id -> Nullable<Text>,
        delivery_due_at -> Nullable<Text>,
        node_generation -> BigInt,
        kill_requested_at -> Nullable<Text>,
    }
}

diesel::joinable!(idempotency_keys -> workloads (workload_id));
diesel::joinable!(log_lines -> workloads (workload_id));
diesel::joinable!(webhook_attempts -> workloads (workload_id));

diesel::allow_tables_to_appear_in_same_query!(
    idempotency_keys,
    log_lines,
    nodes,
    webhook_attempts,
    workloads,
);
