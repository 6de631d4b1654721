//! Instance ids: what Dapr accepts, and the ids Trellis makes.

use crate::WorkflowError;

/// The longest instance id Dapr accepts.
pub const MAX_ID_LEN: usize = 64;

/// Checks an instance id the way Dapr checks a new one: 1 to 64 characters from
/// `[A-Za-z0-9_-]`.
pub fn validate(id: &str) -> Result<(), WorkflowError> {
    if id.is_empty() {
        return Err(WorkflowError::InvalidId(
            "the workflow instance id is empty".into(),
        ));
    }
    if id.len() > MAX_ID_LEN {
        return Err(WorkflowError::InvalidId(format!(
            "workflow instance id {id:?} is {} characters long; the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(WorkflowError::InvalidId(format!(
            "workflow instance id {id:?} contains {c:?}; only letters, digits, '_' and '-' are allowed"
        )));
    }
    Ok(())
}

/// A new random instance or execution id (a UUID without dashes, as the SDKs make them).
pub fn random() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_dapr_accepts() {
        assert!(validate("order-1_A").is_ok());
        assert!(validate(&"a".repeat(64)).is_ok());
        assert!(validate(&random()).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_odd_ids() {
        assert!(validate("").is_err());
        assert!(validate(&"a".repeat(65)).is_err());
        for bad in ["a b", "a/b", "a.b", "é", "a||b"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
