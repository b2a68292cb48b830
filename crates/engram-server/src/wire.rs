//! Request and response bodies, and their conversion to and from the engine's types.

use std::collections::BTreeMap;

use engram_core::{Confidence, ConfidenceCategory, Link, Memory, MemoryId};
use engram_engine::{NewMemory, RecallItem};
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::ApiError;

/// A memory in a request (`remember`, and each member of `batch`). Every wire type refuses
/// a field it does not know (a misspelt field is a 400 naming it, never silently dropped).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryIn {
    pub content: Option<String>,
    pub id: Option<String>,
    pub embedding: Option<Vec<f64>>,
    pub embedding_b64: Option<String>,
    pub confidence: Option<f64>,
    pub timestamp: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub links: Option<Vec<LinkIn>>,
    pub auto_link: Option<bool>,
    pub memory_space_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkIn {
    pub to: String,
    pub weight: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    pub memories: Vec<MemoryIn>,
    pub memory_space_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceIn {
    pub id: String,
    pub dimension: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecallIn {
    pub query: Option<String>,
    pub embedding: Option<Vec<f64>>,
    pub embedding_b64: Option<String>,
    pub max_results: Option<usize>,
    pub threshold: Option<f64>,
    pub mode: Option<String>,
    pub max_hops: Option<u32>,
    pub retrieval: Option<String>,
    pub ef: Option<usize>,
    pub memory_space_id: Option<String>,
}

/// The JSON and query fields that shared/API.md names but this server does not implement
/// yet. They are refused like unknown ones (a filter dropped without a word would answer with
/// memories the caller meant to exclude), with a message that says why.
const NOT_YET: &[&str] = &[
    "filter",
    "filter_spread",
    "recency_half_life_s",
    "expires_at",
    "ttl_s",
];

/// Deepest nesting of arrays and objects a request body may have (metadata needs 2; a
/// recursive parser given 100,000 `[` would overflow its stack). Checked before any parse.
pub const MAX_JSON_DEPTH: usize = 64;

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`]: one pass over the bytes, brackets
/// inside strings ignored, no recursion. Malformed input passes here and fails in the parser.
///
/// The pass jumps from one structural byte to the next with `memchr` (SIMD): a batch of 100
/// 768-d embeddings is a megabyte of digits with some 200 brackets, and a byte-at-a-time loop
/// cost 10 µs a memory there (a quarter of the server's CPU per memory in a batch without
/// auto-linking, `engram-bench http`).
pub fn check_depth(body: &[u8]) -> Result<(), ApiError> {
    check_depth_with(body, MAX_JSON_DEPTH)
}

fn check_depth_with(body: &[u8], limit: usize) -> Result<(), ApiError> {
    let mut depth = 0usize;
    // The next opening byte (or string start) and the next closing byte at or after `i`,
    // each searched once per occurrence.
    let mut next_open = memchr::memchr3(b'"', b'[', b'{', body);
    let mut next_close = memchr::memchr2(b']', b'}', body);
    loop {
        let at = match (next_open, next_close) {
            (None, None) => return Ok(()),
            (Some(o), None) => o,
            (None, Some(c)) => c,
            (Some(o), Some(c)) => o.min(c),
        };
        let i = match body[at] {
            b'"' => {
                // Skip the string: to the next quote that no backslash escapes.
                let mut j = at + 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[j..]) {
                        None => return Ok(()),
                        Some(k) if body[j + k] == b'\\' => j += k + 2,
                        Some(k) => {
                            j += k + 1;
                            break;
                        }
                    }
                    if j >= body.len() {
                        return Ok(());
                    }
                }
                j
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(ApiError::Invalid(format!(
                        "the JSON is nested more than {limit} levels deep (at byte {at})"
                    )));
                }
                at + 1
            }
            _ => {
                depth = depth.saturating_sub(1);
                at + 1
            }
        };
        if i >= body.len() {
            return Ok(());
        }
        if next_open.is_some_and(|o| o < i) {
            next_open = memchr::memchr3(b'"', b'[', b'{', &body[i..]).map(|o| o + i);
        }
        if next_close.is_some_and(|c| c < i) {
            next_close = memchr::memchr2(b']', b'}', &body[i..]).map(|c| c + i);
        }
    }
}

/// A parser's "unknown field `x`, expected one of ..." made plain: names the field and lists
/// the accepted ones, and says so when the field is part of the API but not implemented yet.
fn unknown_field_message(what: &str) -> Option<String> {
    let rest = what.split("unknown field `").nth(1)?;
    let (field, rest) = rest.split_once('`')?;
    let accepted = rest
        .split_once("expected ")
        .map(|(_, e)| e.trim_end_matches(|c: char| c == '.' || c.is_whitespace()))
        .map(|e| e.split(" at line ").next().unwrap_or(e).to_string())
        .unwrap_or_default();
    let why = if NOT_YET.contains(&field) {
        "is part of the API but not supported by this server version yet"
    } else {
        "is not a field of this request"
    };
    Some(format!(
        "unknown field {field:?}: it {why}; accepted fields: {}",
        accepted.replace("one of ", "")
    ))
}

/// Refuses query parameters a route does not take: a 400 naming the parameter and listing
/// the accepted ones.
pub fn check_query<'a>(
    names: impl IntoIterator<Item = &'a String>,
    accepted: &[&str],
) -> Result<(), ApiError> {
    for name in names {
        if !accepted.contains(&name.as_str()) {
            let why = if NOT_YET.contains(&name.as_str()) {
                "is part of the API but not supported by this server version yet"
            } else {
                "is not a parameter of this route"
            };
            let list = if accepted.is_empty() {
                "this route takes no query parameters".to_string()
            } else {
                format!(
                    "accepted parameters: {}",
                    accepted
                        .iter()
                        .map(|a| format!("`{a}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(ApiError::Invalid(format!(
                "unknown query parameter {name:?}: it {why}; {list}"
            )));
        }
    }
    Ok(())
}

/// Parses JSON, answering 400 with the parser's description of what is wrong (type,
/// position). Nesting is bounded first ([`check_depth`]). The parser is sonic-rs (SIMD, the input checked as UTF-8): on 768-d embeddings
/// it takes 12.6 µs a memory where serde_json takes 18.3 µs, and number parsing is most of a
/// write request's CPU (`cargo test --release -p engram-server --lib wire::measure --
/// --ignored --nocapture`).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::Invalid(
            "the request body is empty: expected a JSON object".into(),
        ));
    }
    check_depth(body)?;
    sonic_rs::from_slice(body).map_err(|e| {
        // The first line: what and where (the rest is an excerpt of the input).
        let e = e.to_string();
        let what = e.lines().next().unwrap_or("malformed");
        match unknown_field_message(what) {
            Some(m) => ApiError::Invalid(m),
            None => ApiError::Invalid(format!("invalid JSON body: {what}")),
        }
    })
}

