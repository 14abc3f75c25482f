//! The classroom tutorial's programs, written with the DSL.
//!
//! | module | what |
//! |---|---|
//! | [`user`] | the records: users, actions, watchlist entries |
//! | [`filters`] | the fifteen team filters |
//! | [`fake`] | fake users with the tutorial's distributions |
//! | [`watchlist`] | step 5's topology |
//! | [`cli`] | options shared by the programs |
#![deny(missing_docs)]

pub mod cli;
pub mod fake;
pub mod filters;
pub mod user;
pub mod watchlist;
