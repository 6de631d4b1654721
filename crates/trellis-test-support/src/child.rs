//! Crash tests need a process to kill -9 that runs the same code as the test. The test
//! binary runs itself again with only one "test" selected, which is really the child's
//! body: [`respawn_test`] starts it, [`child_mode`] tells the body whether it is the child.

use std::ffi::OsStr;
use std::process::Stdio;

/// Environment variable naming the child's mode; unset in a normal test run.
const MODE: &str = "TRELLIS_TEST_CHILD_MODE";

/// Runs this test binary again with only the test `test_path` (e.g.
/// `sqlite::child_process`), in `mode`, with `env` added. Its stdout is piped for the
/// parent to read (children report what was acknowledged there), stderr is inherited,
/// and it is killed when dropped.
pub fn respawn_test(
    test_path: &str,
    mode: &str,
    env: &[(&str, &OsStr)],
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args([test_path, "--exact", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
}

/// In the child's body: its mode, and a runtime to run it on. `None` in a normal run,
/// where the body does nothing.
pub fn child_mode() -> Option<(String, tokio::runtime::Runtime)> {
    let mode = std::env::var(MODE).ok()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the child process");
    Some((mode, rt))
}
