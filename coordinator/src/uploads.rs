//! The queue's record of resumable uploads (tus): their offsets, their parts and
//! the completion that turns one into a job. The bytes live in the store; this is
//! what says which of them belong to an upload (see the `uploads` migration).

use crate::queue::sql;
use crate::queue::{NewJob, Queue, Result};

/// Most unfinished uploads one token may have at once.
pub const MAX_OPEN_UPLOADS: i64 = 16;

#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub owner: String,
    pub request: NewJob,
    pub filename: Option<String>,
    pub length: Option<i64>,
    pub offset: i64,
    pub parts: i64,
    pub expires_at: i64,
    pub job_id: Option<String>,
}

impl Upload {
    /// Every byte is here, so the completion is owed (or done, if `job_id` is set).
    pub fn is_complete(&self) -> bool {
        self.length == Some(self.offset)
    }
}

/// Why an upload was not created.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateRefused {
    /// Its owner has [`MAX_OPEN_UPLOADS`] unfinished already.
    TooMany,
    /// Unfinished uploads would hold more than the spool limit: how many bytes they hold now.
    SpoolFull(i64),
}

/// Why a part was not appended.
#[derive(Debug, PartialEq, Eq)]
pub enum AppendRefused {
    /// The upload's offset is not the one the part starts at (another PATCH won).
    Offset,
    /// The part would take the upload past its length.
    TooLong,
    /// The upload is complete, expired or gone.
    Closed,
}

