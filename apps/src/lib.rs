//! The classroom tutorial's programs, written with the DSL.
//!
//! | module | what |
//! |---|---|
//! | [`user`] | the records: users, actions, watchlist entries |
//! | [`filters`] | the fifteen team filters |
//! | [`fake`] | fake users with the tutorial's distributions |
//! | [`actions`] | steps 2–4: the filter and the actions |
//! | [`watchlist`] | step 5's topology |
//! | [`cli`] | options shared by the programs |
#![deny(missing_docs)]

pub mod actions;
pub mod cli;
pub mod enrich;
pub mod fake;
pub mod filters;
pub mod latency;
pub mod user;
pub mod watchlist;
pub mod windowed_watchlist;

/// The book's pages (`docs/`), compiled and run as doctests so that every
/// Rust snippet in them stays true.
#[cfg(doctest)]
pub mod book {
    #[doc = include_str!("../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../docs/dsl.md")]
    pub struct Dsl;
    #[doc = include_str!("../../docs/tutorial.md")]
    pub struct Tutorial;
    #[doc = include_str!("../../docs/runtime.md")]
    pub struct Runtime;
    #[doc = include_str!("../../docs/operations.md")]
    pub struct Operations;
    #[doc = include_str!("../../docs/testing.md")]
    pub struct Testing;
    #[doc = include_str!("../../docs/windows.md")]
    pub struct Windows;
    #[doc = include_str!("../../docs/tables.md")]
    pub struct Tables;
}
