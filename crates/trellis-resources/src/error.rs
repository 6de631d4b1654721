//! Error types for loading resource files: where a problem is (file, document, field) and what it is.
//!
//! Loading never stops at the first problem, so every error carries enough context to be read on its
//! own in a list of many.

use std::fmt;
use std::path::PathBuf;

/// Where a resource came from: a file and the position of the YAML document inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// The file the document was read from (as given to the loader, not canonicalised).
    pub file: PathBuf,
    /// 0-based index of the `---`-separated YAML document in the file.
    pub document: usize,
}

impl Location {
    /// Creates a location for document `document` (0-based) of `file`.
    pub fn new(file: impl Into<PathBuf>, document: usize) -> Self {
        Self {
            file: file.into(),
            document,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Humans count documents from 1, as editors count lines.
        write!(
            f,
            "{} (document {})",
            self.file.display(),
            self.document + 1
        )
    }
}

/// One problem found while loading resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The document the problem is in; `None` for problems with a path as a whole (I/O errors).
    pub location: Option<Location>,
    /// Dotted path of the offending field, such as `spec.metadata[2].name`, when there is one.
    pub field: Option<String>,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

impl LoadError {
    /// An error about a field of a document.
    pub fn at(location: &Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location: Some(location.clone()),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// An error about a document as a whole.
    pub fn in_document(location: &Location, message: impl Into<String>) -> Self {
        Self {
            location: Some(location.clone()),
            field: None,
            message: message.into(),
        }
    }

    /// An error about a path that could not be read at all.
    pub fn io(message: impl Into<String>) -> Self {
        Self {
            location: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoadError {}

/// Every problem found by one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadErrors(pub Vec<LoadError>);

impl LoadErrors {
    /// Iterates over the errors.
    pub fn iter(&self) -> std::slice::Iter<'_, LoadError> {
        self.0.iter()
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no errors (a `LoadErrors` returned by this crate is never empty).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

impl IntoIterator for LoadErrors {
    type Item = LoadError;
    type IntoIter = std::vec::IntoIter<LoadError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a LoadErrors {
    type Item = &'a LoadError;
    type IntoIter = std::slice::Iter<'a, LoadError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let loc = Location::new("components/redis.yaml", 1);
        assert_eq!(loc.to_string(), "components/redis.yaml (document 2)");
        let e = LoadError::at(&loc, "spec.type", "missing required field");
        assert_eq!(
            e.to_string(),
            "components/redis.yaml (document 2): spec.type: missing required field"
        );
        let e2 = LoadError::in_document(&loc, "bad");
        assert_eq!(e2.to_string(), "components/redis.yaml (document 2): bad");
        let e3 = LoadError::io("cannot read x");
        assert_eq!(e3.to_string(), "cannot read x");
        let all = LoadErrors(vec![e, e3]);
        assert_eq!(
            all.to_string(),
            "components/redis.yaml (document 2): spec.type: missing required field\ncannot read x"
        );
    }
}
