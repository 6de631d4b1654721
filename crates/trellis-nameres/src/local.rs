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
//!
//! Paths: the namespace and app id directories are built only from ids that pass
//! [`crate::validate_app_id`] and [`crate::validate_namespace`] (checked again here, not
//! only when the `AppRef` was made), and every path read, written or removed is checked to
//! lie inside the registry directory, in release builds too: ids come from API callers, and
//! an id such as `../../x` or an absolute path would otherwise point the resolver at
//! "entries" anywhere on the machine. Entry files must be regular files, so a symlink in the
//! registry is never followed to a file elsewhere.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    AppRef, BoxFuture, NameResolver, Registration, ResolveError, validate_app_id,
    validate_namespace,
};

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
    pub grpc_address: Option<SocketAddr>,
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
                    grpc_address: me.grpc_address,
                    app_port: me.app_port,
                };
                let app_dir = app_dir(dir, &me.app)?;
                fs::create_dir_all(&app_dir).map_err(|e| register_err(&app_dir, e))?;
                let path = app_dir.join(format!("{pid}-{}.json", me.internal_address.port()));
                write_atomically(dir, &path, &entry).map_err(|e| register_err(&path, e))?;
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
        read_app_dir(&self.dir, &app_dir(&self.dir, app)?)
    }

    /// Every live entry of every app, for `trellis list`.
    pub fn all_entries(&self) -> Result<Vec<Entry>, ResolveError> {
        let mut out = Vec::new();
        for ns in subdirs(&self.dir, &self.dir)? {
            for app in subdirs(&self.dir, &ns)? {
                out.extend(read_app_dir(&self.dir, &app)?);
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

/// `<registry>/<namespace>/<app-id>`, from ids that are valid (checked again: the fields of
/// an `AppRef` are public) and a result that is checked to stay inside the registry.
fn app_dir(registry: &Path, app: &AppRef) -> Result<PathBuf, ResolveError> {
    validate_namespace(&app.namespace)?;
    validate_app_id(&app.app_id)?;
    let path = registry.join(&app.namespace).join(&app.app_id);
    inside(registry, &path)?;
    Ok(path)
}

/// Whether `path` is `registry` followed by plain names only: no `..`, no root or prefix.
/// (`components` already skips interior `.`, which stays where it is.)
/// Purely lexical, so it costs nothing per lookup; symlinks are handled where files are read.
/// Not a `debug_assert`: this is the check that keeps a bad id from reaching the rest of the
/// file system, so release builds run it too.
fn inside(registry: &Path, path: &Path) -> Result<(), ResolveError> {
    let plain = path
        .strip_prefix(registry)
        .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))));
    if plain {
        Ok(())
    } else {
        tracing::error!(path = %path.display(), registry = %registry.display(), "registry path outside the registry refused");
        Err(ResolveError::OutsideRegistry {
            path: path.display().to_string(),
            dir: registry.display().to_string(),
        })
    }
}

