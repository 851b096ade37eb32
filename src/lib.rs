//! Vulcan: a self-hosted compute platform with pluggable isolation.
//!
//! Layout: [`model`] (domain types and the state machine), [`backends`] (the
//! [`backends::Backend`] contract and one module per technology), [`actors`] (supervisor,
//! workload, log broker, store), [`store`] (Diesel/SQLite), [`api`] (HTTP handlers),
//! [`startup`] (wiring), [`config`].

pub mod backends;
pub mod config;
pub mod model;
