//! W3C trace context: trace and span ids, and the `traceparent` / `tracestate` headers
//! that carry them between processes (and inside CloudEvents).
//!
//! `traceparent` is `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; the low bit of
//! the flags says whether the caller sampled the trace. A header of a later version is read
//! by its first four fields, as the specification asks; anything malformed is ignored
//! (the request is then a new trace), never an error.

use std::cell::Cell;
use std::fmt;

/// A trace's id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A new random id.
    pub fn random() -> Self {
        let (a, b) = (next_random(), next_random());
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&a.to_be_bytes());
        id[8..].copy_from_slice(&b.to_be_bytes());
        TraceId(id)
    }

    /// The low 8 bytes as a number, for ratio sampling (random in W3C's level 2 ids).
    pub fn low_u64(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    /// A new random id.
    pub fn random() -> Self {
        SpanId(next_random().to_be_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut text = String::with_capacity(bytes.len() * 2);
    push_hex(&mut text, bytes);
    f.write_str(&text)
}

/// Appends `bytes` in lowercase hex. Through `{:02x}` each byte would be a formatting call
/// of its own: some 7,000 instructions for one `traceparent`, which every traced request
/// writes (`docs/benchmarks.md`, "Tracing's price in instructions").
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Where a span stands in its trace: what travels in `traceparent` and `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Whether the trace is sampled (recorded and exported).
    pub sampled: bool,
    /// The vendors' `tracestate`, passed on as it came (empty: none).
    pub tracestate: String,
}

/// The longest `tracestate` passed on (the specification's limit is 32 members; 512 bytes
/// is what its propagators must accept).
const MAX_TRACESTATE: usize = 512;

impl SpanContext {
    /// Reads a `traceparent` header (and the `tracestate` that came with it); `None` when
    /// it is absent or malformed.
    pub fn from_headers(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest_ok = match version {
            // Version 00 has exactly four fields.
            "00" => parts.next().is_none(),
            // A later version may add fields; "ff" is forbidden.
            v => v.len() == 2 && v != "ff" && is_lower_hex(v),
        };
        if !rest_ok || version.len() != 2 || !is_lower_hex(version) {
            return None;
        }
        let trace_id = TraceId(decode::<16>(trace)?);
        let span_id = SpanId(decode::<8>(span)?);
        let [flags] = decode::<1>(flags)?;
        if trace_id.0 == [0; 16] || span_id.0 == [0; 8] {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| s.len() <= MAX_TRACESTATE && s.is_ascii())
            .unwrap_or_default()
            .to_string();
        Some(SpanContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            tracestate,
        })
    }

    /// The `traceparent` header naming this span as the parent.
    pub fn traceparent(&self) -> String {
        let mut tp = String::with_capacity(55);
        tp.push_str("00-");
        push_hex(&mut tp, &self.trace_id.0);
        tp.push('-');
        push_hex(&mut tp, &self.span_id.0);
        tp.push_str(if self.sampled { "-01" } else { "-00" });
        tp
    }

    /// A new span of the same trace, child of this one.
    pub fn child(&self, sampled: bool) -> SpanContext {
        SpanContext {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            sampled,
            tracestate: self.tracestate.clone(),
        }
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `N` bytes from `2N` lowercase hex digits; `None` for anything else. By hand rather than
/// with `u8::from_str_radix` per byte: every traced request reads a `traceparent`.
fn decode<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let hex = hex.as_bytes();
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

thread_local! {
    /// Per-thread generator state, seeded once from the operating system's randomness.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(seed) | 1
}

/// A fast non-zero random number (splitmix64). Ids need to be unique and unpredictable
/// enough to sample by, not secret; a system call per span would cost more than the span.
fn next_random() -> u64 {
    RNG.with(|state| {
        let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let n = z ^ (z >> 31);
        if n == 0 { 1 } else { n }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let ctx = SpanContext::from_headers(TP, Some("rojo=00f067aa0ba902b7")).expect("valid");
        assert!(ctx.sampled);
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.tracestate, "rojo=00f067aa0ba902b7");
        assert_eq!(ctx.traceparent(), TP);
        let unsampled = TP.replace("-01", "-00");
        assert!(
            !SpanContext::from_headers(&unsampled, None)
                .expect("valid")
                .sampled
        );
    }

    #[test]
    fn every_hex_digit_is_written_as_read() {
        let ctx = SpanContext {
            trace_id: TraceId([
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
                0x32, 0x10,
            ]),
            span_id: SpanId([0x0f, 0xf0, 0x00, 0xff, 0x5a, 0xa5, 0x01, 0x10]),
            sampled: false,
            tracestate: String::new(),
        };
        let tp = ctx.traceparent();
        assert_eq!(
            tp,
            "00-0123456789abcdeffedcba9876543210-0ff000ff5aa50110-00"
        );
        assert_eq!(SpanContext::from_headers(&tp, None), Some(ctx.clone()));
        assert_eq!(format!("{:?}", ctx.span_id), "0ff000ff5aa50110");
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for bad in [
            "",
            "00-abc-def-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(SpanContext::from_headers(bad, None), None, "{bad:?}");
        }
        // A later version may carry more fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(SpanContext::from_headers(v1, None).is_some());
    }

    #[test]
    fn children_keep_the_trace_and_get_new_span_ids() {
        let parent = SpanContext::from_headers(TP, None).expect("valid");
        let child = parent.child(true);
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_ne!(TraceId::random(), TraceId::random());
    }
}
