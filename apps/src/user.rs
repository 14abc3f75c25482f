//! The tutorial's records: a user registration, an action, a watchlist entry.

use serde::{Deserialize, Serialize};

/// A user registration from `new_users`; every field is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Email address.
    pub email: String,
    /// Card number, digits.
    pub credit_card_number: String,
    /// Employer.
    pub company_name: String,
    /// Employer's slogan.
    pub company_slogan: String,
    /// Employer's industry.
    pub industry: String,
    /// Login name.
    pub user_name: String,
    /// Avatar URL.
    pub avatar: String,
    /// Full name.
    pub name: String,
    /// Profession.
    pub profession: String,
    /// Field of work.
    pub field: String,
    /// Premium subscriber.
    pub premium: bool,
    /// Credit balance.
    pub credit: i64,
    /// IANA time zone.
    pub time_zone: String,
    /// Browser user agent.
    pub user_agent: String,
    /// Subscription pack.
    pub pack: String,
}

/// An action a team produces to `actions` for a flagged user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// The user's email.
    pub customer: String,
    /// The team's action type.
    #[serde(rename = "type")]
    pub action_type: String,
    /// The team's reason.
    pub reason: String,
    /// `team-N`.
    pub team: String,
}

/// A `watchlist` record: a team's count of flagged users at a company.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchlistEntry {
    /// `team-N`.
    pub team: String,
    /// Company name (also the record key).
    pub company: String,
    /// Flagged users counted so far.
    pub flag_count: i64,
}
