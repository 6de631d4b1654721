//! streaming tests
