//! Fake user registrations with the tutorial's distributions, repeatable
//! from a seed, optionally mixed with malformed records.
//!
//! Company names come from the `fake` crate's `company::en::CompanyName`,
//! as the classroom instructor's producer makes them, so per-company counts
//! have the classroom's shape: over 13,000 users the largest count of one
//! team's flagged users at a company is about 6, not dozens.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::user::User;

const FIRST: &[&str] = &[
    "Roslyn", "Hugh", "Ilene", "Marcus", "Ada", "Bea", "Carl", "Dana", "Eli", "Fay", "Gus", "Hana",
    "Ivo", "Jun", "Kai", "Lea", "Milo", "Nia", "Otto", "Pia", "Quin", "Rosa", "Sami", "Tara",
    "Uli", "Vera", "Wes", "Xia", "Yara", "Zed",
];
const LAST: &[&str] = &[
    "Breitenberg",
    "Dicki",
    "Kuhn",
    "Schmitt",
    "Larkin",
    "Okuneva",
    "Hessel",
    "Bogan",
    "Mraz",
    "Wolff",
    "Kertzmann",
    "Rohan",
    "Feest",
    "Zulauf",
    "Stark",
    "Hayes",
    "Jaskolski",
    "Lind",
    "Torp",
    "Ullrich",
    "Veum",
    "Walsh",
    "Yost",
    "Ziemann",
    "Abbott",
    "Barton",
    "Crona",
    "Dooley",
    "Ebert",
    "Fisher",
    "Gleason",
    "Haag",
    "Ignatowski",
    "Jacobs",
    "Koepp",
    "Lowe",
    "Metz",
    "Nader",
    "Orn",
    "Pouros",
];
const INDUSTRIES: &[&str] = &[
    "Market Research",
    "Banking",
    "Financial Services",
    "Insurance",
    "Investment Management",
    "Accounting",
    "Venture Capital",
    "Computer Software",
    "Internet",
    "Semiconductors",
    "Telecommunications",
    "Wireless",
    "Hospital & Health Care",
    "Medical Devices",
    "Pharmaceuticals",
    "Biotechnology",
    "Veterinary",
    "Mining & Metals",
    "Retail",
    "Construction",
    "Food & Beverages",
    "Logistics",
    "Education Management",
    "Publishing",
];
const PROFESSIONS: &[&str] = &[
    "advocate",
    "engineer",
    "teacher",
    "designer",
    "nurse",
    "accountant",
    "chef",
    "pilot",
    "analyst",
    "farmer",
];
const FIELDS: &[&str] = &[
    "Mining",
    "IT",
    "Technology",
    "Finance",
    "Health",
    "Education",
    "Law",
    "Arts",
    "Sales",
    "Logistics",
];
const ZONES: &[&str] = &[
    "Pacific/Pago_Pago",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Europe/Paris",
    "Europe/Berlin",
    "America/New_York",
    "America/Lima",
    "Africa/Nairobi",
    "Australia/Sydney",
    "Europe/Lisbon",
    "Asia/Singapore",
    "America/Chicago",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows; U; MSIE 9.0; WIndows NT 9.0; en-US))",
    "Mozilla/5.0 (Windows NT 6.1; Trident/7.0; rv:11.0) like Gecko",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/119.0 Safari/537.36",
];
const SLOGANS: &[&str] = &[
    "Open-architected directional adapter",
    "Synergized mobile paradigm",
    "Robust holistic toolset",
    "Adaptive didactic framework",
];
const MAIL: &[&str] = &["gmail.com", "yahoo.com", "hotmail.com"];

/// Generates users; the same seed gives the same sequence.
pub struct Generator {
    rng: StdRng,
}

