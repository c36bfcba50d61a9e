//! The queue's statements, written once for both backends.
//!
//! On PostgreSQL a statement goes through sqlx, as it always did. On SQLite the
//! queue's own connection is a rusqlite one, called on the request's thread: a
//! statement there costs microseconds of SQLite and nothing else. Through sqlx
//! every statement was two hand-offs to the connection's own thread and back,
//! and on two CPUs each cost 40-50 µs, ten times a simple indexed read
//! (`bench/queue.sh`; ARCHITECTURE.md, "The backend seam").
//!
//! The API mirrors the part of sqlx's the queue uses (`query`, `query_scalar`,
//! `query_as`, `bind`, `execute`, `fetch_one`, `fetch_optional`, `fetch_all`,
//! `Row::get`), so a statement reads the same either way. Parameters are `$N` on
//! both backends; rows are decoded into plain values ([`Value`]).

use super::{Queue, QueueError};
use sqlx::AnyConnection;
use std::borrow::Cow;
use std::sync::Arc;

/// A connection to run the queue's statements on.
pub(crate) enum Db<'c> {
    Sqlite(&'c mut rusqlite::Connection),
    Any(&'c mut AnyConnection),
    /// One of the queue's own PostgreSQL connections.
    Pg(&'c mut super::conn::PgConn),
    /// Each statement on its own connection from the queue ([`Queue::conn`]).
    Auto(&'c Queue),
}

/// An executor that runs each statement on its own ([`Queue::auto`]).
pub(crate) struct Auto<'q>(pub(crate) &'q Queue);

impl Exec for Auto<'_> {
    fn db(&mut self) -> Db<'_> {
        Db::Auto(self.0)
    }
}

/// Which rows a statement's caller wants.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    None,
    First,
    All,
}

/// Something statements can run on: a held SQLite connection, a pooled one, a
/// transaction.
pub(crate) trait Exec: Send {
    fn db(&mut self) -> Db<'_>;
}

/// Whether statements on `e` run on PostgreSQL (else on SQLite).
pub(crate) fn on_postgres(e: &mut impl Exec) -> bool {
    match e.db() {
        Db::Sqlite(_) => false,
        Db::Any(c) => c.backend_name() == "PostgreSQL",
        Db::Pg(_) => true,
        Db::Auto(q) => q.backend == super::Backend::Postgres,
    }
}

impl<T: Exec + ?Sized> Exec for &mut T {
    fn db(&mut self) -> Db<'_> {
        (**self).db()
    }
}

impl Exec for AnyConnection {
    fn db(&mut self) -> Db<'_> {
        Db::Any(self)
    }
}

impl Exec for sqlx::pool::PoolConnection<sqlx::Any> {
    fn db(&mut self) -> Db<'_> {
        Db::Any(&mut *self)
    }
}

/// One bound parameter, typed as sqlx would bind it (a NULL keeps its type:
/// PostgreSQL wants to know it).
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Bool(Option<bool>),
    Real(Option<f64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

macro_rules! arg_from {
    ($variant:ident: $($t:ty => $conv:expr),* $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(Some(($conv)(v)))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Arg {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(v.map($conv))
            }
        }
    )*};
}
arg_from!(Int: i64 => |v| v, i32 => i64::from, u32 => i64::from);
arg_from!(Bool: bool => |v| v);
arg_from!(Real: f64 => |v| v);
arg_from!(Text: String => |v| v, &str => str::to_owned, &String => String::clone);
arg_from!(Blob: Vec<u8> => |v| v, &[u8] => <[u8]>::to_vec);

impl<'a> From<&'a Option<String>> for Arg {
    fn from(v: &'a Option<String>) -> Arg {
        Arg::Text(v.clone())
    }
}

/// A column's value in a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A value a column decodes into. Like sqlx's `Row::get`, a mismatch is a bug in
/// the statement, and panics.
pub(crate) trait Decode: Sized {
    fn decode(v: &Value) -> Option<Self>;
}

