//! launcher tests
