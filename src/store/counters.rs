//! `GET /v1/stats` from counters kept in memory: seeded from one grouped query when the
//! store opens, then moved by every committed insert, status change and retention
//! delete, so answering the endpoint never scans the table.
//!
//! The figures equal what a scan of the table would give: counts per status, isolation
//! and backend, and the exact (nearest-rank) p50/p95 of `duration_ms` per backend, kept
//! as a count per distinct duration (bounded by the largest timeout in milliseconds).

use std::collections::BTreeMap;

use super::queries::{BackendStats, Stats};
use crate::model::{Isolation, Status, Workload};

/// What the statistics know of one workload row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Its status (database spelling).
    pub status: String,
    /// Its isolation class (database spelling).
    pub isolation: String,
    /// The backend it is routed to.
    pub backend: String,
    /// Its execution time, once terminal after running.
    pub duration_ms: Option<u64>,
}

impl Tally {
    /// The tally of a workload record as it stands.
    pub fn of(w: &Workload) -> Self {
        Self {
            status: w.status.as_str().to_string(),
            isolation: w.isolation.as_str().to_string(),
            backend: w.backend.clone(),
            duration_ms: w.duration_ms,
        }
    }

    /// The same row before its latest status change, which moved it from `from`:
    /// only a terminal change sets `duration_ms`, so before it there was none.
    pub fn before_change(&self, from: Status) -> Self {
        Self {
            status: from.as_str().to_string(),
            duration_ms: None,
            ..self.clone()
        }
    }
}

/// One move of the counters, applied once the write that causes it has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// A row now exists (or exists in this state).
    Add(Tally),
    /// A row no longer exists (or no longer in this state).
    Remove(Tally),
}

/// Per-backend counts; `durations` holds how many rows have each `duration_ms`.
#[derive(Debug, Default, Clone)]
struct BackendCounts {
    count: u64,
    durations: BTreeMap<u64, u64>,
    timed: u64,
    sum_ms: u128,
}

impl BackendCounts {
    /// The duration at nearest rank `p` (0 when nothing was timed).
    fn rank(&self, p: f64) -> u64 {
        if self.timed == 0 {
            return 0;
        }
        let idx = ((p * self.timed as f64).ceil() as u64).clamp(1, self.timed);
        let mut seen = 0;
        for (d, n) in &self.durations {
            seen += n;
            if seen >= idx {
                return *d;
            }
        }
        0
    }
}

/// The live statistics. Invariant: equal to the grouped counts of the committed
/// `workloads` table (every committed write that changes a tallied column moves them).
#[derive(Debug, Default, Clone)]
pub struct StatsCounters {
    by_status: BTreeMap<String, u64>,
    by_isolation: BTreeMap<String, u64>,
    by_backend: BTreeMap<String, BackendCounts>,
}

impl StatsCounters {
    /// Counters from the grouped rows of the table: each tally with its row count.
    pub fn seeded(groups: impl IntoIterator<Item = (Tally, u64)>) -> Self {
        let mut c = Self::default();
        for (t, n) in groups {
            c.add(&t, n);
        }
        c
    }

    /// Apply one committed change.
    pub fn apply(&mut self, delta: &Delta) {
        match delta {
            Delta::Add(t) => self.add(t, 1),
            Delta::Remove(t) => self.remove(t, 1),
        }
    }

    fn add(&mut self, t: &Tally, n: u64) {
        *self.by_status.entry(t.status.clone()).or_default() += n;
        *self.by_isolation.entry(t.isolation.clone()).or_default() += n;
        let b = self.by_backend.entry(t.backend.clone()).or_default();
        b.count += n;
        if let Some(d) = t.duration_ms {
            *b.durations.entry(d).or_default() += n;
            b.timed += n;
            b.sum_ms += u128::from(d) * u128::from(n);
        }
    }

    fn remove(&mut self, t: &Tally, n: u64) {
        fn dec(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
            if let Some(v) = map.get_mut(key) {
                *v = v.saturating_sub(n);
                if *v == 0 {
                    map.remove(key);
                }
            }
        }
        dec(&mut self.by_status, &t.status, n);
        dec(&mut self.by_isolation, &t.isolation, n);
        let Some(b) = self.by_backend.get_mut(&t.backend) else {
            return;
        };
        b.count = b.count.saturating_sub(n);
        if let Some(d) = t.duration_ms {
            if let Some(k) = b.durations.get_mut(&d) {
                *k = k.saturating_sub(n);
                if *k == 0 {
                    b.durations.remove(&d);
                }
                b.timed = b.timed.saturating_sub(n);
                b.sum_ms = b.sum_ms.saturating_sub(u128::from(d) * u128::from(n));
            }
        }
        if b.count == 0 {
            self.by_backend.remove(&t.backend);
        }
    }

    /// The `GET /v1/stats` answer: every status and isolation class present, backends
    /// that have rows.
    pub fn snapshot(&self) -> Stats {
        let mut s = Stats::default();
        for st in Status::ALL {
            s.by_status.insert(st.as_str().into(), 0);
        }
        for i in Isolation::ALL {
            s.by_isolation.insert(i.as_str().into(), 0);
        }
        for (k, n) in &self.by_status {
            s.total += n;
            s.by_status.insert(k.clone(), *n);
        }
        for (k, n) in &self.by_isolation {
            s.by_isolation.insert(k.clone(), *n);
        }
        let (mut timed, mut sum) = (0u64, 0u128);
        for (name, b) in &self.by_backend {
            timed += b.timed;
            sum += b.sum_ms;
            s.by_backend.insert(
                name.clone(),
                BackendStats {
                    count: b.count,
                    avg_duration_ms: mean(b.sum_ms, b.timed),
                    p50_ms: b.rank(0.50),
                    p95_ms: b.rank(0.95),
                },
            );
        }
        s.avg_duration_ms = mean(sum, timed);
        s
    }
}

fn mean(sum: u128, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        sum as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(status: &str, backend: &str, d: Option<u64>) -> Tally {
        Tally {
            status: status.into(),
            isolation: "isolate".into(),
            backend: backend.into(),
            duration_ms: d,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_over_timed_rows_and_follow_removals() {
        let mut c = StatsCounters::default();
        for d in [10, 20, 30, 40] {
            c.apply(&Delta::Add(t("completed", "b", Some(d))));
        }
        c.apply(&Delta::Add(t("pending", "b", None)));
        let s = c.snapshot();
        let b = &s.by_backend["b"];
        assert_eq!((b.count, b.p50_ms, b.p95_ms), (5, 20, 40));
        assert_eq!(b.avg_duration_ms, 25.0);
        assert_eq!(s.total, 5);
        assert_eq!(s.by_status["running"], 0);
        c.apply(&Delta::Remove(t("completed", "b", Some(40))));
        let b = &c.snapshot().by_backend["b"];
        assert_eq!((b.count, b.p50_ms, b.p95_ms), (4, 20, 30));
        c.apply(&Delta::Remove(t("pending", "b", None)));
        for d in [10, 20, 30] {
            c.apply(&Delta::Remove(t("completed", "b", Some(d))));
        }
        let s = c.snapshot();
        assert!(s.by_backend.is_empty(), "{s:?}");
        assert_eq!(s.total, 0);
        assert_eq!(s.avg_duration_ms, 0.0);
    }
}
