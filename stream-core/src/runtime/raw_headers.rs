//! Copying a consumed record's headers out of the record's own bytes.
//!
//! librdkafka keeps a fetched record's headers as the raw bytes of the
//! record format (a count, then each header's name and value, lengths as
//! zigzag varints) and parses them on the first `rd_kafka_message_headers`
//! call. Each parse sets up a shadow buffer around the bytes (an
//! allocation of librdkafka's large buffer struct, a buffer segment and a
//! mutex for its reference count) and tears it down again, and builds a
//! header list with an allocation per header, even when the count it reads
//! is 0. Restore reads the headers of every changelog record (its marks
//! say which records may be applied): on a 1,000,000-record restore the
//! parse was 8% of the process's samples and a fifth of the restorer
//! thread's, which is the thread a restore waits for.
//!
//! [`copy_headers`] reads where the raw bytes are from librdkafka's message
//! struct and decodes them itself, into the caller's buffers, allocating
//! nothing once those are large enough. Whatever it does not read cleanly
//! (an unusual count, a truncated header, a message whose headers were
//! already parsed) goes to librdkafka's parse, as does every record when
//! the check below fails.
//!
//! The struct is librdkafka's internal `rd_kafka_msg_t` (`rdkafka_msg.h`),
//! whose head is mirrored here ([`MsgHead`]). It is read only when the
//! linked librdkafka is the release the mirror was written against
//! ([`MIRRORED_VERSION`], the one `rdkafka-sys` bundles), and the first
//! [`CHECKED`] records of each process are read both ways and compared; a
//! disagreement turns the raw read off for good, with an error in the log.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use rdkafka::bindings as rd;

use super::batch::bytes;

/// The librdkafka release whose `rd_kafka_msg_t` [`MsgHead`] mirrors,
/// as `rd_kafka_version()` gives it without the pre-release byte
/// (major, minor, revision: 2.12.1).
const MIRRORED_VERSION: c_int = 0x02_0c_01;

/// How many records are read both ways, and compared, before the raw
/// read is trusted.
const CHECKED: u32 = 256;

/// `RD_KAFKA_MSG_F_PRODUCER` (`rdkafka_msg.h`): a message being produced,
/// whose headers are never raw bytes.
const MSG_F_PRODUCER: c_int = 0x40000;

/// librdkafka's limit on a record's header count (`rdkafka_msg.c`): a
/// larger count is a malformed record.
const MAX_HEADERS: i64 = 100_000;

/// The head of librdkafka 2.12.1's `rd_kafka_msg_t`, up to the consumer's
/// raw header bytes (`rkm_u.consumer.binhdrs`, a `rd_kafkap_bytes_t`
/// whose first fields are a length and a pointer).
#[repr(C)]
struct MsgHead {
    /// `rkm_rkmessage`: the public message, its first field.
    message: rd::rd_kafka_message_t,
    /// `rkm_link`: a `TAILQ_ENTRY`, two pointers.
    link: [*mut c_void; 2],
    /// `rkm_flags`.
    flags: c_int,
    /// `rkm_tstype`, an enum.
    tstype: c_int,
    /// `rkm_timestamp`.
    timestamp: i64,
    /// `rkm_headers`: the parsed headers, once parsed.
    headers: *mut c_void,
    /// `rkm_status`, an enum.
    status: c_int,
    /// `rkm_broker_id`.
    broker_id: i32,
    /// `rkm_u.consumer.binhdrs.len`: bytes of raw headers (-1: none).
    binhdrs_len: i32,
    /// `rkm_u.consumer.binhdrs.data`.
    binhdrs_data: *const u8,
}

/// Whether the raw read may be used: 0 not decided yet, 1 yes, 2 no.
static USABLE: AtomicU8 = AtomicU8::new(0);

/// Records read both ways so far.
static COMPARED: AtomicU32 = AtomicU32::new(0);

