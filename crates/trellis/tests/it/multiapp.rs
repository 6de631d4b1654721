//! multiapp tests
