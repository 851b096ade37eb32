//! Vulcan: a self-hosted compute platform with pluggable isolation.
//!
//! Layout: [`model`] (domain types and the state machine), [`backends`] (the
//! [`backends::Backend`] contract and one module per technology), [`actors`] (supervisor,
//! workload, backend, log broker, store), [`store`] (Diesel/SQLite), [`api`] (HTTP
//! handlers), [`startup`] (wiring, and [`startup::AppThread`], the one way to boot the
//! app beside other work), [`config`], [`logging`] (the server's buffered log sink),
//! [`metrics`], [`webhooks`] (completion webhook
//! rules: URL policy, signature, backoff, HTTP sender), [`cluster`] (a node's membership
//! of a cluster sharing one PostgreSQL database: registration, heartbeat, fencing).
//! `vulcan bench` is part of the executable, not of this library.
//! Client side: [`client`] (a typed HTTP/SSE client of the API) and [`cli`] (the `vulcan`
//! client subcommands built on it); the server never depends on either.

pub mod actors;
pub mod api;
pub mod backends;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod images;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod net_policy;
pub mod startup;
pub mod store;
pub mod webhooks;
