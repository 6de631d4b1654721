//! What every Trellis crate shares, so that each mechanism exists once: Go-style durations
//! ([`duration`]), component metadata read by Dapr's rules ([`metadata`]), RFC 3339
//! timestamps ([`time`]), sizes such as `4Mi` ([`size`]) and errors told with their causes
//! ([`error`]); behind the `redis` feature, the Redis connection setup every
//! Redis-backed component shares, and behind `postgres` the PostgreSQL one.
//!
//! This crate depends on no other Trellis crate and does no I/O; every building block, the
//! resource loader, the runtime and the tools may depend on it.

pub mod duration;
pub mod error;
pub mod metadata;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub mod size;
pub mod time;

pub use duration::{DurationError, Signed};
pub use metadata::{Metadata, MetadataError};
