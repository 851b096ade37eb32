//! Statements the writer keeps prepared although diesel would not.
//!
//! Diesel never keeps a prepared `UPDATE` (an arbitrary changeset has unboundedly many
//! SQL shapes), so SQLite parsed and planned the status `UPDATE … RETURNING` of every
//! status change anew: about a quarter of the writer's CPU per workload in a `perf`
//! profile (docs/performance.md). The status writes take a few fixed shapes, so they
//! are kept, keyed by their SQL text, in the connection's statement cache.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::{QueryResult, RunQueryDsl};

/// A statement diesel keeps prepared, keyed by its SQL text (on PostgreSQL a named
/// prepared statement, on SQLite a kept `sqlite3_stmt`).
///
/// Invariant: wraps only statements whose SQL text takes a small fixed set of shapes
/// (each status `UPDATE` has one shape per target status): the number of distinct texts
/// bounds what the connection's statement cache holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prepared<Q>(pub(crate) Q);

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    // Keyed by SQL text, not by type: the same type renders one text per target status.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q, DB> QueryFragment<DB> for Prepared<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q, Conn> RunQueryDsl<Conn> for Prepared<Q> {}

#[cfg(test)]
mod tests {
    use diesel::pg::Pg;
    use diesel::prelude::*;
    use diesel::query_builder::QueryFragment;
    use diesel::sqlite::Sqlite;

    use super::Prepared;
    use crate::store::schema::workloads;

    #[test]
    fn a_status_update_is_kept_prepared_and_runs_the_same_sql() {
        let update = diesel::update(
            workloads::table
                .find("01J0000000000000000000000A")
                .filter(workloads::status.eq_any(vec!["pending", "running"])),
        )
        .set(workloads::status.eq("completed"));
        // Diesel alone never keeps an UPDATE (nor an IN list of binds).
        assert!(
            !QueryFragment::<Sqlite>::is_safe_to_cache_prepared(&update, &Sqlite).expect("walk")
        );
        assert!(!QueryFragment::<Pg>::is_safe_to_cache_prepared(&update, &Pg).expect("walk"));
        let kept = Prepared(update);
        assert!(QueryFragment::<Sqlite>::is_safe_to_cache_prepared(&kept, &Sqlite).expect("walk"));
        assert!(QueryFragment::<Pg>::is_safe_to_cache_prepared(&kept, &Pg).expect("walk"));
        assert_eq!(
            diesel::debug_query::<Sqlite, _>(&kept).to_string(),
            diesel::debug_query::<Sqlite, _>(&kept.0).to_string()
        );
        assert_eq!(
            diesel::debug_query::<Pg, _>(&kept).to_string(),
            diesel::debug_query::<Pg, _>(&kept.0).to_string()
        );
    }
}