/// Copies the headers of `msg`, a consumed record, into `into`, reusing
/// the strings and byte buffers already there; returns how many there
/// are: the headers are `into[..n]`. A header name that is not UTF-8 is
/// copied lossily; a header without a value copies as empty bytes.
///
/// # Safety
///
/// `msg` must be a live message a consumer handed out (by `poll` or a
/// batch read), not one being produced, used by this thread alone.
pub(crate) unsafe fn copy_headers(
    msg: *const rd::rd_kafka_message_t,
    into: &mut Vec<(String, Vec<u8>)>,
) -> usize {
    // SAFETY: the caller's promise.
    let Some(n) = (unsafe { copy_raw(msg, into) }) else {
        // SAFETY: the caller's promise.
        return unsafe { copy_parsed(msg, into) };
    };
    if COMPARED.load(Ordering::Relaxed) < CHECKED {
        COMPARED.fetch_add(1, Ordering::Relaxed);
        let mut parsed = Vec::new();
        // SAFETY: the caller's promise.
        let m = unsafe { copy_parsed(msg, &mut parsed) };
        if parsed[..m] != into[..n] {
            USABLE.store(2, Ordering::Relaxed);
            tracing::error!(
                raw = n,
                librdkafka = m,
                "record headers read from the record's bytes differ from librdkafka's parse; librdkafka's message layout is not the one this build expects, so its parse is used from now on"
            );
            // SAFETY: the caller's promise.
            return unsafe { copy_parsed(msg, into) };
        }
    }
    n
}

/// The headers from the raw bytes librdkafka keeps for `msg`; `None`
/// when librdkafka's parse must decide.
///
/// # Safety
///
/// As [`copy_headers`].
unsafe fn copy_raw(
    msg: *const rd::rd_kafka_message_t,
    into: &mut Vec<(String, Vec<u8>)>,
) -> Option<usize> {
    if !usable() {
        return None;
    }
    // SAFETY: librdkafka hands out every consumed message as the first
    // field of an `rd_kafka_msg_t` (its own `rd_kafka_message2msg` is this
    // cast); the linked release is the one mirrored (`usable`).
    let head = unsafe { &*msg.cast::<MsgHead>() };
    if !head.headers.is_null() || head.flags & MSG_F_PRODUCER != 0 {
        return None;
    }
    let len = usize::try_from(head.binhdrs_len).ok()?;
    if len == 0 {
        return Some(0);
    }
    // `binhdrs_len` bytes at `binhdrs_data` lie in the message's fetch
    // buffer, which lives as long as the message.
    decode(bytes(head.binhdrs_data, len)?, into)
}

/// Decodes a record's raw headers (the record format's count, then each
/// header's name and value with zigzag-varint lengths, -1 for a header
/// without a value) into `into`, as librdkafka's parse reads them; `None`
/// for bytes it would refuse.
fn decode(mut bytes: &[u8], into: &mut Vec<(String, Vec<u8>)>) -> Option<usize> {
    let count = varint(&mut bytes)?;
    if count <= 0 {
        return Some(0);
    }
    if count > MAX_HEADERS {
        return None;
    }
    let count = usize::try_from(count).ok()?;
    for n in 0..count {
        let name_len = varint(&mut bytes)?;
        let name = take(&mut bytes, name_len)?;
        let value = match varint(&mut bytes)? {
            -1 => &[][..],
            len => take(&mut bytes, len)?,
        };
        // librdkafka keeps a name NUL-terminated: it ends at a NUL.
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        put(into, n, &name[..end], value);
    }
    Some(count)
}

/// A zigzag varint (the record format's signed lengths) off the front of
/// `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<i64> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some((n >> 1) as i64 ^ -((n & 1) as i64));
        }
    }
    None
}

