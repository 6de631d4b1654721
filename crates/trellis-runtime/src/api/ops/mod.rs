//! The Dapr API operations, each implemented once and protocol-neutral.
//!
//! The HTTP handlers (`api::state`, `api::pubsub`, ...) and the gRPC service (`api::grpc`)
//! decode their wire formats into the request types here, call the operation, and encode
//! its result; neither holds any logic of its own beyond that. Errors are [`ApiError`]s,
//! which carry Dapr's error code with both the HTTP status and the gRPC code Dapr uses.
//!
//! [`ApiError`]: super::ApiError

pub mod configuration;
pub mod jobs;
pub mod lock;
pub mod pubsub;
pub mod secrets;
pub mod state;
pub mod workflow;
