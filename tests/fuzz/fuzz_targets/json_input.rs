//! The JSON deserialization path: arbitrary bytes as a `new_users` record
//! through the watchlist topology. Every record is either a valid user
//! (counted if the team's filter flags it) or a dead letter with its
//! coordinates; nothing panics, nothing is dropped.
#![no_main]

use apps::user::User;
use apps::watchlist::{topology, Options, STORE};
use libfuzzer_sys::fuzz_target;
use stream_dsl::prelude::TestDriver;

fuzz_target!(|data: &[u8]| {
    let filter = apps::filters::for_team("team-1").expect("team-1");
    let options = Options::new("team-1", filter);
    let topology = topology(&options).expect("topology");
    let mut driver = TestDriver::new(topology, "fuzz");
    // first byte: key or not; the rest: the value
    let (key, value) = match data.split_first() {
        Some((k, rest)) if k % 2 == 0 => (Some(&b"key"[..]), rest),
        Some((_, rest)) => (None, rest),
        None => (None, data),
    };
    driver.pipe("new_users", key, Some(value));
    let dead = driver.dead_letters();
    match serde_json::from_slice::<User>(value) {
        Ok(user) => {
            assert!(dead.is_empty(), "a valid user was dead-lettered");
            let counted = driver
                .store_entries(STORE)
                .get(user.company_name.as_bytes())
                .cloned();
            let expected = filter.matches(&user).then(|| 1i64.to_be_bytes().to_vec());
            assert_eq!(counted, expected, "count of {:?}", user.company_name);
        }
        Err(_) => {
            assert_eq!(dead.len(), 1, "an invalid record must be dead-lettered once");
            assert_eq!(dead[0].value.as_deref(), Some(value), "original bytes kept");
            assert!(driver.store_entries(STORE).is_empty());
        }
    }
});
