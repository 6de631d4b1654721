//! Integration tests of the job stores: the conformance suite on the embedded SQLite store
//! and on PostgreSQL (skipped, and said so, when no server answers), and two processes'
//! worth of schedulers sharing one store.

mod postgres;
mod sqlite;
