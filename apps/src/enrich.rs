//! An exercise beyond the tutorial: actions enriched with the user they
//! name.
//!
//! Every record on `actions` names a customer by email; the registrations
//! on `new_users` say who that is. The topology reads the registrations as
//! a table keyed by email (re-keyed through a repartition topic, the rows
//! in a changelogged sled store) and left-joins each action with it: the
//! action, plus the user's name, company and profession when the user is
//! known (`user: null` when not — nothing is dropped). Output:
//! `<actions>-enriched`, keyed by email.

use serde::{Deserialize, Serialize};
use stream_core::{Topology, TopologyError};
use stream_dsl::prelude::*;

use crate::user::{Action, User};

/// The users table's store.
pub const USERS_STORE: &str = "users-by-email";

/// What an enriched action tells about its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    /// Full name.
    pub name: String,
    /// Employer.
    pub company: String,
    /// Profession.
    pub profession: String,
}

/// An action with the user it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichedAction {
    /// The user's email.
    pub customer: String,
    /// The action's type.
    #[serde(rename = "type")]
    pub action_type: String,
    /// The action's reason.
    pub reason: String,
    /// The team that flagged the user.
    pub team: String,
    /// The user, when registered before the action was processed.
    pub user: Option<UserSummary>,
}

/// Where the enrichment reads and writes.
#[derive(Debug, Clone)]
pub struct EnrichOptions {
    /// Registrations.
    pub new_users: String,
    /// Actions.
    pub actions: String,
    /// Output topic.
    pub output: String,
}

/// The enrichment topology: `actions` left-joined with the users table.
///
/// ```
/// use apps::enrich::{topology, EnrichOptions, EnrichedAction};
/// use stream_dsl::prelude::*;
///
/// let o = EnrichOptions { new_users: "new_users".into(), actions: "actions".into(), output: "enriched".into() };
/// let mut d = TestDriver::new(topology(&o).unwrap(), "app");
/// let mut u = apps::fake::Generator::new(3).user();
/// (u.email, u.name, u.company_name) = ("ann@hotmail.com".into(), "Ann".into(), "Acme".into());
/// d.pipe_str("new_users", "", &serde_json::to_string(&u).unwrap());
/// d.pipe_str("actions", "", r#"{"customer":"ann@hotmail.com","type":"email","reason":"hotmail","team":"team-1"}"#);
/// d.pipe_str("actions", "", r#"{"customer":"who@x.org","type":"email","reason":"hotmail","team":"team-1"}"#);
/// let out: Vec<EnrichedAction> = d.records("enriched").iter()
///     .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()).collect();
/// assert_eq!(out[0].user.as_ref().map(|u| (u.name.as_str(), u.company.as_str())), Some(("Ann", "Acme")));
/// assert_eq!(out[1].user, None);
/// ```
pub fn topology(o: &EnrichOptions) -> Result<Topology, TopologyError> {
    let b = StreamsBuilder::new();
    let users = b
        .source_with(&o.new_users, Consumed::<String, User>::json())
        .select_key(|_, u| u.email.clone())
        .to_table(Materialized::as_store(USERS_STORE));
    b.source_with(&o.actions, Consumed::<String, Action>::json())
        .select_key(|_, a| a.customer.clone())
        .left_join(&users, |a, u| EnrichedAction {
            customer: a.customer,
            action_type: a.action_type,
            reason: a.reason,
            team: a.team,
            user: u.map(|u| UserSummary {
                name: u.name,
                company: u.company_name,
                profession: u.profession,
            }),
        })
        .to_topic_with(&o.output, Produced::<String, EnrichedAction>::json());
    b.build()
}
