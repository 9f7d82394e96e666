//! Envoy's rate limit service protocol (`envoy.service.ratelimit.v3`), the two messages a
//! global rule exchanges, encoded and decoded by hand in protobuf's wire format (a few
//! fields; no codegen or protobuf runtime in the module). Unknown response fields are
//! skipped, as protobuf requires.

/// The gRPC service and method a global rule calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitResponse.Code`.
pub const CODE_OK: u64 = 1;
pub const CODE_OVER_LIMIT: u64 = 2;

/// A limit a descriptor carries itself (`RateLimitOverride`): `unit` is the protocol's
/// `RateLimitResponse.RateLimit.Unit` (1 second, 2 minute, 3 hour, 4 day).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub requests_per_unit: u32,
    pub unit: u32,
}

/// One descriptor: its entries and optional override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, Vec<u8>)>,
    pub limit: Option<Override>,
    /// The descriptor's own `hits_addend` (lease mode), when not the request's.
    pub hits: Option<u64>,
}

/// The unit of a window, when it is exactly one of the protocol's units.
pub fn unit_of(window_secs: u64) -> Option<u32> {
    match window_secs {
        1 => Some(1),
        60 => Some(2),
        3600 => Some(3),
        86_400 => Some(4),
        _ => None,
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    tag(out, field, 2);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// A descriptor value as protobuf's `string` requires (UTF-8): as it is when valid, else
/// U+FFFD, `hex:` and the bytes in hex, so distinct byte strings stay distinct.
fn utf8_value(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if std::str::from_utf8(value).is_ok() {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = "\u{fffd}hex:".as_bytes().to_vec();
    for b in value {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    std::borrow::Cow::Owned(out)
}

/// `RateLimitRequest { domain, descriptors, hits_addend }`.
pub fn encode_request(domain: &str, descriptors: &[Descriptor], hits_addend: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    bytes_field(&mut out, 1, domain.as_bytes());
    for d in descriptors {
        let mut desc = Vec::with_capacity(48);
        for (key, value) in &d.entries {
            let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
            bytes_field(&mut entry, 1, key.as_bytes());
            bytes_field(&mut entry, 2, &utf8_value(value));
            bytes_field(&mut desc, 1, &entry);
        }
        if let Some(limit) = d.limit {
            let mut o = Vec::new();
            tag(&mut o, 1, 0);
            varint(&mut o, u64::from(limit.requests_per_unit));
            tag(&mut o, 2, 0);
            varint(&mut o, u64::from(limit.unit));
            bytes_field(&mut desc, 2, &o);
        }
        if let Some(hits) = d.hits {
            // google.protobuf.UInt64Value { value = 1 }
            let mut v = Vec::new();
            tag(&mut v, 1, 0);
            varint(&mut v, hits);
            bytes_field(&mut desc, 3, &v);
        }
        bytes_field(&mut out, 2, &desc);
    }
    if hits_addend > 0 {
        tag(&mut out, 3, 0);
        varint(&mut out, u64::from(hits_addend));
    }
    out
}

/// One `DescriptorStatus` of the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub code: u64,
    /// `current_limit` (requests_per_unit, unit), when the service sent one.
    pub limit: Option<(u64, u64)>,
    pub remaining: u64,
    /// `duration_until_reset` in nanoseconds.
    pub reset_ns: Option<u64>,
}

/// The answer: `overall_code` and the statuses in descriptor order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub overall: u64,
    pub statuses: Vec<Status>,
}

/// Reads protobuf fields: (field number, wire type, varint value or bytes).
struct Fields<'a> {
    bytes: &'a [u8],
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Fields<'a> {
    fn read_varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The next field; Some(Err) on malformed input.
    fn next_field(&mut self) -> Option<Result<(u64, Value<'a>), ()>> {
        if self.bytes.is_empty() {
            return None;
        }
        let Some(key) = self.read_varint() else {
            return Some(Err(()));
        };
        let value = match key & 7 {
            0 => match self.read_varint() {
                Some(v) => Value::Varint(v),
                None => return Some(Err(())),
            },
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if self.bytes.len() < n {
                    return Some(Err(()));
                }
                self.bytes = &self.bytes[n..];
                Value::Fixed
            }
            2 => {
                let Some(len) = self.read_varint() else {
                    return Some(Err(()));
                };
                let Ok(len) = usize::try_from(len) else {
                    return Some(Err(()));
                };
                if self.bytes.len() < len {
                    return Some(Err(()));
                }
                let (v, rest) = self.bytes.split_at(len);
                self.bytes = rest;
                Value::Bytes(v)
            }
            _ => return Some(Err(())),
        };
        Some(Ok((key >> 3, value)))
    }
}

fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { bytes }
}

/// Decodes a `RateLimitResponse`; None when it is malformed.
pub fn decode_response(bytes: &[u8]) -> Option<Answer> {
    let mut answer = Answer::default();
    let mut f = fields(bytes);
    while let Some(field) = f.next_field() {
        match field.ok()? {
            (1, Value::Varint(v)) => answer.overall = v,
            (2, Value::Bytes(b)) => answer.statuses.push(decode_status(b)?),
            _ => {}
        }
    }
    Some(answer)
}

fn decode_status(bytes: &[u8]) -> Option<Status> {
    let mut status = Status::default();
    let mut f = fields(bytes);
    while let Some(field) = f.next_field() {
        match field.ok()? {
            (1, Value::Varint(v)) => status.code = v,
            (2, Value::Bytes(b)) => {
                let (mut rpu, mut unit) = (0, 0);
                let mut g = fields(b);
                while let Some(field) = g.next_field() {
                    match field.ok()? {
                        (1, Value::Varint(v)) => rpu = v,
                        (2, Value::Varint(v)) => unit = v,
                        _ => {}
                    }
                }
                status.limit = Some((rpu, unit));
            }
            (3, Value::Varint(v)) => status.remaining = v,
            (4, Value::Bytes(b)) => {
                let (mut secs, mut nanos) = (0u64, 0u64);
                let mut g = fields(b);
                while let Some(field) = g.next_field() {
                    match field.ok()? {
                        (1, Value::Varint(v)) => secs = v,
                        (2, Value::Varint(v)) => nanos = v & 0xffff_ffff,
                        _ => {}
                    }
                }
                // Negative durations (two's complement) mean nothing useful: zero.
                let ns = if secs >> 63 == 1 {
                    0
                } else {
                    secs.saturating_mul(1_000_000_000)
                        .saturating_add(nanos.min(999_999_999))
                };
                status.reset_ns = Some(ns);
            }
            _ => {}
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_that_are_not_utf8_are_sent_as_hex() {
        assert_eq!(&*utf8_value(b"caf\xc3\xa9"), "café".as_bytes());
        assert_eq!(&*utf8_value(b"\xff\x00"), "\u{fffd}hex:ff00".as_bytes());
    }

    #[test]
    fn varints_match_protobufs_examples() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let mut f = fields(&out);
        assert_eq!(f.read_varint(), Some(300));
    }

    proptest! {
        #[test]
        fn malformed_answers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_response(&bytes);
        }
    }
}
