//! discovery tests
