//! The fifteen team filters of the tutorial's step 2, as one table.

use crate::user::User;

/// A team's filter and the labels of the actions it produces.
#[derive(Debug)]
pub struct TeamFilter {
    /// Team number, 1 to 15.
    pub team: u8,
    /// Action type.
    pub action_type: &'static str,
    /// Action reason.
    pub reason: &'static str,
    /// What the filter checks, in words.
    pub rule: &'static str,
    predicate: fn(&User) -> bool,
}

impl TeamFilter {
    /// Whether the user is flagged by this team.
    pub fn matches(&self, user: &User) -> bool {
        (self.predicate)(user)
    }

    /// The team's name, `team-N`.
    pub fn team_name(&self) -> String {
        format!("team-{}", self.team)
    }
}

/// Whether `s`, lower-cased, contains any of the lower-case `words`.
/// ASCII text (nearly every record) is compared in place; other text is
/// lower-cased with Unicode's rules first, as `str::to_lowercase` does.
fn contains_any(s: &str, words: &[&str]) -> bool {
    if s.is_ascii() {
        let s = s.as_bytes();
        words.iter().any(|w| {
            s.windows(w.len())
                .any(|part| part.eq_ignore_ascii_case(w.as_bytes()))
        })
    } else {
        let lower = s.to_lowercase();
        words.iter().any(|w| lower.contains(w))
    }
}

/// Whether `s`, lower-cased, equals one of the lower-case `words`.
fn equals_any(s: &str, words: &[&str]) -> bool {
    if s.is_ascii() {
        words.iter().any(|w| s.eq_ignore_ascii_case(w))
    } else {
        let lower = s.to_lowercase();
        words.iter().any(|w| lower == *w)
    }
}

/// All fifteen filters, by team.
pub static FILTERS: [TeamFilter; 15] = [
    TeamFilter {
        team: 1,
        action_type: "CONTACT_CUSTOMER",
        reason: "LEGACY_EMAIL_PROVIDER",
        rule: "email contains hotmail",
        predicate: |u| contains_any(&u.email, &["hotmail"]),
    },
    TeamFilter {
        team: 2,
        action_type: "CREDIT_CARD_VERIFICATION",
        reason: "AMEX_CARD",
        rule: "card starts with 37",
        predicate: |u| u.credit_card_number.starts_with("37"),
    },
    TeamFilter {
        team: 3,
        action_type: "SALES_LEAD",
        reason: "FINANCIAL_SECTOR",
        rule: "financial industry",
        predicate: |u| {
            contains_any(
                &u.industry,
                &["bank", "financ", "insur", "invest", "account", "capital"],
            )
        },
    },
    TeamFilter {
        team: 4,
        action_type: "ACQUISITION_TARGET",
        reason: "TECH_COMPANY",
        rule: "tech industry",
        predicate: |u| {
            contains_any(
                &u.industry,
                &[
                    "computer",
                    "internet",
                    "semiconductor",
                    "telecom",
                    "wireless",
                ],
            )
        },
    },
    TeamFilter {
        team: 5,
        action_type: "CONTACT_CUSTOMER",
        reason: "HEALTHCARE_COMPLIANCE",
        rule: "healthcare industry",
        predicate: |u| {
            contains_any(
                &u.industry,
                &[
                    "health",
                    "hospital",
                    "medical",
                    "pharma",
                    "biotech",
                    "veterinary",
                ],
            )
        },
    },
    TeamFilter {
        team: 6,
        action_type: "HIRE_CUSTOMER",
        reason: "IS_ENGINEER",
        rule: "profession is engineer",
        predicate: |u| equals_any(&u.profession, &["engineer"]),
    },
    TeamFilter {
        team: 7,
        action_type: "CONTACT_CUSTOMER",
        reason: "VIP_USER",
        rule: "premium and credit > 10",
        predicate: |u| u.premium && u.credit > 10,
    },
    TeamFilter {
        team: 8,
        action_type: "CONTACT_CUSTOMER",
        reason: "CRITICAL_DEBT",
        rule: "credit < -15",
        predicate: |u| u.credit < -15,
    },
    TeamFilter {
        team: 9,
        action_type: "CONTACT_CUSTOMER",
        reason: "APAC_EXPANSION",
        rule: "time zone in Asia",
        predicate: |u| u.time_zone.starts_with("Asia/"),
    },
    TeamFilter {
        team: 10,
        action_type: "CONTACT_CUSTOMER",
        reason: "LEGACY_BROWSER",
        rule: "MSIE or Trident browser",
        predicate: |u| u.user_agent.contains("MSIE") || u.user_agent.contains("Trident"),
    },
    TeamFilter {
        team: 11,
        action_type: "TRIGGER_GDPR_COMPLIANCE",
        reason: "IN_EUROPE",
        rule: "time zone in Europe",
        predicate: |u| u.time_zone.starts_with("Europe/"),
    },
    TeamFilter {
        team: 12,
        action_type: "HIRE_CUSTOMER",
        reason: "TECH_PROFESSIONAL",
        rule: "field is IT or technology",
        predicate: |u| equals_any(&u.field, &["it", "technology"]),
    },
    TeamFilter {
        team: 13,
        action_type: "CONTACT_CUSTOMER",
        reason: "INVALID_AVATAR",
        rule: "avatar is example.org or not https",
        predicate: |u| u.avatar.contains("example.org") || !u.avatar.starts_with("https://"),
    },
    TeamFilter {
        team: 14,
        action_type: "BAN_CUSTOMER",
        reason: "SUSPICIOUS_NAME",
        rule: "name is John Doe",
        predicate: |u| u.name == "John Doe",
    },
    TeamFilter {
        team: 15,
        action_type: "CONTACT_CUSTOMER",
        reason: "UPGRADE_FREE",
        rule: "pack is free",
        predicate: |u| u.pack == "free",
    },
];