fn subdirs(registry: &Path, dir: &Path) -> Result<Vec<PathBuf>, ResolveError> {
    inside(registry, dir)?;
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

fn read_app_dir(registry: &Path, dir: &Path) -> Result<Vec<Entry>, ResolveError> {
    inside(registry, dir)?;
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
        // Sidecars write regular files; a symlink could lead anywhere. (`file_type` does
        // not follow links.)
        if !file.file_type().is_ok_and(|t| t.is_file()) || inside(registry, &path).is_err() {
            tracing::debug!(path = %path.display(), "ignoring registry entry that is not a plain file");
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

fn write_atomically(registry: &Path, path: &Path, entry: &Entry) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    for p in [path, tmp.as_path()] {
        inside(registry, p).map_err(io::Error::other)?;
    }
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
            app: AppRef::new(app, "default").unwrap(),
            internal_address: SocketAddr::from(([127, 0, 0, 1], port)),
            http_address: None,
            grpc_address: None,
            app_port: None,
        }
    }

    #[tokio::test]
    async fn publishes_and_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let me = LocalRegistry::open(dir.path(), Some(reg("orders", 4001))).unwrap();
        let reader = LocalRegistry::open(dir.path(), None).unwrap();
        let app = AppRef::new("orders", "default").unwrap();
        assert_eq!(
            reader.resolve(&app).await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 4001))]
        );
        assert!(
            reader
                .resolve(&AppRef::new("orders", "other").unwrap())
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
            grpc_address: None,
            app_port: None,
        };
        let path = app_dir.join("stale.json");
        write_atomically(dir.path(), &path, &stale).unwrap();
        fs::write(app_dir.join("garbage.json"), b"{not json").unwrap();
        let reader = LocalRegistry::open(dir.path(), None).unwrap();
        assert!(
            reader
                .resolve(&AppRef::new("orders", "default").unwrap())
                .await
                .unwrap()
                .is_empty()
        );
        assert!(!path.exists(), "dead entry swept");
    }

    /// A live entry for `addr`, as a sidecar of this process would write it.
    fn live_entry(app_id: &str, addr: SocketAddr) -> Entry {
        let pid = std::process::id();
        Entry {
            app_id: app_id.into(),
            namespace: "default".into(),
            pid,
            process_start: process_start(pid),
            internal_address: addr,
            http_address: None,
            grpc_address: None,
            app_port: None,
        }
    }

    #[test]
    fn paths_stay_inside_the_registry() {
        let reg = Path::new("/data/registry");
        assert!(inside(reg, &reg.join("default").join("orders")).is_ok());
        for bad in [
            "/data/registry/../decoy",
            "/data/decoy",
            "/etc",
            "relative/registry/x",
        ] {
            assert!(inside(reg, Path::new(bad)).is_err(), "{bad}");
        }
        // `join` with an absolute component replaces the base: refused, not followed.
        #[expect(
            clippy::join_absolute_paths,
            reason = "the replacement is what is tested"
        )]
        let replaced = reg.join("/etc");
        assert!(inside(reg, &replaced).is_err());
    }

    /// An `AppRef` whose public fields were changed after validation still cannot reach the
    /// decoy entries beside the registry directory.
    #[tokio::test]
    async fn ids_changed_after_validation_are_checked_again() {
        let data = tempfile::tempdir().unwrap();
        let registry = data.path().join("registry");
        let decoy = data.path().join("decoy");
        fs::create_dir_all(&decoy).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 4999));
        let entry = live_entry("decoy", addr);
        fs::write(decoy.join("x.json"), serde_json::to_vec(&entry).unwrap()).unwrap();
        let reader = LocalRegistry::open(&registry, None).unwrap();
        let decoy_abs = decoy.display().to_string();
        for (id, ns) in [
            ("decoy", ".."),
            ("../decoy", "default"),
            (decoy_abs.as_str(), "default"),
            ("x", decoy_abs.as_str()),
        ] {
            let mut app = AppRef::new("placeholder", "default").unwrap();
            app.app_id = id.into();
            app.namespace = ns.into();
            let err = reader.resolve(&app).await.unwrap_err();
            assert!(
                matches!(err, ResolveError::InvalidApp(_)),
                "{id} {ns}: {err}"
            );
        }
        assert!(
            LocalRegistry::open(
                &registry,
                Some(Registration {
                    app: AppRef {
                        app_id: "..".into(),
                        namespace: "default".into()
                    },
                    ..reg("x", 1)
                })
            )
            .is_err()
        );
        assert!(
            !registry.join("default").exists(),
            "nothing created for the bad id"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinked_entries_are_not_followed() {
        let data = tempfile::tempdir().unwrap();
        let registry = data.path().join("registry");
        let app_dir = registry.join("default").join("orders");
        fs::create_dir_all(&app_dir).unwrap();
        let outside = data.path().join("outside.json");
        let entry = live_entry("orders", SocketAddr::from(([127, 0, 0, 1], 4998)));
        fs::write(&outside, serde_json::to_vec(&entry).unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, app_dir.join("link.json")).unwrap();
        let reader = LocalRegistry::open(&registry, None).unwrap();
        let orders = AppRef::new("orders", "default").unwrap();
        assert!(reader.resolve(&orders).await.unwrap().is_empty());
        // The same file, copied in as a regular file, is a live entry: the test can fail.
        fs::copy(&outside, app_dir.join("real.json")).unwrap();
        assert_eq!(reader.resolve(&orders).await.unwrap().len(), 1);
    }

    #[test]
    fn reads_own_start_time() {
        assert!(process_start(std::process::id()).is_some());
        assert!(process_start(u32::MAX).is_none());
    }
}