/// `len` bytes off the front of `bytes`; `None` if fewer are left or
/// `len` is negative.
fn take<'a>(bytes: &mut &'a [u8], len: i64) -> Option<&'a [u8]> {
    let len = usize::try_from(len).ok()?;
    if len > bytes.len() {
        return None;
    }
    let (head, rest) = bytes.split_at(len);
    *bytes = rest;
    Some(head)
}

/// Sets header `n` of `into` to `name` (lossily if it is not UTF-8) and
/// `value`, reusing the string and byte buffer already there (`into` holds
/// at least `n` headers). Records of one topic mostly carry the same names
/// in the same order: a name whose bytes equal the one in place is kept,
/// without checking it as UTF-8 again.
fn put(into: &mut Vec<(String, Vec<u8>)>, n: usize, name: &[u8], value: &[u8]) {
    if n == into.len() {
        into.push((String::new(), Vec::new()));
    }
    let (k, v) = &mut into[n];
    if k.as_bytes() != name {
        k.clear();
        k.push_str(&String::from_utf8_lossy(name));
    }
    v.clear();
    v.extend_from_slice(value);
}

/// The headers of `msg` through librdkafka's own parse.
///
/// # Safety
///
/// As [`copy_headers`].
unsafe fn copy_parsed(
    msg: *const rd::rd_kafka_message_t,
    into: &mut Vec<(String, Vec<u8>)>,
) -> usize {
    let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: a live consumed message; the header list it gives back
    // belongs to the message and lives as long.
    let err = unsafe { rd::rd_kafka_message_headers(msg, &mut hdrs) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return 0;
    }
    let mut n = 0;
    loop {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `hdrs` is the message's header list; `n` counts up
        // from 0 until librdkafka says there is no such header.
        let err = unsafe { rd::rd_kafka_header_get_all(hdrs, n, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: librdkafka's header names are NUL-terminated.
        let name = unsafe { CStr::from_ptr(name) };
        let value = bytes(value.cast(), size).unwrap_or_default();
        put(into, n, name.to_bytes(), value);
        n += 1;
    }
    n
}

/// Whether the linked librdkafka is the mirrored release and no record
/// read both ways has disagreed: headers are read from the records' bytes.
pub(crate) fn usable() -> bool {
    match USABLE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            // SAFETY: a plain query of the linked library.
            let version = unsafe { rd::rd_kafka_version() };
            let ok = version >> 8 == MIRRORED_VERSION;
            if !ok {
                tracing::debug!(version = format!("{version:#x}"), "librdkafka is not the release whose message layout is known: record headers are read through its own parse");
            }
            // A disagreement found meanwhile stays.
            let _ = USABLE.compare_exchange(
                0,
                if ok { 1 } else { 2 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            USABLE.load(Ordering::Relaxed) == 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` as a zigzag varint.
    fn zigzag(v: i64, out: &mut Vec<u8>) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// Raw header bytes as the record format writes them.
    fn raw(headers: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
        let mut out = Vec::new();
        zigzag(headers.len() as i64, &mut out);
        for (k, v) in headers {
            zigzag(k.len() as i64, &mut out);
            out.extend_from_slice(k);
            match v {
                Some(v) => {
                    zigzag(v.len() as i64, &mut out);
                    out.extend_from_slice(v);
                }
                None => zigzag(-1, &mut out),
            }
        }
        out
    }

    #[test]
    fn should_mirror_the_bundled_librdkafka() {
        // The crate bundles the mirrored release; a new one must have its
        // `rd_kafka_msg_t` compared with `MsgHead` again before this
        // constant moves.
        // SAFETY: a plain query of the linked library.
        let version = unsafe { rd::rd_kafka_version() };
        assert!(usable(), "linked librdkafka {version:#x}");
        // The raw header bytes sit where librdkafka 2.12.1 keeps them on
        // a 64-bit target (after the 72-byte public message).
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::offset_of!(MsgHead, binhdrs_len), 120);
    }

    #[test]
    fn should_decode_headers_as_the_record_format_writes_them() {
        let long = vec![b'x'; 300];
        let bytes = raw(&[
            (b"sx.src", Some(&[0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, b't'])),
            (b"empty", Some(b"")),
            (b"none", None),
            (&long, Some(&long)),
        ]);
        // Buffers left from a longer record are reused and overwritten.
        let mut into = vec![("old".to_string(), b"old".to_vec()); 6];
        assert_eq!(decode(&bytes, &mut into), Some(4));
        assert_eq!(into[0].0, "sx.src");
        assert_eq!(into[0].1, [0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, b't']);
        assert_eq!((into[1].0.as_str(), into[1].1.len()), ("empty", 0));
        assert_eq!((into[2].0.as_str(), into[2].1.len()), ("none", 0));
        assert_eq!((into[3].0.len(), into[3].1.len()), (300, 300));
        // No headers: a count of 0 (or below, as librdkafka reads it).
        assert_eq!(decode(&raw(&[]), &mut into), Some(0));
        let mut minus = Vec::new();
        zigzag(-3, &mut minus);
        assert_eq!(decode(&minus, &mut into), Some(0));
    }

    #[test]
    fn should_keep_a_repeated_name_and_replace_a_changed_one() {
        let mut into = Vec::new();
        assert_eq!(decode(&raw(&[(b"sx.src", Some(b"1"))]), &mut into), Some(1));
        // The same name again keeps its string; the value is new.
        assert_eq!(decode(&raw(&[(b"sx.src", Some(b"2"))]), &mut into), Some(1));
        assert_eq!(
            (into[0].0.as_str(), into[0].1.as_slice()),
            ("sx.src", &b"2"[..])
        );
        // A name of the same length but other bytes replaces it.
        assert_eq!(decode(&raw(&[(b"sx.dst", Some(b"3"))]), &mut into), Some(1));
        assert_eq!(into[0].0, "sx.dst");
        // A name that is not UTF-8 is copied lossily, also after a name
        // whose bytes equal its lossy form's.
        into[0].0 = "a\u{fffd}".to_string();
        assert_eq!(decode(&raw(&[(b"a\xff", Some(b"4"))]), &mut into), Some(1));
        assert_eq!(into[0].0, "a\u{fffd}");
        // A name cut at a NUL, as librdkafka keeps names.
        assert_eq!(decode(&raw(&[(b"ab\0c", None)]), &mut into), Some(1));
        assert_eq!(into[0].0, "ab");
        assert_eq!(decode(&raw(&[(b"ab", None)]), &mut into), Some(1));
        assert_eq!(into[0].0, "ab");
    }

    #[test]
    fn should_leave_bytes_librdkafka_would_refuse_to_its_parse() {
        let mut into = Vec::new();
        let good = raw(&[(b"a", Some(b"bc"))]);
        // Truncated anywhere: in the count, a name, a length or a value.
        for cut in 0..good.len() {
            assert_eq!(decode(&good[..cut], &mut into), None, "cut at {cut}");
        }
        // A count over librdkafka's limit, a negative name length, a
        // varint longer than ten bytes.
        let mut many = Vec::new();
        zigzag(MAX_HEADERS + 1, &mut many);
        assert_eq!(decode(&many, &mut into), None);
        let mut negative = Vec::new();
        zigzag(1, &mut negative);
        zigzag(-2, &mut negative);
        assert_eq!(decode(&negative, &mut into), None);
        assert_eq!(decode(&[0xff; 11], &mut into), None);
    }

    #[test]
    fn should_end_a_name_at_a_nul_and_read_other_bytes_lossily() {
        let mut into = Vec::new();
        let bytes = raw(&[(b"ab\0cd", Some(b"v")), (b"\xffz", Some(b"w"))]);
        assert_eq!(decode(&bytes, &mut into), Some(2));
        assert_eq!(into[0].0, "ab");
        assert_eq!(into[1].0, "\u{fffd}z");
    }
}
