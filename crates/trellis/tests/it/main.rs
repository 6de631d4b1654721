//! Integration tests of the `trellis` binary: real `trellis` processes, real apps, real
//! sockets on loopback.

mod discovery;
mod launcher;
mod multiapp;
mod streaming;

/// The binary under test, built by cargo for this test run.
pub fn trellis_bin() -> &'static str {
    env!("CARGO_BIN_EXE_trellis")
}