pub fn embedding(v: Vec<f64>, what: &str) -> Result<Vec<f32>, ApiError> {
    if v.len() > engram_core::limits::MAX_DIMENSION {
        return Err(ApiError::Invalid(format!(
            "{what} has {} dimensions, the limit is {}",
            v.len(),
            engram_core::limits::MAX_DIMENSION
        )));
    }
    // f64 from JSON as the f32 stored: finite values beyond f32's range are refused here
    // rather than turned into infinities. The message is only formatted for a bad value.
    let out: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    match out.iter().position(|f| !f.is_finite()) {
        None => Ok(out),
        Some(i) => Err(ApiError::Invalid(format!(
            "{what}[{i}] {} is outside the range of a 32-bit float",
            v[i]
        ))),
    }
}

/// An embedding given as base64 (standard alphabet, padded) of little-endian f32, the form of
/// OpenAI's embeddings API: the message of a refusal says what is wrong (not base64, a length
/// that is no whole number of floats, a value that is not finite, too many dimensions).
pub fn embedding_b64(s: &str, what: &str) -> Result<Vec<f32>, ApiError> {
    use base64::Engine as _;
    // 4 base64 characters carry 3 bytes: refuse what would decode past the limit before
    // decoding it.
    let max_bytes = engram_core::limits::MAX_DIMENSION * 4;
    if s.len() / 4 * 3 > max_bytes + 2 {
        return Err(ApiError::Invalid(format!(
            "{what} is {} characters: more than {} dimensions (the limit)",
            s.len(),
            engram_core::limits::MAX_DIMENSION
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| {
            ApiError::Invalid(format!(
                "{what} is not base64 (standard alphabet, padded): {e}"
            ))
        })?;
    if bytes.len() % 4 != 0 {
        return Err(ApiError::Invalid(format!(
            "{what} decodes to {} bytes: not a whole number of 4-byte little-endian floats",
            bytes.len()
        )));
    }
    if bytes.len() / 4 > engram_core::limits::MAX_DIMENSION {
        return Err(ApiError::Invalid(format!(
            "{what} has {} dimensions, the limit is {}",
            bytes.len() / 4,
            engram_core::limits::MAX_DIMENSION
        )));
    }
    let out: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    match out.iter().position(|f| !f.is_finite()) {
        None => Ok(out),
        Some(i) => Err(ApiError::Invalid(format!(
            "{what}[{i}] is {}: expected a finite number",
            out[i]
        ))),
    }
}

/// The embedding of a request given as `embedding` (JSON numbers) or `embedding_b64`; both
/// is a 400.
pub fn either_embedding(
    json: Option<Vec<f64>>,
    b64: Option<&str>,
) -> Result<Option<Vec<f32>>, ApiError> {
    match (json, b64) {
        (Some(_), Some(_)) => Err(ApiError::Invalid(
            "give the embedding as embedding or as embedding_b64, not both".into(),
        )),
        (Some(e), None) => embedding(e, "embedding").map(Some),
        (None, Some(b)) => embedding_b64(b, "embedding_b64").map(Some),
        (None, None) => Ok(None),
    }
}

/// Little-endian f32 as base64 (the inverse of [`embedding_b64`]).
pub fn encode_b64(v: &[f32]) -> String {
    use base64::Engine as _;
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// How a response carries embeddings: JSON numbers or base64 of little-endian f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Json,
    Base64,
}

impl std::str::FromStr for Encoding {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, ApiError> {
        match s {
            "json" => Ok(Encoding::Json),
            "base64" => Ok(Encoding::Base64),
            _ => Err(ApiError::Invalid(format!(
                "encoding {s:?} is not one of json, base64"
            ))),
        }
    }
}

pub fn memory_id(s: String) -> Result<MemoryId, ApiError> {
    Ok(MemoryId::new(s)?)
}

/// Microseconds since the Unix epoch from RFC 3339.
pub fn parse_timestamp(s: &str) -> Result<i64, ApiError> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        ApiError::Invalid(format!(
            "timestamp {s:?} is not RFC 3339 (e.g. 2026-11-21T10:00:00Z): {e}"
        ))
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map_err(|_| ApiError::Invalid(format!("timestamp {s:?} is out of range")))
}

/// RFC 3339 (UTC) from microseconds since the Unix epoch.
pub fn format_timestamp(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

impl MemoryIn {
    /// The engine's form; the space is chosen by the caller.
    pub fn into_new(self) -> Result<NewMemory, ApiError> {
        let content = self
            .content
            .ok_or_else(|| ApiError::Invalid("content is required".into()))?;
        if content.trim().is_empty() {
            return Err(ApiError::Invalid("content is empty".into()));
        }
        if content.len() > engram_core::limits::MAX_CONTENT_LEN {
            return Err(ApiError::TooLarge(format!(
                "content is {} bytes, the limit is {} bytes",
                content.len(),
                engram_core::limits::MAX_CONTENT_LEN
            )));
        }
        let confidence = match self.confidence {
            Some(c) if !(0.0..=1.0).contains(&c) => {
                return Err(ApiError::Invalid(format!(
                    "confidence {c} is outside [0, 1]"
                )))
            }
            Some(c) => Some(c as f32),
            None => None,
        };
        let links = self
            .links
            .unwrap_or_default()
            .into_iter()
            .map(|l| {
                if !Link::is_valid_weight(l.weight) {
                    return Err(ApiError::Invalid(format!(
                        "link to {:?} has weight {}, expected (0, 1]",
                        l.to, l.weight
                    )));
                }
                Ok(Link {
                    to: memory_id(l.to)?,
                    weight: l.weight as f32,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NewMemory {
            id: self.id.map(memory_id).transpose()?,
            content,
            embedding: either_embedding(self.embedding, self.embedding_b64.as_deref())?,
            confidence,
            timestamp_us: self.timestamp.as_deref().map(parse_timestamp).transpose()?,
            metadata: self.metadata.unwrap_or_default(),
            links,
            auto_link: self.auto_link.unwrap_or(true),
        })
    }
}

fn category(c: Confidence) -> &'static str {
    match c.category() {
        ConfidenceCategory::High => "High",
        ConfidenceCategory::Medium => "Medium",
        ConfidenceCategory::Low => "Low",
    }
}

/// An f32 as the JSON number with its shortest decimal form (0.7, not 0.699999988079071).
pub fn num(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

pub fn confidence_json(c: Confidence) -> Value {
    json!({ "value": num(c.value()), "category": category(c) })
}

/// A memory as a response carries it; its embedding only when `embedding` says how.
pub fn memory_json(m: &Memory, embedding: Option<Encoding>) -> Value {
    let links = links_json(&m.links);
    let mut v = json!({
        "id": m.id.as_str(),
        "content": m.content,
        "confidence": confidence_json(Confidence::new(m.confidence)),
        "timestamp": format_timestamp(m.timestamp_us),
        "metadata": m.metadata,
        "links": links,
    });
    match embedding {
        None => {}
        Some(Encoding::Json) => {
            v["embedding"] = Value::Array(m.embedding.iter().map(|&x| num(x)).collect());
        }
        Some(Encoding::Base64) => v["embedding_b64"] = Value::String(encode_b64(&m.embedding)),
    }
    v
}

pub fn links_json(links: &[Link]) -> Vec<Value> {
    links
        .iter()
        .map(|l| json!({ "to": l.to.as_str(), "weight": num(l.weight) }))
        .collect()
}

pub fn recall_item_json(i: &RecallItem) -> Value {
    json!({
        "id": i.id.as_str(),
        "content": i.content,
        "confidence": confidence_json(i.confidence),
        "similarity_score": num(i.similarity),
        "activation_level": num(i.activation),
        "score": num(i.score),
        "hops": i.hops,
        "path": i.path.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "retrieval_path": i.retrieval_path.as_str(),
        "found_by": i.found_by.names(),
        "observed_at": format_timestamp(i.timestamp_us),
    })
}

#[cfg(test)]
mod depth_tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain byte-at-a-time definition the fast pass must agree with: the greatest depth
    /// reached, brackets inside strings not counted.
    fn reference_exceeds(body: &[u8], limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in body {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn agrees_with_the_byte_at_a_time_definition(
            body in proptest::collection::vec(
                prop::sample::select(&b"[]{}\"\\a1,"[..]), 0..120),
            limit in 0usize..6,
        ) {
            prop_assert_eq!(
                check_depth_with(&body, limit).is_err(),
                reference_exceeds(&body, limit)
            );
        }
    }

    #[test]
    fn strings_escapes_and_the_limit() {
        assert!(check_depth(&[b'['; 64]).is_ok());
        assert!(check_depth(&[b'['; 65]).is_err());
        // Brackets in strings, escaped quotes, a backslash as the last byte.
        let mut s = br#"{"a": "[[[[\"[[[[", "b": "#.to_vec();
        s.extend(std::iter::repeat_n(b'[', 63));
        assert!(check_depth(&s).is_ok());
        s.push(b'[');
        assert!(check_depth(&s).is_err());
        assert!(check_depth(br#""\"#).is_ok());
        assert!(check_depth(br#""abc\"#).is_ok());
        // Closing brackets hidden in a string do not lower the count.
        let mut s = br#"["]]]]]]]]]]", "#.to_vec();
        s.extend(std::iter::repeat_n(b'[', 64));
        assert!(check_depth(&s).is_err());
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    /// `cargo test --release -p engram-server --lib wire::measure -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn request_parsing() {
        let v: Vec<f32> = (0..768)
            .map(|i| ((i as f32) * 0.7123).sin() * 0.05)
            .collect();
        let body = serde_json::to_vec(&json!({"content": "hello there", "embedding": v})).unwrap();
        let n = 3000;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let mut sum = 0.0;
            for _ in 0..n {
                let m: MemoryIn = serde_json::from_slice(&body).unwrap();
                sum += m.embedding.unwrap()[3];
            }
            let serde = t.elapsed().as_secs_f64() / n as f64 * 1e6;
            let t = std::time::Instant::now();
            for _ in 0..n {
                let m: MemoryIn = parse(&body).unwrap();
                sum += m.embedding.unwrap()[3];
            }
            let ours = t.elapsed().as_secs_f64() / n as f64 * 1e6;
            println!(
                "768-d memory: serde_json {serde:.1} µs, sonic-rs (parse) {ours:.1} µs ({sum})"
            );
            let t = std::time::Instant::now();
            for _ in 0..n {
                check_depth(&body).unwrap();
            }
            let depth = t.elapsed().as_secs_f64() / n as f64 * 1e6;
            println!(
                "768-d memory: depth check {depth:.2} µs ({} bytes)",
                body.len()
            );
        }
    }
}
