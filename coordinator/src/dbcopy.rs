//! `drake db copy`: moves a farm's state from one database to another (SQLite to
//! PostgreSQL, or back), so a farm can outgrow one machine without losing a job.
//!
//! Both ends are migrated to this version's schema first; the target must be
//! empty. Every table of state is copied in one transaction on the target, so a
//! copy that fails leaves the target as empty as it was. The coordinators' own
//! heartbeats are not state and stay behind. The farm's coordinators must be
//! stopped first: a copy is refused while one of them heartbeats.

use crate::queue::{Backend, DatabaseUrl, Queue, QueueConfig};
use futures_util::TryStreamExt;
use sqlx::Row;

/// The tables that hold a farm's state, parents before children.
pub const TABLES: &[&str] = &[
    "jobs",
    "job_tags",
    "tasks",
    "tokens",
    "workers",
    "webhooks",
    "sessions",
    "login_links",
    "task_failures",
    "settings",
    "unclaimed_job_dirs",
    // Unfinished resumable uploads: their bytes are on the store, which the copy
    // leaves where it is.
    "uploads",
    "upload_parts",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Real,
    Text,
}

/// Copies every table of [`TABLES`]; returns the rows copied per table.
pub async fn copy(from: &DatabaseUrl, to: &DatabaseUrl) -> Result<Vec<(&'static str, u64)>, String> {
    if from == to {
        return Err("--from and --to are the same database".into());
    }
    let source = Queue::connect(from, QueueConfig::default()).await.map_err(|e| format!("opening {}: {e}", from.redacted()))?;
    // A job that changes during the copy could be copied half-changed.
    let live = source.live_coordinators(crate::state::now_ms()).await.map_err(|e| e.to_string())?;
    if !live.is_empty() {
        return Err(format!(
            "{} coordinator(s) still serve {} (heartbeats in the last {} s); stop them first",
            live.len(),
            from.redacted(),
            crate::queue::COORDINATOR_TTL_MS / 1000
        ));
    }
    let target = Queue::connect(to, QueueConfig::default()).await.map_err(|e| format!("opening {}: {e}", to.redacted()))?;
    let mut held = Vec::new();
    for table in TABLES {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(target.pool())
            .await
            .map_err(|e| e.to_string())?;
        if n > 0 {
            held.push(format!("{n} {table}"));
        }
    }
    if !held.is_empty() {
        return Err(format!("{} is not empty (it holds {}); copy only into a new database", to.redacted(), held.join(", ")));
    }
    let mut tx = target.pool().begin().await.map_err(|e| e.to_string())?;
    let mut copied = Vec::new();
    for table in TABLES {
        let columns = columns(&target, table).await?;
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert = format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), placeholders.join(", "));
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch(source.pool());
        let mut n = 0u64;
        while let Some(row) = rows.try_next().await.map_err(|e| format!("reading {table}: {e}"))? {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for (i, (name, kind)) in columns.iter().enumerate() {
                let bad = |e: sqlx::Error| format!("{table}.{name}: {e}");
                q = match kind {
                    Kind::Integer => q.bind(row.try_get::<Option<i64>, _>(i).map_err(bad)?),
                    Kind::Real => q.bind(row.try_get::<Option<f64>, _>(i).map_err(bad)?),
                    Kind::Text => q.bind(row.try_get::<Option<String>, _>(i).map_err(bad)?),
                };
            }
            q.execute(&mut *tx).await.map_err(|e| format!("writing {table}: {e}"))?;
            n += 1;
        }
        copied.push((*table, n));
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(copied)
}

/// A table's columns on `q`'s database, with the kind of value each holds.
async fn columns(q: &Queue, table: &str) -> Result<Vec<(String, Kind)>, String> {
    let rows: Vec<(String, String)> = match q.backend() {
        Backend::Sqlite => sqlx::query_as("SELECT name, type FROM pragma_table_info($1) ORDER BY cid"),
        Backend::Postgres => sqlx::query_as(
            "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        ),
    }
    .bind(table)
    .fetch_all(q.pool())
    .await
    .map_err(|e| format!("reading the columns of {table}: {e}"))?;
    if rows.is_empty() {
        return Err(format!("no table {table}"));
    }
    Ok(rows
        .into_iter()
        .map(|(name, ty)| {
            let ty = ty.to_ascii_lowercase();
            let kind = if ty.contains("int") {
                Kind::Integer
            } else if ty.contains("real") || ty.contains("double") {
                Kind::Real
            } else {
                Kind::Text
            };
            (name, kind)
        })
        .collect())
}