impl Queue {
    /// Records a new upload, unless its owner has [`MAX_OPEN_UPLOADS`] unfinished
    /// already or the unfinished uploads' bytes (see [`Queue::spool_held`]) and
    /// `length` would pass `spool_limit`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_upload(
        &self,
        id: &str,
        owner: &str,
        request: &NewJob,
        filename: Option<&str>,
        length: Option<i64>,
        spool_limit: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<std::result::Result<(), CreateRefused>> {
        let mut tx = self.begin().await?;
        let open: i64 = sql::query_scalar("SELECT COUNT(*) FROM uploads WHERE owner = $1 AND job_id IS NULL AND expires_at > $2")
            .bind(owner)
            .bind(now)
            .fetch_one(&mut tx)
            .await?;
        if open >= MAX_OPEN_UPLOADS {
            return Ok(Err(CreateRefused::TooMany));
        }
        let held = spool_held(&mut tx, now).await?;
        if held.saturating_add(length.unwrap_or(0)) > spool_limit {
            return Ok(Err(CreateRefused::SpoolFull(held)));
        }
        let request = serde_json::to_string(request).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sql::query(
            "INSERT INTO uploads (id, owner, request, filename, length, upload_offset, parts, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, 0, 0, $6, $7)",
        )
        .bind(id)
        .bind(owner)
        .bind(request)
        .bind(filename)
        .bind(length)
        .bind(now)
        .bind(expires_at)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// The bytes unfinished uploads hold on the spool: each its declared length
    /// (what it will hold once complete), or what it received so far while its
    /// length is deferred.
    pub async fn spool_held(&self, now: i64) -> Result<i64> {
        spool_held(&mut self.auto(), now).await
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>> {
        let row =
            sql::query("SELECT id, owner, request, filename, length, upload_offset, parts, expires_at, job_id FROM uploads WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut self.read().await?)
                .await?;
        let Some(r) = row else { return Ok(None) };
        let request: String = r.get(2);
        Ok(Some(Upload {
            id: r.get(0),
            owner: r.get(1),
            request: serde_json::from_str(&request).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            filename: r.get(3),
            length: r.get(4),
            offset: r.get(5),
            parts: r.get(6),
            expires_at: r.get(7),
            job_id: r.get(8),
        }))
    }

    /// Appends a stored part of `size` bytes at `offset`, setting a deferred length
    /// if given, and moves the expiry to `expires_at`; the upload's new offset.
    /// Nothing changes when it is refused.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_part(
        &self,
        id: &str,
        offset: i64,
        path: &str,
        size: i64,
        length: Option<i64>,
        now: i64,
        expires_at: i64,
    ) -> Result<std::result::Result<i64, AppendRefused>> {
        let mut tx = self.begin().await?;
        let row = sql::query("SELECT length, upload_offset, parts, job_id, expires_at FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut tx)
            .await?;
        let Some(r) = row else { return Ok(Err(AppendRefused::Closed)) };
        let (known, at, parts, job, expires): (Option<i64>, i64, i64, Option<String>, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        if job.is_some() || expires <= now {
            return Ok(Err(AppendRefused::Closed));
        }
        if at != offset {
            return Ok(Err(AppendRefused::Offset));
        }
        let length = known.or(length);
        if length.is_some_and(|l| offset + size > l) {
            return Ok(Err(AppendRefused::TooLong));
        }
        let updated = sql::query("UPDATE uploads SET upload_offset = $2, parts = $3, length = $4, expires_at = $5 WHERE id = $1 AND upload_offset = $6 AND parts = $7")
            .bind(id)
            .bind(offset + size)
            .bind(parts + 1)
            .bind(length)
            .bind(expires_at)
            .bind(offset)
            .bind(parts)
            .execute(&mut tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(Err(AppendRefused::Offset));
        }
        sql::query("INSERT INTO upload_parts (upload_id, seq, path, size) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(parts)
            .bind(path)
            .bind(size)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(offset + size))
    }

    /// Sets a deferred length (a PATCH of no bytes may carry it).
    pub async fn set_upload_length(&self, id: &str, length: i64) -> Result<bool> {
        let r = sql::query("UPDATE uploads SET length = $2 WHERE id = $1 AND length IS NULL AND upload_offset <= $2 AND job_id IS NULL")
            .bind(id)
            .bind(length)
            .execute(&mut self.read().await?)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The stored paths of an upload's parts, in order.
    pub async fn upload_parts(&self, id: &str) -> Result<Vec<(String, i64)>> {
        let rows = sql::query("SELECT path, size FROM upload_parts WHERE upload_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&mut self.read().await?)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The stored path of an upload's first part, if it has one.
    pub async fn first_part(&self, id: &str) -> Result<Option<String>> {
        Ok(sql::query_scalar("SELECT path FROM upload_parts WHERE upload_id = $1 ORDER BY seq LIMIT 1")
            .bind(id)
            .fetch_optional(&mut self.read().await?)
            .await?)
    }

    /// Takes the lease on a complete upload's completion until `until`: false if
    /// another holds it (its lease has not lapsed at `now`).
    pub async fn lease_completion(&self, id: &str, now: i64, until: i64) -> Result<bool> {
        let r = sql::query(
            "UPDATE uploads SET finishing_until = $3 WHERE id = $1 AND length = upload_offset AND (finishing_until IS NULL OR finishing_until < $2)",
        )
        .bind(id)
        .bind(now)
        .bind(until)
        .execute(&mut self.read().await?)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Extends a completion lease this coordinator holds.
    pub async fn renew_completion(&self, id: &str, until: i64) -> Result<()> {
        sql::query("UPDATE uploads SET finishing_until = $2 WHERE id = $1").bind(id).bind(until).execute(&mut self.read().await?).await?;
        Ok(())
    }

    /// Gives a completion lease back (the work is done or failed).
    pub async fn release_completion(&self, id: &str) -> Result<()> {
        sql::query("UPDATE uploads SET finishing_until = NULL WHERE id = $1").bind(id).execute(&mut self.read().await?).await?;
        Ok(())
    }

    /// Claims a complete upload's completion for job id `job`: false if it was
    /// claimed already (then `job_id` names the job).
    pub async fn claim_upload(&self, id: &str, job: &str) -> Result<bool> {
        let r = sql::query("UPDATE uploads SET job_id = $2 WHERE id = $1 AND job_id IS NULL AND length = upload_offset")
            .bind(id)
            .bind(job)
            .execute(&mut self.read().await?)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Points a completed upload at the job its request resolved to (an earlier
    /// job with the same idempotency key), and forgets its parts.
    pub async fn upload_done(&self, id: &str, job: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sql::query("UPDATE uploads SET job_id = $2 WHERE id = $1").bind(id).bind(job).execute(&mut tx).await?;
        sql::query("DELETE FROM upload_parts WHERE upload_id = $1").bind(id).execute(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets an upload and its parts (termination, expiry).
    pub async fn delete_upload(&self, id: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sql::query("DELETE FROM upload_parts WHERE upload_id = $1").bind(id).execute(&mut tx).await?;
        sql::query("DELETE FROM uploads WHERE id = $1").bind(id).execute(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uploads past their expiry, at most `limit`.
    pub async fn expired_uploads(&self, now: i64, limit: i64) -> Result<Vec<String>> {
        Ok(sql::query_scalar("SELECT id FROM uploads WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2")
            .bind(now)
            .bind(limit)
            .fetch_all(&mut self.read().await?)
            .await?)
    }

    /// Complete uploads whose completion is owed or unfinished (claimed, parts left).
    pub async fn owed_completions(&self, now: i64, limit: i64) -> Result<Vec<String>> {
        Ok(sql::query_scalar(
            "SELECT id FROM uploads u WHERE length = upload_offset AND (job_id IS NULL OR EXISTS (SELECT 1 FROM upload_parts p WHERE p.upload_id = u.id)) \
             AND (finishing_until IS NULL OR finishing_until < $1) LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut self.read().await?)
        .await?)
    }
}

async fn spool_held(conn: &mut impl sql::Exec, now: i64) -> Result<i64> {
    let held: Option<i64> = sql::query_scalar(
        "SELECT CAST(SUM(COALESCE(length, upload_offset)) AS BIGINT) FROM uploads WHERE job_id IS NULL AND expires_at > $1",
    )
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(held.unwrap_or(0))
}