/// The filter of `team-N` (or `N`).
pub fn for_team(team: &str) -> Result<&'static TeamFilter, String> {
    let n: u8 = team
        .strip_prefix("team-")
        .unwrap_or(team)
        .parse()
        .map_err(|_| format!("team must look like team-N with N from 1 to 15, got `{team}`"))?;
    FILTERS
        .iter()
        .find(|f| f.team == n)
        .ok_or_else(|| format!("there is no team {n}: teams are team-1 to team-15"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> User {
        User {
            email: "a@gmail.com".into(),
            credit_card_number: "4111111111111111".into(),
            company_name: "Acme and Sons".into(),
            company_slogan: "s".into(),
            industry: "Retail".into(),
            user_name: "a".into(),
            avatar: "https://robohash.org/a.png?size=50x50".into(),
            name: "Ann Smith".into(),
            profession: "advocate".into(),
            field: "Mining".into(),
            premium: false,
            credit: 0,
            time_zone: "America/New_York".into(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0".into(),
            pack: "small".into(),
        }
    }

    /// One flagged and the base (unflagged) user per team.
    fn flagged(team: u8) -> User {
        let mut u = base();
        match team {
            1 => u.email = "X@HotMail.com".into(),
            2 => u.credit_card_number = "373947589498776".into(),
            3 => u.industry = "Investment Banking".into(),
            4 => u.industry = "Semiconductors".into(),
            5 => u.industry = "Veterinary".into(),
            6 => u.profession = "Engineer".into(),
            7 => {
                u.premium = true;
                u.credit = 11
            }
            8 => u.credit = -16,
            9 => u.time_zone = "Asia/Tokyo".into(),
            10 => {
                u.user_agent =
                    "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)".into()
            }
            11 => u.time_zone = "Europe/Paris".into(),
            12 => u.field = "IT".into(),
            13 => u.avatar = "example.org".into(),
            14 => u.name = "John Doe".into(),
            15 => u.pack = "free".into(),
            _ => unreachable!(),
        }
        u
    }

    #[test]
    fn should_flag_exactly_the_users_each_team_targets() {
        for f in &FILTERS {
            assert!(
                f.matches(&flagged(f.team)),
                "team {} misses its user",
                f.team
            );
            assert!(!f.matches(&base()), "team {} flags the plain user", f.team);
        }
    }

    #[test]
    fn should_respect_the_boundaries() {
        let t = |n: &str| for_team(n).unwrap();
        let mut u = base();
        u.premium = true;
        u.credit = 10;
        assert!(!t("team-7").matches(&u), "credit must be > 10");
        u.credit = -15;
        assert!(!t("team-8").matches(&u), "credit must be < -15");
        u.avatar = "http://robohash.org/x.png".into();
        assert!(t("team-13").matches(&u), "non-https avatar");
        u.field = "Information Technology".into();
        assert!(!t("team-12").matches(&u), "field must equal it/technology");
        u.credit_card_number = "3473".into();
        assert!(!t("team-2").matches(&u));
    }

    #[test]
    fn should_lower_case_as_unicode_does_for_every_text() {
        let words = ["hotmail", "bank", "it", "technology", "engineer"];
        let texts = [
            "X@HotMail.com",
            "hotmai",
            "",
            "IT",
            "Ιt",
            "BAN\u{212A}",
            "Ba\u{0301}nk",
            "ÉNGINEER",
            "Technology",
            "Tech\u{0130}",
            "HOTMAİL.com",
        ];
        for t in texts {
            let lower = t.to_lowercase();
            for w in words {
                assert_eq!(
                    contains_any(t, &[w]),
                    lower.contains(w),
                    "{t:?} contains {w:?}"
                );
                assert_eq!(equals_any(t, &[w]), lower == w, "{t:?} equals {w:?}");
            }
        }
        // The Kelvin sign lower-cases to an ASCII k.
        assert!(contains_any("BAN\u{212A}", &["bank"]));
    }

    #[test]
    fn should_name_teams_and_reject_unknown_ones() {
        assert_eq!(for_team("team-3").unwrap().reason, "FINANCIAL_SECTOR");
        assert_eq!(for_team("15").unwrap().team_name(), "team-15");
        assert!(for_team("team-16")
            .unwrap_err()
            .contains("team-1 to team-15"));
        assert!(for_team("blue").is_err());
    }
}
