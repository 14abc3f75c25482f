//! Prints the watchlist topology: `describe()` text, Mermaid and DOT.
//!
//! `cargo run -p apps --example describe_watchlist [text|mermaid|dot]`

use apps::filters::for_team;
use apps::watchlist::{topology, Options};

fn main() {
    let filter = for_team("team-1").expect("team-1 exists");
    let t = match topology(&Options::new("team-1", filter)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    match std::env::args().nth(1).as_deref() {
        Some("mermaid") => print!("{}", t.to_mermaid("team-1")),
        Some("dot") => print!("{}", t.to_dot("team-1")),
        _ => print!("{}", t.describe("team-1")),
    }
}