impl Decode for i64 {
    fn decode(v: &Value) -> Option<i64> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl Decode for i32 {
    fn decode(v: &Value) -> Option<i32> {
        i64::decode(v).and_then(|i| i32::try_from(i).ok())
    }
}

impl Decode for bool {
    fn decode(v: &Value) -> Option<bool> {
        i64::decode(v).map(|i| i != 0)
    }
}

impl Decode for f64 {
    fn decode(v: &Value) -> Option<f64> {
        match v {
            Value::Real(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl Decode for String {
    fn decode(v: &Value) -> Option<String> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl Decode for Vec<u8> {
    fn decode(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            Value::Text(s) => Some(s.clone().into_bytes()),
            _ => None,
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(v: &Value) -> Option<Option<T>> {
        match v {
            Value::Null => Some(None),
            v => T::decode(v).map(Some),
        }
    }
}

/// A row: its columns' names and values.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    names: Arc<[String]>,
    values: Vec<Value>,
}

/// How a column is named in [`Row::get`]: by position or by name.
pub(crate) trait ColumnIndex {
    fn position(&self, names: &[String]) -> Option<usize>;
}

impl ColumnIndex for usize {
    fn position(&self, names: &[String]) -> Option<usize> {
        (*self < names.len()).then_some(*self)
    }
}

impl ColumnIndex for &str {
    fn position(&self, names: &[String]) -> Option<usize> {
        names.iter().position(|n| n == self)
    }
}

impl Row {
    /// The column decoded as `T`; panics if there is no such column or it is
    /// not a `T` (a bug in the statement, as with sqlx).
    pub(crate) fn get<T: Decode, I: ColumnIndex + std::fmt::Debug>(&self, index: I) -> T {
        let at = index.position(&self.names).unwrap_or_else(|| panic!("no column {index:?} in {:?}", self.names));
        T::decode(&self.values[at])
            .unwrap_or_else(|| panic!("column {:?} is {:?}, not a {}", self.names[at], self.values[at], std::any::type_name::<T>()))
    }
}

/// Rows a tuple decodes from (`query_as`).
pub(crate) trait FromRow: Sized {
    fn from_row(row: &Row) -> Self;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Decode),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row) -> Self {
                ($(row.get::<$t, usize>($i),)+)
            }
        }
    };
}
tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);

/// What a statement changed.
pub(crate) struct Done {
    rows_affected: u64,
}

impl Done {
    pub(crate) fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// A statement and its parameters.
#[must_use]
pub(crate) struct Query {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
}

/// A statement with `$1`, `$2`... parameters.
pub(crate) fn query(sql: impl Into<Cow<'static, str>>) -> Query {
    Query { sql: sql.into(), args: Vec::new() }
}

/// A statement whose rows' first column is the answer.
pub(crate) fn query_scalar<T: Decode>(sql: impl Into<Cow<'static, str>>) -> Typed<T> {
    Typed { query: query(sql), decode: |row| row.get(0usize) }
}

/// A statement whose rows decode into tuples.
pub(crate) fn query_as<T: FromRow>(sql: impl Into<Cow<'static, str>>) -> Typed<T> {
    Typed { query: query(sql), decode: T::from_row }
}

impl Query {
    pub(crate) fn bind(mut self, arg: impl Into<Arg>) -> Query {
        self.args.push(arg.into());
        self
    }

    pub(crate) async fn execute(self, e: &mut (impl Exec + ?Sized)) -> Result<Done, sqlx::Error> {
        let (_, rows_affected) = self.run(e, Keep::None).await?;
        Ok(Done { rows_affected })
    }

    pub(crate) async fn fetch_all(self, e: &mut (impl Exec + ?Sized)) -> Result<Vec<Row>, sqlx::Error> {
        Ok(self.run(e, Keep::All).await?.0)
    }

    pub(crate) async fn fetch_optional(self, e: &mut (impl Exec + ?Sized)) -> Result<Option<Row>, sqlx::Error> {
        Ok(self.run(e, Keep::First).await?.0.into_iter().next())
    }

