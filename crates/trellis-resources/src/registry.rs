//! A factory table for one building block, keyed by component type and version, so the runtime can
//! turn a `Component`'s `spec.type` / `spec.version` into the code that implements it.
//!
//! Registration is explicit (no global state, no link-time tricks): the runtime creates one registry per
//! building block and registers what it compiles in.

use std::collections::BTreeMap;
use std::fmt;

/// Component types and versions a registry knows, each type with its versions, both sorted.
type Known = Vec<(String, Vec<String>)>;

/// Factories of one building block (`state`, `pubsub`, ...), looked up by component type and version.
///
/// Type names and versions are compared case-insensitively, and `""`, `v0` and `v1` are treated as the
/// same version, as Dapr does so that components written without a version keep working.
pub struct Registry<F> {
    block: &'static str,
    // type (lowercase) -> version (lowercase, normalised) -> index into `factories`
    index: BTreeMap<String, BTreeMap<String, usize>>,
    factories: Vec<F>,
}

impl<F> fmt::Debug for Registry<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("block", &self.block)
            .field("known", &self.known())
            .finish()
    }
}

/// Dapr treats an absent version, `v0` and `v1` as the initial version.
fn normalise_version(version: &str) -> String {
    let v = version.trim().to_ascii_lowercase();
    if v.is_empty() || v == "v0" {
        "v1".to_string()
    } else {
        v
    }
}

impl<F> Registry<F> {
    /// An empty registry for `block`, such as `"state"`.
    pub fn new(block: &'static str) -> Self {
        Self {
            block,
            index: BTreeMap::new(),
            factories: Vec::new(),
        }
    }

    /// The building block this registry serves.
    pub fn block(&self) -> &'static str {
        self.block
    }

    /// Registers `factory` for `type_name` (such as `state.redis`) under each of `versions` (such as
    /// `["v1"]` or `["v1", "v2"]`; an empty list means `v1`). A later registration of the same type
    /// and version replaces the earlier one.
    pub fn register(&mut self, type_name: &str, versions: &[&str], factory: F) {
        let slot = self.factories.len();
        self.factories.push(factory);
        let entry = self
            .index
            .entry(type_name.trim().to_ascii_lowercase())
            .or_default();
        if versions.is_empty() {
            entry.insert("v1".to_string(), slot);
        }
        for v in versions {
            entry.insert(normalise_version(v), slot);
        }
    }

    /// Makes `alias` another name for `target` (every version registered so far), for the
    /// older names Dapr still accepts (`state.postgres` for `state.postgresql`). Nothing
    /// happens when `target` is not registered (its backend is compiled out).
    pub fn alias(&mut self, alias: &str, target: &str) {
        if let Some(versions) = self.index.get(&target.trim().to_ascii_lowercase()).cloned() {
            self.index
                .insert(alias.trim().to_ascii_lowercase(), versions);
        }
    }

    /// The factory for `type_name` at `version`.
    pub fn get(&self, type_name: &str, version: &str) -> Result<&F, UnknownComponentType> {
        self.index
            .get(&type_name.trim().to_ascii_lowercase())
            .and_then(|versions| versions.get(&normalise_version(version)))
            .and_then(|slot| self.factories.get(*slot))
            .ok_or_else(|| UnknownComponentType {
                block: self.block,
                type_name: type_name.to_string(),
                version: version.to_string(),
                known: self.known(),
            })
    }

    /// Every registered type with its versions, sorted.
    pub fn known(&self) -> Vec<(String, Vec<String>)> {
        self.index
            .iter()
            .map(|(t, versions)| (t.clone(), versions.keys().cloned().collect()))
            .collect()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// A component asked for a type/version the registry does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownComponentType {
    /// The registry's building block.
    pub block: &'static str,
    /// The type asked for.
    pub type_name: String,
    /// The version asked for.
    pub version: String,
    /// What the registry has.
    pub known: Known,
}

impl fmt::Display for UnknownComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown component type {:?} version {:?}; ",
            self.type_name, self.version
        )?;
        if self.known.is_empty() {
            return write!(f, "no {} component types are compiled in", self.block);
        }
        f.write_str("known types: ")?;
        for (i, (t, versions)) in self.known.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{t} ({})", versions.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownComponentType {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn registry() -> Registry<&'static str> {
        let mut r = Registry::new("state");
        r.register("state.redis", &["v1"], "redis");
        r.register("state.postgresql", &["v1", "v2"], "pg");
        r
    }

    #[test]
    fn finds_registered_types() {
        let r = registry();
        assert_eq!(*r.get("state.redis", "v1").unwrap(), "redis");
        assert_eq!(*r.get("state.postgresql", "v2").unwrap(), "pg");
        // Case-insensitive, and "", "v0" and "v1" are the same version, as in Dapr.
        assert_eq!(*r.get("State.Redis", "V1").unwrap(), "redis");
        assert_eq!(*r.get("state.redis", "").unwrap(), "redis");
        assert_eq!(*r.get("state.redis", "v0").unwrap(), "redis");
        assert_eq!(
            r.known(),
            vec![
                (
                    "state.postgresql".to_string(),
                    vec!["v1".to_string(), "v2".to_string()]
                ),
                ("state.redis".to_string(), vec!["v1".to_string()]),
            ]
        );
        assert_eq!(r.block(), "state");
    }

    #[test]
    fn an_alias_shares_every_version_and_a_missing_target_adds_nothing() {
        let mut r = registry();
        r.alias("state.postgres", "state.postgresql");
        r.alias("state.nothing", "state.absent");
        assert_eq!(*r.get("state.postgres", "v1").unwrap(), "pg");
        assert_eq!(*r.get("State.Postgres", "v2").unwrap(), "pg");
        assert!(r.get("state.nothing", "v1").is_err());
        assert_eq!(r.known().len(), 3);
    }

    #[test]
    fn later_registration_wins() {
        let mut r = registry();
        r.register("state.redis", &["v1"], "redis2");
        assert_eq!(*r.get("state.redis", "v1").unwrap(), "redis2");
        r.register("state.memory", &[], "mem");
        assert_eq!(*r.get("state.memory", "v1").unwrap(), "mem");
    }

    #[test]
    fn unknown_type_lists_known_ones() {
        let r = registry();
        let err = r.get("state.foo", "v1").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown component type "state.foo" version "v1"; known types: state.postgresql (v1, v2), state.redis (v1)"#
        );
        let err = r.get("state.redis", "v2").unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"unknown component type "state.redis" version "v2"; known types:"#)
        );
    }

    #[test]
    fn empty_registry_says_so() {
        let r: Registry<()> = Registry::new("state");
        assert!(r.is_empty());
        let err = r.get("state.foo", "v1").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown component type "state.foo" version "v1"; no state component types are compiled in"#
        );
        assert!(format!("{r:?}").contains("state"));
    }
}
