//! Loading and validating Dapr resource files — Component, Configuration, Resiliency, Subscription and
//! HTTPEndpoint — plus the registry that maps component types to the code implementing them.
//!
//! Loading reports every problem in every file at once, each with its file, document and field path,
//! so a user can fix a resources directory in one pass.

mod component;
mod configuration;
mod error;
mod http_endpoint;
mod loader;
pub mod registry;
mod resiliency;
mod subscription;
mod yaml;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use component::{Component, MetadataItem, MetadataValue, ObjectMeta};
pub use configuration::{
    AccessControlSpec, ApiAccessRule, ApiSpec, AppOperation, AppPolicySpec, Configuration,
    ConfigurationSpec, FeatureSpec, HandlerSpec, MetricsSpec, MtlsSpec, NameResolutionSpec,
    OtelSpec, PipelineSpec, SecretsScope, SecretsSpec, TracingSpec, ZipkinSpec,
};
pub use error::{LoadError, LoadErrors, Location};
pub use http_endpoint::HttpEndpoint;
pub use loader::{KNOWN_KINDS, Resources, Skipped, load_configuration_file, load_paths, parse_str};
pub use registry::{Registry, UnknownComponentType};
pub use resiliency::{
    ActorCircuitBreakerScope, ActorTargetPolicy, BUILT_IN_RETRY_POLICIES, BackoffPolicy,
    BreakerCounts, CircuitBreakerPolicy, Comparison, ComponentTarget, Policies, Resiliency,
    RetryMatching, RetryPolicy, StatusCodeRange, TargetPolicy, Targets, Trip, TripExpr, TripField,
    TripParseError,
};
pub use subscription::{BulkSubscribe, RouteRule, Routes, Subscription};
