//! Integration tests of the state stores: the conformance suite against each backend, and
//! each backend's own behaviour (for SQLite: several stores on one file, durability across
//! kill -9).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
mod servers;
#[cfg(feature = "sqlite")]
mod sqlite;
