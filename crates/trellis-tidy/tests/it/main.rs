//! The tidy test binary: the workspace's invariants, checked on the source tree.

mod tidy;
