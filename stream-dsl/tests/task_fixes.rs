//! Two task bugs, each with the test that failed before its fix.

use stream_core::data::DynData;
use stream_core::error::ProcessError;
use stream_core::processor::{Context, Processor, Punctuation, PunctuationType};
use stream_core::record::Record;
use stream_dsl::prelude::*;

/// Forwards one `("tick", "<now>")` record at every punctuation.
struct Ticker;

impl Processor for Ticker {
    fn process(&mut self, _ctx: &mut Context<'_>, _r: Record) -> Result<(), ProcessError> {
        Ok(())
    }

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(1, PunctuationType::WallClock);
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, p: Punctuation) -> Result<(), ProcessError> {
        let now_ms = p.time;
        let key: DynData = Box::new("tick".to_string());
        let value: DynData = Box::new(now_ms.to_string());
        ctx.forward(Record::new(key, value, now_ms));
        Ok(())
    }
}

/// Punctuated records that cross a repartition topic are all counted: each
/// punctuation's output is newer downstream than the last one's (it used to
/// carry offset −1 and sequence 0 every time, and the second was dropped as
/// a duplicate).
#[test]
fn should_count_every_punctuation_that_crosses_a_repartition_topic() {
    let b = StreamsBuilder::new();
    b.source("in")
        .process::<String, String, _>(|| Ticker, &[])
        .repartition()
        .group_by(|k, _| k.clone())
        .count(Materialized::as_store("ticks"))
        .to_topic("out");
    let mut d = TestDriver::new(b.build().unwrap(), "app");
    d.advance_time(1_000);
    d.advance_time(1_000);
    d.advance_time(1);
    let counts: Vec<(String, String)> = d.output_utf8("out");
    let last = d
        .records("out")
        .last()
        .map(|r| i64::from_be_bytes(r.value.clone().unwrap().try_into().unwrap()));
    assert_eq!(last, Some(3), "three punctuations, three ticks: {counts:?}");
}

/// An operator declared with other output types than it produces is a
/// construction bug: the first record stops the topology with one clear
/// error instead of being dead-lettered (as would every record after it).
#[test]
fn should_stop_at_a_type_mismatch_instead_of_dead_lettering_every_record() {
    struct Identity;
    impl Processor for Identity {
        fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
            ctx.forward(r);
            Ok(())
        }
    }
    let b = StreamsBuilder::new();
    // Declared as producing i64 values; it forwards the String it got.
    b.source("in")
        .process::<String, i64, _>(|| Identity, &[])
        .map_values(|n| n + 1)
        .to_topic("out");
    let mut d = TestDriver::new(b.build().unwrap(), "app");
    let err = d
        .try_pipe("in", Some(b"k"), Some(b"v"))
        .expect_err("a construction bug stops the topology");
    let text = err.to_string();
    assert!(
        text.contains("built wrong") && text.contains("type mismatch"),
        "{text}"
    );
    assert!(d.records("app-dlq").is_empty(), "nothing dead-lettered");
}
