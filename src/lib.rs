//! keel: a self-hosted reliability appliance in one binary.
//!
//! Layers, one way only: `http` → services (`audit`, `auth`, `metrics`, ...) → `store`.

pub mod app;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cycles;
pub mod doctor;
pub mod events;
pub mod exec;
pub mod fsutil;
pub mod http;
pub mod inbox;
pub mod metrics;
pub mod process;
pub mod queue;
pub mod schedule;
pub mod security;
pub mod store;
pub mod supervisor;
pub mod template;