    pub(crate) async fn fetch_one(self, e: &mut (impl Exec + ?Sized)) -> Result<Row, sqlx::Error> {
        self.fetch_optional(e).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs the statement: the rows kept, and how many it changed.
    async fn run(self, e: &mut (impl Exec + ?Sized), keep: Keep) -> Result<(Vec<Row>, u64), sqlx::Error> {
        let Db::Auto(queue) = e.db() else {
            return self.on(e.db(), keep).await;
        };
        let mut conn = queue.conn().await.map_err(sqlx_error)?;
        let out = self.on(conn.db(), keep).await;
        conn.finish(out.is_ok()).await.map_err(sqlx_error)?;
        out
    }

    async fn on(self, db: Db<'_>, keep: Keep) -> Result<(Vec<Row>, u64), sqlx::Error> {
        match db {
            Db::Sqlite(c) => sqlite::run(c, &self.sql, &self.args, keep),
            Db::Any(c) => self.on_any(c, keep).await,
            Db::Pg(c) => {
                let out = self.on_any(c.connection(), keep).await;
                if let Err(e) = &out {
                    c.failed(e);
                }
                out
            }
            Db::Auto(_) => unreachable!("run takes a connection first"),
        }
    }

    async fn on_any(self, c: &mut AnyConnection, keep: Keep) -> Result<(Vec<Row>, u64), sqlx::Error> {
        match keep {
            Keep::None => Ok((Vec::new(), self.any().execute(c).await?.rows_affected())),
            Keep::First => Ok((self.any().fetch_optional(c).await?.as_ref().map(any_row).transpose()?.into_iter().collect(), 0)),
            Keep::All => Ok((self.any().fetch_all(c).await?.iter().map(any_row).collect::<Result<_, _>>()?, 0)),
        }
    }

    /// The same statement for sqlx, each parameter bound as the type it has.
    fn any(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(&*self.sql));
        for a in &self.args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Bool(v) => q.bind(*v),
                Arg::Real(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
                Arg::Blob(v) => q.bind(v.clone()),
            };
        }
        q
    }
}

/// The queue's error as sqlx's, for the few that getting a connection can have.
fn sqlx_error(e: QueueError) -> sqlx::Error {
    match e {
        QueueError::Db(e) => e,
        QueueError::Conflict(_) => sqlx::Error::PoolTimedOut,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// Decodes sqlx's row into plain values, by each column's type.
fn any_row(row: &sqlx::any::AnyRow) -> Result<Row, sqlx::Error> {
    use sqlx::{Column, Row as _, TypeInfo, ValueRef};
    let mut names = Vec::with_capacity(row.columns().len());
    let mut values = Vec::with_capacity(row.columns().len());
    for (i, col) in row.columns().iter().enumerate() {
        names.push(col.name().to_string());
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            match raw.type_info().name() {
                "BOOLEAN" => Value::Int(i64::from(row.try_get::<bool, _>(i)?)),
                "SMALLINT" | "INTEGER" | "BIGINT" => Value::Int(row.try_get::<i64, _>(i)?),
                "REAL" => Value::Real(f64::from(row.try_get::<f32, _>(i)?)),
                "DOUBLE" => Value::Real(row.try_get::<f64, _>(i)?),
                "BLOB" => Value::Blob(row.try_get::<Vec<u8>, _>(i)?),
                _ => Value::Text(row.try_get::<String, _>(i)?),
            }
        };
        values.push(value);
    }
    Ok(Row { names: names.into(), values })
}

/// A statement whose rows decode into `T` (`query_scalar`, `query_as`).
#[must_use]
pub(crate) struct Typed<T> {
    query: Query,
    decode: fn(&Row) -> T,
}

impl<T> Typed<T> {
    pub(crate) fn bind(mut self, arg: impl Into<Arg>) -> Self {
        self.query = self.query.bind(arg);
        self
    }

    pub(crate) async fn fetch_one(self, e: &mut (impl Exec + ?Sized)) -> Result<T, sqlx::Error> {
        Ok((self.decode)(&self.query.fetch_one(e).await?))
    }

    pub(crate) async fn fetch_optional(self, e: &mut (impl Exec + ?Sized)) -> Result<Option<T>, sqlx::Error> {
        Ok(self.query.fetch_optional(e).await?.as_ref().map(self.decode))
    }

    pub(crate) async fn fetch_all(self, e: &mut (impl Exec + ?Sized)) -> Result<Vec<T>, sqlx::Error> {
        Ok(self.query.fetch_all(e).await?.iter().map(self.decode).collect())
    }
}

/// SQLite through rusqlite, on the caller's thread.
pub(crate) mod sqlite {
    use super::{Arg, Keep, Row, Value};
    use rusqlite::types::ValueRef;
    use std::sync::Arc;

    /// Opens the queue's own connection to `target` (a path, or a `file:` URI of
    /// an in-memory shared-cache database) with the pool's pragmas.
    pub(crate) fn open(target: &str) -> Result<rusqlite::Connection, sqlx::Error> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(target, flags).map_err(error)?;
        conn.execute_batch(super::super::SQLITE_PRAGMAS).map_err(error)?;
        // Room for the hot part of a large queue's tables and indexes: with
        // SQLite's default of 2 MiB, a task cycle read 13 pages back from the file
        // (`pread`, counted with `strace -c` under `bench/queue.sh`); with 64 MiB, 5.
        conn.execute_batch("PRAGMA cache_size = -65536").map_err(error)?;
        // A checkpoint copies each page the WAL holds once, however often it was
        // written since the last: the hot pages of the tasks table and its indexes
        // are rewritten by every commit, so checkpoints ten times rarer than
        // SQLite's default (every 1,000 pages, about 4 MB) copy far fewer pages a
        // task. Measured: 3% less of the coordinator's CPU a task cycle in all six
        // paired runs of `bench/queue.sh` (SQLite, 10 to 500 workers).
        conn.execute_batch("PRAGMA wal_autocheckpoint = 10000").map_err(error)?;
        // The queue has a few dozen distinct statements; keep them all prepared.
        conn.set_prepared_statement_cache_capacity(256);
        Ok(conn)
    }

    /// Runs a statement, keeping the rows `keep` asks for; returns them and the
    /// rows it changed. A statement that writes is stepped to its end (an UPDATE
    /// ... RETURNING changes every row it returns); a read stops at what it needs.
    pub(super) fn run(conn: &mut rusqlite::Connection, sql: &str, args: &[Arg], keep: Keep) -> Result<(Vec<Row>, u64), sqlx::Error> {
        let mut stmt = conn.prepare_cached(sql).map_err(error)?;
        for i in 1..=stmt.parameter_count() {
            // `$N` is the Nth argument wherever it appears, as on PostgreSQL.
            let n = match stmt.parameter_name(i) {
                Some(name) => name.trim_start_matches(['$', '?']).parse::<usize>().unwrap_or(i),
                None => i,
            };
            let arg = args
                .get(n - 1)
                .ok_or_else(|| sqlx::Error::Protocol(format!("statement wants parameter {n}, {} were bound: {sql}", args.len())))?;
            let bound = match arg {
                Arg::Int(v) => stmt.raw_bind_parameter(i, v),
                Arg::Bool(v) => stmt.raw_bind_parameter(i, v),
                Arg::Real(v) => stmt.raw_bind_parameter(i, v),
                Arg::Text(v) => stmt.raw_bind_parameter(i, v),
                Arg::Blob(v) => stmt.raw_bind_parameter(i, v),
            };
            bound.map_err(error)?;
        }
        let readonly = stmt.readonly();
        let names: Arc<[String]> = stmt.column_names().into_iter().map(str::to_string).collect();
        let mut out = Vec::new();
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(error)? {
            let wanted = match keep {
                Keep::None => false,
                Keep::First => out.is_empty(),
                Keep::All => true,
            };
            if !wanted {
                if readonly {
                    break;
                }
                continue;
            }
            let mut values = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                values.push(match row.get_ref(i).map_err(error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.push(Row { names: names.clone(), values });
        }
        drop(rows);
        drop(stmt);
        Ok((out, conn.changes()))
    }

    /// Runs statements without parameters (`BEGIN`, `COMMIT`, pragmas).
    pub(crate) fn batch(conn: &mut rusqlite::Connection, sql: &str) -> Result<(), sqlx::Error> {
        conn.execute_batch(sql).map_err(error)
    }

    /// SQLite's error as sqlx's, so that callers handle both backends' alike
    /// (a unique violation is one on either).
    pub(crate) fn error(e: rusqlite::Error) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Failure::from(e)))
    }

