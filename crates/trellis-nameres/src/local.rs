//! The zero-setup resolver: a registry directory shared by every sidecar on this machine.
//!
//! Each sidecar writes one small JSON file, `<dir>/<namespace>/<app-id>/<pid>-<port>.json`,
//! when it starts and removes it when it stops. A sidecar killed with `kill -9` cannot
//! clean up, so every entry records its process id and the process's start time: an entry
//! whose process is gone (or whose pid now belongs to another process) is ignored and
//! swept. Files are written to a temporary name and renamed, so readers never see half an
//! entry.
//!
//! Plain files were chosen over an embedded database or multicast (Dapr's mDNS) because
//! they need no daemon, survive any crash, work without a network, and can be inspected
//! with `ls` and `cat`.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{AppRef, BoxFuture, NameResolver, Registration, ResolveError};

/// One registry file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub app_id: String,
    pub namespace: String,
    pub pid: u32,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22); tells a
    /// live sidecar from an unrelated process that inherited its pid. `None` off Linux.
    pub process_start: Option<u64>,
    pub internal_address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_address: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
}

#[derive(Debug)]
pub struct LocalRegistry {
    dir: PathBuf,
    /// Our own entry file, removed on drop.
    own_entry: Option<PathBuf>,
}

impl LocalRegistry {
    /// Opens (creating if needed) the registry at `dir` and publishes `me`, if given.
    pub fn open(dir: &Path, me: Option<Registration>) -> Result<Self, ResolveError> {
        let register_err = |path: &Path, source| ResolveError::Register {
            path: path.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(|e| register_err(dir, e))?;
        let own_entry = match me {
            None => None,
            Some(me) => {
                let pid = std::process::id();
                let entry = Entry {
                    app_id: me.app.app_id.clone(),
                    namespace: me.app.namespace.clone(),
                    pid,
                    process_start: process_start(pid),
                    internal_address: me.internal_address,
                    http_address: me.http_address,
                    app_port: me.app_port,
                };
                let app_dir = dir.join(&me.app.namespace).join(&me.app.app_id);
                fs::create_dir_all(&app_dir).map_err(|e| register_err(&app_dir, e))?;
                let path = app_dir.join(format!("{pid}-{}.json", me.internal_address.port()));
                write_atomically(&path, &entry).map_err(|e| register_err(&path, e))?;
                tracing::debug!(path = %path.display(), "registered in the local registry");
                Some(path)
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            own_entry,
        })
    }

    /// The live entries of one app.
    pub fn entries(&self, app: &AppRef) -> Result<Vec<Entry>, ResolveError> {
        read_app_dir(&self.dir.join(&app.namespace).join(&app.app_id))
    }

    /// Every live entry of every app, for `trellis list`.
    pub fn all_entries(&self) -> Result<Vec<Entry>, ResolveError> {
        let mut out = Vec::new();
        for ns in subdirs(&self.dir)? {
            for app in subdirs(&ns)? {
                out.extend(read_app_dir(&app)?);
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.app_id, a.pid).cmp(&(&b.namespace, &b.app_id, b.pid)));
        Ok(out)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        if let Some(path) = &self.own_entry {
            let _ = fs::remove_file(path);
        }
    }
}

impl NameResolver for LocalRegistry {
    fn resolve<'a>(
        &'a self,
        app: &'a AppRef,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>> {
        // A directory of a few tiny files: reading it inline costs less than handing it to
        // the blocking pool, and the balancer's cache keeps it off the per-request path.
        let result = self
            .entries(app)
            .map(|entries| entries.into_iter().map(|e| e.internal_address).collect());
        Box::pin(std::future::ready(result))
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn withdraw(&self) {
        if let Some(path) = &self.own_entry {
            let _ = fs::remove_file(path);
        }
    }
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, ResolveError> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ResolveError::Registry {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    Ok(read
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect())
}

fn read_app_dir(dir: &Path) -> Result<Vec<Entry>, ResolveError> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ResolveError::Registry {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    let mut live = Vec::new();
    for file in read.filter_map(Result::ok) {
        let path = file.path();
        if path.extension().is_none_or(|ext| ext != "json") {
            continue;
        }
        // A file that vanished or is unreadable belongs to a sidecar that is stopping.
        let Ok(bytes) = fs::read(&path) else { continue };
        let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) else {
            tracing::debug!(path = %path.display(), "ignoring malformed registry entry");
            continue;
        };
        if is_alive(&entry) {
            live.push(entry);
        } else {
            tracing::debug!(path = %path.display(), pid = entry.pid, "sweeping entry of a dead sidecar");
            let _ = fs::remove_file(&path);
        }
    }
    Ok(live)
}

fn write_atomically(path: &Path, entry: &Entry) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Whether the process that wrote `entry` still runs.
fn is_alive(entry: &Entry) -> bool {
    if !Path::new("/proc/self/stat").exists() {
        // No procfs (macOS, BSD): trust the entry; a dead instance is dropped by the
        // balancer when connecting to it fails.
        return true;
    }
    match (process_start(entry.pid), entry.process_start) {
        (Some(now), Some(recorded)) => now == recorded,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Field 22 of `/proc/<pid>/stat`, the process start time in clock ticks since boot.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces; fields after the
    // last ')' are space-separated, starting with field 3.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(app: &str, port: u16) -> Registration {
        Registration {
            app: AppRef::new(app, "default"),
            internal_address: SocketAddr::from(([127, 0, 0, 1], port)),
            http_address: None,
            app_port: None,
        }
    }

    #[tokio::test]
    async fn publishes_and_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let me = LocalRegistry::open(dir.path(), Some(reg("orders", 4001))).unwrap();
        let reader = LocalRegistry::open(dir.path(), None).unwrap();
        let app = AppRef::new("orders", "default");
        assert_eq!(
            reader.resolve(&app).await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 4001))]
        );
        assert!(
            reader
                .resolve(&AppRef::new("orders", "other"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(reader.all_entries().unwrap().len(), 1);
        drop(me);
        assert!(reader.resolve(&app).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn ignores_and_sweeps_dead_processes() {
        let dir = tempfile::tempdir().unwrap();
        let app_dir = dir.path().join("default").join("orders");
        fs::create_dir_all(&app_dir).unwrap();
        // Our own pid with a start time that does not match: a recycled pid.
        let stale = Entry {
            app_id: "orders".into(),
            namespace: "default".into(),
            pid: std::process::id(),
            process_start: Some(1),
            internal_address: SocketAddr::from(([127, 0, 0, 1], 9)),
            http_address: None,
            app_port: None,
        };
        let path = app_dir.join("stale.json");
        write_atomically(&path, &stale).unwrap();
        fs::write(app_dir.join("garbage.json"), b"{not json").unwrap();
        let reader = LocalRegistry::open(dir.path(), None).unwrap();
        assert!(
            reader
                .resolve(&AppRef::new("orders", "default"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(!path.exists(), "dead entry swept");
    }

    #[test]
    fn reads_own_start_time() {
        assert!(process_start(std::process::id()).is_some());
        assert!(process_start(u32::MAX).is_none());
    }
}
