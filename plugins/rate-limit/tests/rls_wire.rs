//! Our hand-written RLS wire format against the protocol's generated types (prost): what we
//! encode decodes to the same request, what a service encodes we decode to the same answer.

#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{Duration, UInt64Value};
use proptest::prelude::*;
use prost::Message;
use rate_limit::rls::{decode_response, encode_request, Descriptor, Override};

fn entries() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-z_:-]{1,12}", "[ -~]{0,40}"), 0..4)
}

proptest! {
    #[test]
    fn requests_decode_as_the_protocol_says(
        domain in "[a-z]{1,12}",
        descs in prop::collection::vec((entries(), prop::option::of((1u32..100_000, 1u32..5)), prop::option::of(1u64..1000)), 1..4),
        hits in 0u32..1000,
    ) {
        let ours: Vec<Descriptor> = descs
            .iter()
            .map(|(e, l, h)| Descriptor {
                entries: e.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect(),
                limit: l.map(|(rpu, unit)| Override { requests_per_unit: rpu, unit }),
                hits: *h,
            })
            .collect();
        let decoded = RateLimitRequest::decode(encode_request(&domain, &ours, hits).as_slice()).unwrap();
        let expected = RateLimitRequest {
            domain: domain.clone(),
            descriptors: descs
                .iter()
                .map(|(e, l, h)| RateLimitDescriptor {
                    entries: e.iter().map(|(k, v)| Entry { key: k.clone(), value: v.clone() }).collect(),
                    limit: l.map(|(rpu, unit)| RateLimitOverride { requests_per_unit: rpu, unit: unit as i32 }),
                    hits_addend: h.map(|value| UInt64Value { value }),
                    ..Default::default()
                })
                .collect(),
            hits_addend: hits,
        };
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn answers_decode_as_the_service_encoded_them(
        overall in 0i32..3,
        statuses in prop::collection::vec(
            (0i32..3, prop::option::of((1u32..1_000_000, 1i32..5)), 0u32..1_000_000, prop::option::of((0i64..100_000, 0i32..999_999_999))),
            0..5),
    ) {
        let response = RateLimitResponse {
            overall_code: overall,
            statuses: statuses
                .iter()
                .map(|(code, limit, remaining, reset)| DescriptorStatus {
                    code: *code,
                    current_limit: limit.map(|(rpu, unit)| RateLimit { name: "n".into(), requests_per_unit: rpu, unit }),
                    limit_remaining: *remaining,
                    duration_until_reset: reset.map(|(seconds, nanos)| Duration { seconds, nanos }),
                    ..Default::default()
                })
                .collect(),
            raw_body: b"ignored".to_vec(),
            ..Default::default()
        };
        let answer = decode_response(&response.encode_to_vec()).unwrap();
        prop_assert_eq!(answer.overall, overall as u64);
        prop_assert_eq!(answer.statuses.len(), statuses.len());
        for (got, (code, limit, remaining, reset)) in answer.statuses.iter().zip(&statuses) {
            prop_assert_eq!(got.code, *code as u64);
            prop_assert_eq!(got.limit, limit.map(|(rpu, unit)| (u64::from(rpu), unit as u64)));
            prop_assert_eq!(got.remaining, u64::from(*remaining));
            prop_assert_eq!(got.reset_ns, reset.map(|(s, n)| s as u64 * 1_000_000_000 + n as u64));
        }
    }
}
