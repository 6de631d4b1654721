//! Creating what a `state.postgresql` store needs and Dapr's tables may lack: the state
//! table or Trellis's extra columns, the expiry index, the metadata table, the v1 trigger;
//! under an advisory lock, so that sidecars starting together do not race.

use super::{Inner, Version, backend, pool_error};
use crate::StateError;

impl Inner {
    /// Creates what is missing: the state table (or the columns Trellis adds to a table Dapr
    /// made), the expiry index and the metadata table.
    pub(super) async fn migrate(&self) -> Result<(), StateError> {
        let c = self.version.columns();
        let t = &self.table;
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(backend)?;
        // Concurrent `CREATE TABLE IF NOT EXISTS` (or `CREATE OR REPLACE FUNCTION`) can fail on
        // a catalog unique index; one migration at a time per database avoids that.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('trellis-state-migrate'))",
            &[],
        )
        .await
        .map_err(backend)?;
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[t])
            .await
            .map_err(backend)?
            .get(0);
        if !exists {
            let ddl = match self.version {
                Version::V1 => format!(
                    "CREATE TABLE {t} (
                        key text NOT NULL PRIMARY KEY,
                        value jsonb NOT NULL,
                        isbinary boolean NOT NULL,
                        insertdate timestamp with time zone NOT NULL DEFAULT now(),
                        updatedate timestamp with time zone NULL,
                        expiredate timestamp with time zone NULL,
                        etag uuid NOT NULL DEFAULT gen_random_uuid(),
                        contenttype text NULL,
                        rawvalue bytea NULL
                    )"
                ),
                Version::V2 => format!(
                    "CREATE TABLE {t} (
                        key text NOT NULL PRIMARY KEY,
                        value bytea NOT NULL,
                        etag uuid NOT NULL DEFAULT gen_random_uuid(),
                        created_at timestamp with time zone NOT NULL DEFAULT now(),
                        updated_at timestamp with time zone,
                        expires_at timestamp with time zone,
                        content_type text
                    )"
                ),
            };
            tx.batch_execute(&ddl).await.map_err(backend)?;
        } else {
            let have: Vec<String> = tx
                .query(
                    "SELECT attname::text FROM pg_attribute \
                     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                    &[t],
                )
                .await
                .map_err(backend)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut wanted = vec![
                (c.expires, "timestamp with time zone NULL"),
                ("etag", "uuid NOT NULL DEFAULT gen_random_uuid()"),
                (c.content_type, "text NULL"),
            ];
            if self.version == Version::V1 {
                wanted.push(("rawvalue", "bytea NULL"));
            }
            for (column, ty) in wanted {
                if !have.iter().any(|h| h == column) {
                    tx.batch_execute(&format!("ALTER TABLE {t} ADD COLUMN {column} {ty}"))
                        .await
                        .map_err(backend)?;
                }
            }
        }
        if self.version == Version::V1 {
            self.v1_trigger(&tx).await?;
        }
        let index = format!("{}_{}_idx", t.rsplit('.').next().unwrap_or(t), c.expires);
        tx.batch_execute(&format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {t} ({exp});
             CREATE TABLE IF NOT EXISTS {m} (key text NOT NULL PRIMARY KEY, value text NOT NULL);",
            exp = c.expires,
            m = self.metadata_table,
        ))
        .await
        .map_err(backend)?;
        // Tell Dapr's migration code the schema is current, so that a Dapr sidecar sharing
        // the table does not try to add columns that exist.
        let (key, level) = match self.version {
            Version::V1 => ("migrations".to_string(), "2"),
            Version::V2 => {
                let prefix = t.strip_suffix("state").unwrap_or_default();
                (format!("migrations-state-v2-{prefix}"), "1")
            }
        };
        tx.execute(
            &format!(
                "INSERT INTO {} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                self.metadata_table
            ),
            &[&key, &level],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// Dapr v1 sidecars sharing the table write `value` but know nothing of the `etag` and
    /// `rawvalue` columns Trellis adds; this trigger gives their updates a fresh ETag and
    /// drops a kept text that no longer matches the value.
    async fn v1_trigger(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StateError> {
        tx.batch_execute(
            "CREATE OR REPLACE FUNCTION trellis_state_v1_touch() RETURNS trigger AS $$
             BEGIN
               IF NEW.etag IS NOT DISTINCT FROM OLD.etag THEN
                 NEW.etag := gen_random_uuid();
               END IF;
               IF NEW.rawvalue IS NOT DISTINCT FROM OLD.rawvalue
                  AND NEW.value IS DISTINCT FROM OLD.value THEN
                 NEW.rawvalue := NULL;
               END IF;
               RETURN NEW;
             END $$ LANGUAGE plpgsql",
        )
        .await
        .map_err(backend)?;
        let exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger \
                 WHERE tgrelid = to_regclass($1) AND tgname = 'trellis_state_touch')",
                &[&self.table],
            )
            .await
            .map_err(backend)?
            .get(0);
        if !exists {
            tx.batch_execute(&format!(
                "CREATE TRIGGER trellis_state_touch BEFORE UPDATE ON {} \
                 FOR EACH ROW EXECUTE FUNCTION trellis_state_v1_touch()",
                self.table
            ))
            .await
            .map_err(backend)?;
        }
        Ok(())
    }
}
