//! keel: a self-hosted reliability appliance in one binary.
//!
//! Layers, one way only: `http` → services (`audit`, `auth`, `metrics`, ...) → `store`.

pub mod audit;
pub mod auth;
pub mod clock;
pub mod fsutil;
pub mod store;
pub mod supervisor;
