//! Steps 2–4: the team's filter, and an action per flagged user.

use stream_dsl::prelude::*;

use crate::filters::TeamFilter;
use crate::user::{Action, User};

/// Adds the flagger to `b`: users from `new_users` that match `filter`
/// become `{"customer","type","reason","team"}` actions on `actions`.
///
/// ```
/// use stream_dsl::prelude::*;
/// let b = StreamsBuilder::new();
/// let filter = apps::filters::for_team("team-1").unwrap();
/// apps::actions::flag_users(&b, "new_users", "actions", "team-1", filter);
/// let topology = b.build().unwrap();
/// assert!(topology.describe("team-1").contains("actions"));
/// ```
pub fn flag_users(
    b: &StreamsBuilder,
    new_users: &str,
    actions: &str,
    team: &str,
    filter: &'static TeamFilter,
) {
    let team = team.to_string();
    b.source_with(new_users, Consumed::<String, User>::json())
        .filter(move |_, u| filter.matches(u))
        .map_values(move |u| Action {
            customer: u.email,
            action_type: filter.action_type.into(),
            reason: filter.reason.into(),
            team: team.clone(),
        })
        .peek(|_, a| tracing::info!(customer = %a.customer, reason = %a.reason, "flagged"))
        .to_topic_with(actions, Produced::<String, Action>::json());
}
