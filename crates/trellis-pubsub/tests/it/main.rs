//! Integration tests of the pub/sub brokers: the conformance suite against each backend, and
//! each backend's own behaviour (for SQLite: several brokers and processes on one file,
//! leases, retention, durability across kill -9).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "jetstream")]
mod jetstream;
#[cfg(feature = "mqtt3")]
mod mqtt;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
