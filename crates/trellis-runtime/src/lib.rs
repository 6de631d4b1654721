//! The Trellis sidecar: Dapr's HTTP API in front of an app, the channel to that app, and the
//! transport to other sidecars.
//!
//! ```text
//!   app ──HTTP──▶ api::PublicApi ──▶ invoke::Invoker ──mTLS: HTTP/1.1 pool or HTTP/2──▶
//!       peer's internal server ──HTTP──▶ peer's app
//! ```
//!
//! [`Sidecar::serve`] wires everything together from a [`SidecarConfig`] and the listeners the
//! caller bound (so tests can use port 0). Only the [`api`] module knows Dapr's wire formats
//! (JSON over HTTP, protobuf over gRPC) and error codes; [`invoke`] deals in `http` types and
//! its own error enum.

pub mod acl;
pub mod api;
pub mod cel;
pub mod cloudevent;
pub mod components;
pub mod config;
pub mod configuration;
pub mod configuration_updates;
pub mod delivery;
pub mod health;
pub mod invoke;
pub mod jobs;
mod lazy_store;
mod loading;
pub mod lock;
pub mod metrics;
pub mod pubsub;
pub mod resiliency;
pub mod runtime;
pub mod secrets;
pub mod server;
mod sidecar;
pub mod state;
pub mod subscriptions;
pub mod trace;
pub mod workflow;

pub use config::{
    AppChannelConfig, AppHealthCheck, AppProtocol, DeliveryPolicy, Environment, MtlsConfig,
    SidecarConfig,
};
pub use sidecar::{Listeners, RunningSidecar, Sidecar, StartError};

/// The body type used throughout the sidecar.
pub type Body = axum::body::Body;

/// Trellis's own version.
pub const TRELLIS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Dapr runtime version whose API this build implements, reported in `runtimeVersion`
/// with Trellis's version as SemVer build metadata (so version checks in SDKs see 1.17.0).
pub const RUNTIME_VERSION: &str = concat!("1.17.0+trellis.", env!("CARGO_PKG_VERSION"));
