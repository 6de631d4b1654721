//! Dapr's key prefixing: how an app's key becomes the key stored in a shared database.

use crate::StateError;

/// The `keyPrefix` component metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeyPrefix {
    /// `<app-id>||<key>` (Dapr's default).
    #[default]
    AppId,
    /// `<component-name>||<key>`: apps that use the same component share keys.
    Name,
    /// `<namespace>.<app-id>||<key>`.
    Namespace,
    /// The key as the app gave it.
    None,
    /// `<custom>||<key>`.
    Custom(String),
}

/// The separator Dapr puts between prefix and key.
pub const SEPARATOR: &str = "||";

impl KeyPrefix {
    /// Parses the `keyPrefix` metadata value (`appid`, `name`, `namespace`, `none`, or any
    /// other text as a custom prefix). A custom prefix may not contain `||`.
    pub fn parse(value: Option<&str>) -> Result<Self, StateError> {
        Ok(match value.map(str::trim) {
            None | Some("") => KeyPrefix::AppId,
            Some(v) if v.eq_ignore_ascii_case("appid") => KeyPrefix::AppId,
            Some(v) if v.eq_ignore_ascii_case("name") => KeyPrefix::Name,
            Some(v) if v.eq_ignore_ascii_case("namespace") => KeyPrefix::Namespace,
            Some(v) if v.eq_ignore_ascii_case("none") => KeyPrefix::None,
            Some(v) if v.contains(SEPARATOR) => {
                return Err(StateError::InvalidRequest(format!(
                    "keyPrefix {v:?} must not contain {SEPARATOR:?}"
                )));
            }
            Some(v) => KeyPrefix::Custom(v.to_string()),
        })
    }

    /// The text put in front of every key, including the separator ("" for `none`).
    pub fn prefix(&self, app_id: &str, namespace: &str, store_name: &str) -> String {
        match self {
            KeyPrefix::AppId => format!("{app_id}{SEPARATOR}"),
            KeyPrefix::Name => format!("{store_name}{SEPARATOR}"),
            KeyPrefix::Namespace => format!("{namespace}.{app_id}{SEPARATOR}"),
            KeyPrefix::None => String::new(),
            KeyPrefix::Custom(custom) => format!("{custom}{SEPARATOR}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p = |v: Option<&str>| KeyPrefix::parse(v).unwrap().prefix("app", "ns", "store");
        assert_eq!(p(None), "app||");
        assert_eq!(p(Some("appid")), "app||");
        assert_eq!(p(Some("name")), "store||");
        assert_eq!(p(Some("namespace")), "ns.app||");
        assert_eq!(p(Some("none")), "");
        assert_eq!(p(Some("shared")), "shared||");
        assert!(KeyPrefix::parse(Some("a||b")).is_err());
    }
}
