use std::sync::Arc;

use super::*;
use crate::data::downcast_ref;
use crate::graph::{TopicRef, TopologyBuilder};
use crate::processor::{Context, Processor};
use crate::record::Record;
use crate::serde::{erase, StringSerde};
use crate::{KeyValueStore, ProcessError};

/// Remembers keys; on punctuation forwards how many it has seen.
struct Tally;
impl Processor for Tally {
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let k = downcast_ref::<String>(&r.key, "tally")?.clone();
        ctx.store("seen")?.put(k.as_bytes(), vec![1])?;
        Ok(())
    }
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(1000, crate::processor::PunctuationType::WallClock);
        Ok(())
    }
    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        p: crate::processor::Punctuation,
    ) -> Result<(), ProcessError> {
        let now_ms = p.time;
        let n = ctx.store("seen")?.scan_prefix(b"")?.len();
        ctx.forward(Record::new(
            Box::new(format!("t{now_ms}")),
            Box::new(n.to_string()),
            now_ms,
        ));
        Ok(())
    }
}

#[test]
fn should_punctuate_processors_when_time_advances() {
    let s = || erase::<String>(Arc::new(StringSerde));
    let mut b = TopologyBuilder::new();
    let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
    b.add_store(crate::graph::StoreSpec {
        retention_ms: None,
        window: None,
        name: "seen".into(),
        changelog: crate::graph::Changelog::Internal,
        format: None,
    });
    let p = b.add_processor(
        "tally",
        Arc::new(|| Box::new(Tally) as Box<dyn Processor>),
        &[src],
        vec!["seen".into()],
    );
    b.add_sink(
        "out",
        TopicRef::External("out".into()),
        s(),
        s(),
        None,
        &[p],
    );
    let mut d = TestDriver::new(b.build().unwrap(), "app");
    d.pipe_str("in", "a", "x");
    d.pipe_str("in", "b", "x");
    assert!(
        d.output_utf8("out").is_empty(),
        "nothing before punctuation"
    );
    d.advance_time(1000);
    assert_eq!(
        d.output_utf8("out"),
        vec![("t1002".to_string(), "2".to_string())]
    );
}