    #[derive(Debug)]
    pub(crate) struct Failure {
        message: String,
        code: Option<String>,
        kind: Kind,
    }

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Unique,
        ForeignKey,
        NotNull,
        Check,
        Other,
    }

    impl From<rusqlite::Error> for Failure {
        fn from(e: rusqlite::Error) -> Failure {
            use rusqlite::ffi;
            let (code, kind) = match &e {
                rusqlite::Error::SqliteFailure(f, _) => {
                    let kind = match f.extended_code {
                        ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => Kind::Unique,
                        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Kind::ForeignKey,
                        ffi::SQLITE_CONSTRAINT_NOTNULL => Kind::NotNull,
                        ffi::SQLITE_CONSTRAINT_CHECK => Kind::Check,
                        _ => Kind::Other,
                    };
                    (Some(f.extended_code.to_string()), kind)
                }
                _ => (None, Kind::Other),
            };
            Failure { message: e.to_string(), code, kind }
        }
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl std::error::Error for Failure {}

    impl sqlx::error::DatabaseError for Failure {
        fn message(&self) -> &str {
            &self.message
        }

        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            self.code.as_deref().map(std::borrow::Cow::Borrowed)
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            use sqlx::error::ErrorKind;
            match self.kind {
                Kind::Unique => ErrorKind::UniqueViolation,
                Kind::ForeignKey => ErrorKind::ForeignKeyViolation,
                Kind::NotNull => ErrorKind::NotNullViolation,
                Kind::Check => ErrorKind::CheckViolation,
                Kind::Other => ErrorKind::Other,
            }
        }
    }
}
