//! Nothing to link: this crate exists for its test (`tests/it/tidy.rs`), which checks the
//! invariants ARCHITECTURE.md states for the whole workspace, as rust-analyzer's `tidy` does.
//!
//! A crate of its own rather than a test in some other crate, because the rules concern
//! every crate equally, and because it needs `cargo metadata` and a walk of the source tree
//! that no library's tests should carry.
