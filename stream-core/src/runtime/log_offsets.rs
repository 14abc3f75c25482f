//! Log offsets of many partitions at once: one ListOffsets request per
//! broker for all of them, where `fetch_watermarks` costs a round trip per
//! partition (two requests each).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

/// The log-start (`which` = [`Offset::Beginning`]) or log-end
/// ([`Offset::End`]) offsets of `parts`, as numbers, read in one request per
/// broker (a ListOffsets "timestamp" of -2 or -1; the end is the last stable
/// offset under `read_committed`, as `fetch_watermarks` gives it). A
/// partition missing from the answer (or every partition, when the request
/// fails) is missing from the map: the caller reads it on its own.
pub(crate) fn list(
    consumer: &BaseConsumer<impl ConsumerContext>,
    parts: &[(String, i32)],
    which: Offset,
) -> HashMap<(String, i32), i64> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        if tpl.add_partition_offset(t, *p, which).is_err() {
            return HashMap::new();
        }
    }
    if tpl.count() == 0 {
        return HashMap::new();
    }
    let found = match consumer.offsets_for_times(tpl, Duration::from_secs(5)) {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, offsets = ?which, "log offsets not known; read per partition or sought logically");
            return HashMap::new();
        }
    };
    let mut offsets = HashMap::new();
    for (t, p) in parts {
        if let Some(Offset::Offset(at)) = found
            .find_partition(t, *p)
            .filter(|e| e.error().is_ok())
            .map(|e| e.offset())
        {
            offsets.insert((t.clone(), *p), at);
        }
    }
    offsets
}

/// The log start and end of each of `parts` (see [`list`]), in two requests;
/// a partition missing from either answer is missing from the map.
pub(crate) fn bounds(
    consumer: &BaseConsumer<impl ConsumerContext>,
    parts: &[(String, i32)],
) -> HashMap<(String, i32), (i64, i64)> {
    let starts = list(consumer, parts, Offset::Beginning);
    if starts.is_empty() {
        return HashMap::new();
    }
    let ends = list(consumer, parts, Offset::End);
    starts
        .into_iter()
        .filter_map(|(k, low)| ends.get(&k).map(|&high| (k, (low, high))))
        .collect()
}