impl Generator {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn pick(&mut self, xs: &[&'static str]) -> &'static str {
        xs.choose(&mut self.rng).copied().unwrap_or("")
    }

    fn company(&mut self) -> String {
        use fake::faker::company::en::CompanyName;
        use fake::Fake;
        CompanyName().fake_with_rng(&mut self.rng)
    }

    /// The next user.
    pub fn user(&mut self) -> User {
        let first = self.pick(FIRST);
        let last = self.pick(LAST);
        let handle = format!(
            "{}_{}{}",
            first.to_lowercase(),
            last.to_lowercase(),
            self.rng.gen_range(0..1000)
        );
        let card = match self.rng.gen_range(0..4) {
            0 => format!("37{:013}", self.rng.gen_range(0..10_000_000_000_000u64)),
            1 => format!("34{:013}", self.rng.gen_range(0..10_000_000_000_000u64)),
            2 => format!("4{:015}", self.rng.gen_range(0..1_000_000_000_000_000u64)),
            _ => format!("5{:015}", self.rng.gen_range(0..1_000_000_000_000_000u64)),
        };
        User {
            email: format!("{handle}@{}", self.pick(MAIL)),
            credit_card_number: card,
            company_name: self.company(),
            company_slogan: self.pick(SLOGANS).into(),
            industry: self.pick(INDUSTRIES).into(),
            user_name: handle.clone(),
            avatar: if self.rng.gen_bool(0.1) {
                "example.org".into()
            } else {
                format!("https://robohash.org/{handle}.png?size=50x50")
            },
            name: if self.rng.gen_bool(0.1) {
                "John Doe".into()
            } else {
                format!("{first} {last}")
            },
            profession: self.pick(PROFESSIONS).into(),
            field: self.pick(FIELDS).into(),
            premium: self.rng.gen_bool(0.5),
            credit: self.rng.gen_range(-20..=19),
            time_zone: self.pick(ZONES).into(),
            user_agent: self.pick(AGENTS).into(),
            pack: if self.rng.gen_bool(0.1) {
                "free".into()
            } else {
                "small".into()
            },
        }
    }

    /// A malformed record of one of the kinds a real stream carries.
    pub fn bad_record(&mut self) -> Vec<u8> {
        let good = serde_json::to_vec(&self.user()).unwrap_or_default();
        match self.rng.gen_range(0..5) {
            0 => good[..good.len() / 2].to_vec(),
            1 => {
                let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap_or_default();
                v["credit"] = serde_json::Value::String("lots".into());
                serde_json::to_vec(&v).unwrap_or_default()
            }
            2 => {
                let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.remove("company_name");
                }
                serde_json::to_vec(&v).unwrap_or_default()
            }
            3 => {
                let mut g = good;
                g.splice(2..2, [0xff, 0xfe, 0xfd]);
                g
            }
            _ => Vec::new(),
        }
    }

    /// Whether the next record should be malformed, with probability `ratio`.
    pub fn roll_bad(&mut self, ratio: f64) -> bool {
        ratio > 0.0 && self.rng.gen_bool(ratio.min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_repeat_with_a_seed_and_follow_the_distributions() {
        let a: Vec<User> = (0..50)
            .map({
                let mut g = Generator::new(7);
                move |_| g.user()
            })
            .collect();
        let b: Vec<User> = (0..50)
            .map({
                let mut g = Generator::new(7);
                move |_| g.user()
            })
            .collect();
        assert_eq!(a, b);
        let mut g = Generator::new(1);
        let users: Vec<User> = (0..10_000).map(|_| g.user()).collect();
        let share = |f: &dyn Fn(&User) -> bool| {
            users.iter().filter(|u| f(u)).count() as f64 / users.len() as f64
        };
        assert!((share(&|u| u.name == "John Doe") - 0.1).abs() < 0.02);
        assert!((share(&|u| u.premium) - 0.5).abs() < 0.03);
        assert!((share(&|u| u.pack == "free") - 0.1).abs() < 0.02);
        assert!((share(&|u| u.avatar == "example.org") - 0.1).abs() < 0.02);
        assert!(users.iter().all(|u| (-20..=19).contains(&u.credit)));
    }

    #[test]
    fn should_give_the_classroom_s_company_counts() {
        let filter = crate::filters::for_team("team-1").unwrap();
        let mut g = Generator::new(42);
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for u in (0..13_000).map(|_| g.user()) {
            if filter.matches(&u) {
                *counts.entry(u.company_name).or_default() += 1;
            }
        }
        let max = counts.values().copied().max().unwrap_or(0);
        // The instructor's producer: largest team-1 count 6 over ~13,100 users.
        assert!(max < 15, "largest team-1 count {max}");
        assert!(
            counts.values().filter(|&&n| n >= 3).count() >= 5,
            "alerts still happen at the tutorial's threshold of 3"
        );
    }

    #[test]
    fn should_make_records_that_fail_to_parse() {
        let mut g = Generator::new(3);
        for _ in 0..50 {
            let bad = g.bad_record();
            assert!(
                serde_json::from_slice::<User>(&bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }
}
