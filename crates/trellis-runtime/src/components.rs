//! The one place where component types are registered, per building block.
//!
//! Each building block gets a [`Registry`] keyed by component type and version. Backends are
//! registered here explicitly (behind their cargo features) so that `grep` finds every type
//! the binary can load. A component whose type is not registered is a start-up error that
//! names the types that are.

use trellis_resources::registry::Registry;

/// What the runtime knows about one component type.
#[derive(Debug, Clone)]
pub struct ComponentType {
    /// Reported by the metadata API (`ETAG`, `TRANSACTIONAL`, ...).
    pub capabilities: &'static [&'static str],
}

/// The building blocks Dapr defines, in the order their registries are consulted.
pub const BUILDING_BLOCKS: [&str; 8] = [
    "state",
    "pubsub",
    "bindings",
    "secretstores",
    "configuration",
    "lock",
    "middleware",
    "workflow",
];

#[derive(Debug)]
pub struct Registries {
    blocks: Vec<Registry<ComponentType>>,
}

impl Default for Registries {
    fn default() -> Self {
        // No building block ships component types yet; each one registers its backends
        // here as it lands.
        let blocks = BUILDING_BLOCKS.iter().map(|b| Registry::new(b)).collect();
        Self { blocks }
    }
}

impl Registries {
    /// The capabilities of `type_name` at `version`, or why it cannot be loaded.
    pub fn capabilities(&self, type_name: &str, version: &str) -> Result<Vec<String>, String> {
        let block = type_name.split('.').next().unwrap_or_default();
        let Some(registry) = self.blocks.iter().find(|r| r.block() == block) else {
            return Err(format!(
                "unknown component type {type_name:?}: {block:?} is not a building block; known: {}",
                BUILDING_BLOCKS.join(", ")
            ));
        };
        registry
            .get(type_name, version)
            .map(|t| t.capabilities.iter().map(|c| c.to_string()).collect())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_name_what_is_known() {
        let r = Registries::default();
        let err = r.capabilities("state.nope", "v1").unwrap_err();
        assert!(err.contains("state.nope"), "{err}");
        let err = r.capabilities("frob.x", "v1").unwrap_err();
        assert!(err.contains("pubsub") && err.contains("frob"), "{err}");
    }
}
