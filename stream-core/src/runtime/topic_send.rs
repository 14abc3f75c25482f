//! Sending an output record through librdkafka's `rd_kafka_produceva`,
//! with librdkafka's handle of each topic created once.
//!
//! rdkafka's `BaseProducer::send` copies the topic's name into a new
//! `CString` for every record (an allocation and a scan for NUL bytes),
//! and librdkafka then looks the name up in its list of topics under a
//! read lock. An instance writes to a handful of topics, and every record
//! of a sink or store shares that sink's or store's topic name
//! (`Arc<str>`), so [`TopicHandles`] keeps librdkafka's handle of each
//! topic, found by that shared name, and every send passes the handle.
//!
//! Everything else is what `BaseProducer::send` passes: key and value
//! copied (`RD_KAFKA_MSG_F_COPY`; `None` is a null key or value, an empty
//! vector an empty one), the partition or none (the partitioner decides),
//! the timestamp, the headers as one list, and the delivery opaque, which
//! rdkafka's delivery callback hands to the producer's context as before.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::bindings::rd_kafka_vtype_t as T;
use rdkafka::bindings::rd_kafka_vu_s__bindgen_ty_1 as U;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;

use super::polled_producer::PolledProducer;
use rdkafka::types::RDKafkaErrorCode;

use super::held::PackedHeaders;
use super::producer::DeliveryTracker;
use crate::record::OutRecord;

/// A record to send, borrowed: from an [`OutRecord`] or from the records
/// held during a transaction commit ([`super::held`]).
pub(crate) struct RecordView<'a> {
    /// Destination topic (the name shared with the sink or store).
    pub(crate) topic: &'a Arc<str>,
    /// Explicit partition, or `None` to let the partitioner decide.
    pub(crate) partition: Option<i32>,
    /// Key bytes; `None` is a null key.
    pub(crate) key: Option<&'a [u8]>,
    /// Value bytes; `None` is a tombstone.
    pub(crate) value: Option<&'a [u8]>,
    /// Headers.
    pub(crate) headers: HeaderView<'a>,
    /// Timestamp in milliseconds.
    pub(crate) timestamp: i64,
}

impl<'a> RecordView<'a> {
    /// A view of `r`.
    pub(crate) fn of(r: &'a OutRecord) -> Self {
        RecordView {
            topic: &r.topic,
            partition: r.partition,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: HeaderView::List(&r.headers),
            timestamp: r.timestamp,
        }
    }
}

/// A record's headers, as a list of its own or packed with held records.
#[derive(Clone, Copy)]
pub(crate) enum HeaderView<'a> {
    /// An [`OutRecord`]'s list.
    List(&'a [(String, Vec<u8>)]),
    /// Packed by [`super::held::HeldRecords`].
    Packed(PackedHeaders<'a>),
}

impl<'a> HeaderView<'a> {
    /// How many headers there are.
    pub(crate) fn len(&self) -> usize {
        match self {
            HeaderView::List(l) => l.len(),
            HeaderView::Packed(p) => p.len(),
        }
    }

    /// Each header's name and value, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let (list, packed) = match *self {
            HeaderView::List(l) => (
                Some(l.iter().map(|(n, v)| (n.as_bytes(), v.as_slice()))),
                None,
            ),
            HeaderView::Packed(p) => (None, Some(p.iter())),
        };
        list.into_iter()
            .flatten()
            .chain(packed.into_iter().flatten())
    }
}

/// `RD_KAFKA_PARTITION_UA` in rdkafka.h (the bindings leave the macro
/// out): the partitioner chooses.
const PARTITION_UNASSIGNED: i32 = -1;

/// librdkafka's handles of the topics a producer has written to.
pub(crate) struct TopicHandles {
    /// Holds the client while the handles live: they are destroyed first
    /// (in `drop`, before the fields), as librdkafka asks.
    producer: Arc<PolledProducer<DeliveryTracker>>,
    /// Topic name (shared with the records) → handle. A few entries, so a
    /// list; most lookups end at the first pointer comparison.
    topics: Vec<(Arc<str>, NonNull<rd::rd_kafka_topic_t>)>,
    /// Repartition topics' records never time out (see
    /// [`Self::with_endless_repartition`]).
    endless_repartition: bool,
}

// SAFETY: librdkafka's topic handles may be used and destroyed from any
// thread; the list itself is only touched through `&mut self`.
unsafe impl Send for TopicHandles {}

