//! The job database: an embedded redb file in the state directory.
//!
//! A job is written (and the write committed to disk) before Submit answers, and again at
//! every change of state, so a supervisor that crashes or restarts finds every job it ever
//! accepted. Records are JSON, readable with any redb tool and tolerant of added fields.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::JobRecord;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

pub struct Store {
    db: Database,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job database {path}: {source}")]
    Db {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("job database {path}: record `{id}` is unreadable: {source}")]
    Record {
        path: PathBuf,
        id: String,
        source: serde_json::Error,
    },
    #[error(
        "cannot create the state directory {path}: {source} (set [jobs] state_dir to a writable directory)"
    )]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let store = Store {
            db: Database::create(path).map_err(|e| db_error(path, e))?,
            path: path.to_path_buf(),
        };
        // Create the table, so reads before the first write find it.
        let txn = store.db.begin_write().map_err(|e| store.error(e))?;
        txn.open_table(JOBS).map_err(|e| store.error(e))?;
        txn.commit().map_err(|e| store.error(e))?;
        Ok(store)
    }

    fn error(&self, e: impl Into<redb::Error>) -> StoreError {
        db_error(&self.path, e)
    }

    /// Writes a record and commits it durably.
    pub fn put(&self, record: &JobRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Record {
            path: self.path.clone(),
            id: record.id.clone(),
            source,
        })?;
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(JOBS).map_err(|e| self.error(e))?;
            table
                .insert(record.id.as_str(), bytes.as_slice())
                .map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(JOBS).map_err(|e| self.error(e))?;
            table.remove(id).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// Every record. Unreadable ones are skipped with a warning rather than failing the lot.
    pub fn all(&self) -> Result<Vec<JobRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(JOBS).map_err(|e| self.error(e))?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (id, value) = entry.map_err(|e| self.error(e))?;
            match serde_json::from_slice::<JobRecord>(value.value()) {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(id = id.value(), %error, "skipping an unreadable job record")
                }
            }
        }
        Ok(records)
    }
}

fn db_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobSpec, JobState};
    use crate::lease::Priority;
    use std::time::Duration;

    fn record(id: &str) -> JobRecord {
        let spec = JobSpec {
            request: arbiter::job::Request {
                prompt: "a cat".into(),
                shape: arbiter::pipeline::Shape {
                    width: 128,
                    height: 128,
                    frames: 17,
                    fps: 8,
                    steps: 4,
                },
                seed: 7,
                pipeline: "tiny".into(),
                ..Default::default()
            },
            priority: Priority::Normal,
            timeout: Duration::from_secs(60),
            lease_bytes: 1 << 30,
        };
        JobRecord::new(id.into(), spec, PathBuf::from("/tmp/x"))
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put(&record("a")).unwrap();
            let mut b = record("b");
            b.state = JobState::Running;
            store.put(&b).unwrap();
            store.delete("a").unwrap();
        }
        let store = Store::open(&path).unwrap();
        let all = store.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, JobState::Running);
    }
}