impl TopicHandles {
    /// No handles yet, for `producer`.
    pub(crate) fn new(producer: Arc<PolledProducer<DeliveryTracker>>) -> Self {
        TopicHandles {
            producer,
            topics: Vec::new(),
            endless_repartition: false,
        }
    }

    /// At-least-once: a repartition topic's handle (a topic whose records
    /// carry the `sx.up` mark) holds its records until delivered, whatever
    /// the producer's `message.timeout.ms`.
    ///
    /// A downstream task drops a repartition record whose upstream mark it
    /// has passed, which is exact only if each partition's records arrive
    /// as a prefix of what was sent. A record that times out while later
    /// ones are still queued (a broker away longer than the timeout) would
    /// leave a hole behind records that are delivered, and the replay after
    /// the rollback would fill it with records the downstream drops as
    /// already applied. So these records wait; the other topics' records
    /// time out, and the rollback that follows sends the repartition
    /// records again, which the downstream drops as duplicates.
    pub(crate) fn with_endless_repartition(mut self) -> Self {
        self.endless_repartition = true;
        self
    }

    /// Hands `record` to librdkafka with `opaque` as its delivery opaque;
    /// the record's bytes are copied. The error is librdkafka's refusal
    /// (a full queue, a record too large, a fatal producer), as
    /// `KafkaError::MessageProduction`, or a topic name librdkafka cannot
    /// take.
    pub(crate) fn send(
        &mut self,
        record: &RecordView<'_>,
        opaque: usize,
    ) -> Result<(), KafkaError> {
        let rkt = self.handle(record)?;
        let headers = NativeHeaders::of(&record.headers)?;
        let args = [
            vu(T::RD_KAFKA_VTYPE_RKT, U { rkt: rkt.as_ptr() }),
            vu(
                T::RD_KAFKA_VTYPE_PARTITION,
                U {
                    i32_: record.partition.unwrap_or(PARTITION_UNASSIGNED),
                },
            ),
            vu(
                T::RD_KAFKA_VTYPE_MSGFLAGS,
                U {
                    i: rd::RD_KAFKA_MSG_F_COPY,
                },
            ),
            vu(T::RD_KAFKA_VTYPE_VALUE, mem(record.value)),
            vu(T::RD_KAFKA_VTYPE_KEY, mem(record.key)),
            vu(
                T::RD_KAFKA_VTYPE_OPAQUE,
                U {
                    ptr: opaque as *mut std::ffi::c_void,
                },
            ),
            vu(
                T::RD_KAFKA_VTYPE_TIMESTAMP,
                U {
                    i64_: record.timestamp,
                },
            ),
            vu(
                T::RD_KAFKA_VTYPE_HEADERS,
                U {
                    headers: headers.as_ptr(),
                },
            ),
        ];
        // No headers: the entry is left out (librdkafka then keeps none).
        let args: &[rd::rd_kafka_vu_t] = if headers.is_none() {
            &args[..args.len() - 1]
        } else {
            &args
        };
        // SAFETY: the client lives (held by `self.producer`); every
        // pointer in `args` points into `record`, `headers` or the topic
        // handle, all alive for the call, and librdkafka copies the key
        // and value (`RD_KAFKA_MSG_F_COPY`).
        let error = unsafe {
            rd::rd_kafka_produceva(
                self.producer.client().native_ptr(),
                args.as_ptr(),
                args.len(),
            )
        };
        if error.is_null() {
            // The message owns the list now.
            headers.give_away();
            return Ok(());
        }
        // SAFETY: `error` is librdkafka's, read once and destroyed once.
        // On an error the headers stay ours (dropped below).
        let code = unsafe {
            let code = rd::rd_kafka_error_code(error);
            rd::rd_kafka_error_destroy(error);
            code
        };
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(code)))
    }

    /// The handle of `topic`, created on its first record.
    fn handle(
        &mut self,
        record: &RecordView<'_>,
    ) -> Result<NonNull<rd::rd_kafka_topic_t>, KafkaError> {
        let topic = record.topic;
        if let Some((_, h)) = self
            .topics
            .iter()
            .find(|(t, _)| Arc::ptr_eq(t, topic) || **t == **topic)
        {
            return Ok(*h);
        }
        let name = CString::new(topic.as_bytes())?;
        let endless = self.endless_repartition
            && record
                .headers
                .iter()
                .any(|(k, _)| k == crate::task::headers::UPSTREAM_HEADER.as_bytes());
        let rk = self.producer.client().native_ptr();
        let conf = if endless {
            endless_conf(rk)
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: a live client and a NUL-terminated name; a null
        // configuration takes the producer's topic defaults, as a send by
        // name does; a configuration given is librdkafka's to own.
        let raw = unsafe { rd::rd_kafka_topic_new(rk, name.as_ptr(), conf) };
        let Some(h) = NonNull::new(raw) else {
            // SAFETY: reads the calling thread's last librdkafka error.
            let code = unsafe { rd::rd_kafka_last_error() };
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(code)));
        };
        self.topics.push((Arc::clone(topic), h));
        Ok(h)
    }

    /// Topics with a handle.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.topics.len()
    }
}

impl Drop for TopicHandles {
    fn drop(&mut self) {
        for (_, h) in self.topics.drain(..) {
            // SAFETY: created by `rd_kafka_topic_new` on a client that is
            // still alive (`self.producer` drops after this), destroyed once.
            unsafe { rd::rd_kafka_topic_destroy(h.as_ptr()) };
        }
    }
}

/// One argument of `rd_kafka_produceva`.
fn vu(vtype: T, u: U) -> rd::rd_kafka_vu_t {
    rd::rd_kafka_vu_t { vtype, u }
}

/// A key or value argument: a null pointer for `None`.
fn mem(bytes: Option<&[u8]>) -> U {
    let (ptr, size) = match bytes {
        None => (std::ptr::null_mut(), 0),
        Some(b) => (b.as_ptr() as *mut std::ffi::c_void, b.len()),
    };
    U {
        mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 { ptr, size },
    }
}

/// A librdkafka header list being built for one record; destroyed unless
/// a sent message took it. (rdkafka's `OwnedHeaders` is the same list, but
/// it does not hand out its pointer outside rdkafka.)
struct NativeHeaders(Option<NonNull<rd::rd_kafka_headers_t>>);

impl NativeHeaders {
    /// The list of `headers` (none for none: librdkafka allocates a list
    /// even when it is empty).
    fn of(headers: &HeaderView<'_>) -> Result<Self, KafkaError> {
        if headers.len() == 0 {
            return Ok(NativeHeaders(None));
        }
        // SAFETY: allocates an empty list.
        let raw = unsafe { rd::rd_kafka_headers_new(headers.len()) };
        let list = NativeHeaders(NonNull::new(raw));
        let Some(p) = list.0 else {
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
        };
        for (name, value) in headers.iter() {
            // SAFETY: `p` is the list just made; librdkafka copies the name
            // and value (lengths given, so no NUL is needed).
            let err = unsafe {
                rd::rd_kafka_header_add(
                    p.as_ptr(),
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value.as_ptr().cast(),
                    value.len() as isize,
                )
            };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(err)));
            }
        }
        Ok(list)
    }

    fn is_none(&self) -> bool {
        self.0.is_none()
    }

    fn as_ptr(&self) -> *mut rd::rd_kafka_headers_t {
        self.0.map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }

    /// The list now belongs to a message: not destroyed here.
    fn give_away(mut self) {
        self.0 = None;
    }
}

impl Drop for NativeHeaders {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // SAFETY: a list we made and nobody took.
            unsafe { rd::rd_kafka_headers_destroy(p.as_ptr()) };
        }
    }
}

/// A copy of the producer's topic defaults (acks, partitioner, …) with
/// `message.timeout.ms` 0: records wait for delivery however long. Null
/// (the defaults as they are) if librdkafka refuses the setting.
fn endless_conf(rk: *mut rd::rd_kafka_t) -> *mut rd::rd_kafka_topic_conf_t {
    // SAFETY: `rk` is a live client; the copy is ours until handed to
    // `rd_kafka_topic_new` (or destroyed here), and every string passed
    // is NUL-terminated and outlives the call.
    unsafe {
        let conf = rd::rd_kafka_default_topic_conf_dup(rk);
        if conf.is_null() {
            return conf;
        }
        let mut err = [0 as std::ffi::c_char; 256];
        let set = rd::rd_kafka_topic_conf_set(
            conf,
            c"message.timeout.ms".as_ptr(),
            c"0".as_ptr(),
            err.as_mut_ptr(),
            err.len(),
        );
        if set != rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK {
            rd::rd_kafka_topic_conf_destroy(conf);
            return std::ptr::null_mut();
        }
        conf
    }
}
