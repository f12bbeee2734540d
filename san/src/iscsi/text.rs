//! Text key=value data (RFC 7143 §6) and operational parameter
//! negotiation (§13). Login and Text PDUs carry `key=value\0` pairs; each
//! key negotiates by its own result function (min, max, boolean OR/AND,
//! first common list item) or is declarative (each side states its own).

use std::fmt;

/// §6.1: key names are at most 63 bytes.
pub const MAX_KEY_LEN: usize = 63;
/// §6.1: values are at most 255 bytes, except the few that may reach 8192.
pub const MAX_VALUE_LEN: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text pair {0:?} has no '='")]
    NoEquals(String),
    #[error("text key of {0} bytes is longer than 63")]
    KeyTooLong(usize),
    #[error("value of {key} is {len} bytes, over the 8192-byte limit")]
    ValueTooLong { key: String, len: usize },
    #[error("text data is not UTF-8")]
    NotUtf8,
    #[error("{key}={value} is not a valid value: {why}")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("{key}: the target answered {answer}, outside what we offered ({offer})")]
    OutOfOffer {
        key: String,
        offer: String,
        answer: String,
    },
}

/// Splits text data into pairs, in order. Empty strings between NULs are
/// skipped (padding, or a trailing NUL).
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let s = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::NoEquals(s.chars().take(80).collect()))?;
        if k.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong(k.len()));
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong {
                key: k.to_string(),
                len: v.len(),
            });
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The operational parameters of a session (§13), after negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What we accept per PDU (we declared it).
    pub max_recv_data_segment_length: u32,
    /// What the peer accepts per PDU (it declared it; 8192 when silent).
    pub max_send_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
}

impl Params {
    /// RFC defaults: what holds for every key nobody mentions.
    pub const fn rfc_defaults() -> Params {
        Params {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            max_send_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
        }
    }
}

/// What an initiator offers (open-iscsi's defaults, ERL 0, one connection
/// per session: multipath is done with sessions), except that we take
/// Data-In segments of up to 1 MiB, not 256 KiB: a 1 MiB read is then one
/// PDU, which costs the target less CPU (BENCHMARKS.md, issue 5).
#[derive(Clone, Debug)]
pub struct Offer {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 1 << 20,
            max_burst_length: 16_776_192,
            first_burst_length: 262_144,
        }
    }
}

fn digest_offer(want: bool) -> &'static str {
    if want {
        "CRC32C,None"
    } else {
        "None"
    }
}

impl Offer {
    /// The operational keys of the initiator's first operational Login PDU.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let v = [
            ("HeaderDigest", digest_offer(self.header_digest).to_string()),
            ("DataDigest", digest_offer(self.data_digest).to_string()),
            (
                "MaxRecvDataSegmentLength",
                self.max_recv_data_segment_length.to_string(),
            ),
            ("MaxBurstLength", self.max_burst_length.to_string()),
            ("FirstBurstLength", self.first_burst_length.to_string()),
            ("InitialR2T", "No".into()),
            ("ImmediateData", "Yes".into()),
            ("MaxOutstandingR2T", "1".into()),
            ("MaxConnections", "1".into()),
            ("DataPDUInOrder", "Yes".into()),
            ("DataSequenceInOrder", "Yes".into()),
            ("ErrorRecoveryLevel", "0".into()),
            ("DefaultTime2Wait", "2".into()),
            ("DefaultTime2Retain", "0".into()),
        ];
        v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Applies the target's answers to our offer. Keys the target left
    /// unanswered keep the RFC default combined with our offer (tgtd omits
    /// keys at their defaults); answers outside what we offered are refused.
    pub fn resolve(&self, answers: &[(String, String)]) -> Result<Params, TextError> {
        let d = Params::rfc_defaults();
        let num = |key: &str, default: u32, lo: u32, hi: u32| -> Result<u32, TextError> {
            match get(answers, key) {
                None => Ok(default),
                Some(v) => parse_num(key, v, lo, hi),
            }
        };
        let min_key = |key: &str, offer: u32, lo: u32| -> Result<u32, TextError> {
            let v = num(key, 0, lo, u32::MAX)?;
            if get(answers, key).is_none() {
                return Ok(offer.min(default_of(key)));
            }
            if v > offer {
                return Err(TextError::OutOfOffer {
                    key: key.into(),
                    offer: offer.to_string(),
                    answer: v.to_string(),
                });
            }
            Ok(v)
        };
        let digest = |key: &str, want: bool| -> Result<bool, TextError> {
            match get(answers, key) {
                None => Ok(false),
                Some("None") => Ok(false),
                Some("CRC32C") if want => Ok(true),
                Some(v) => Err(TextError::OutOfOffer {
                    key: key.into(),
                    offer: digest_offer(want).into(),
                    answer: v.into(),
                }),
            }
        };
        let boolean = |key: &str, default: bool| -> Result<bool, TextError> {
            match get(answers, key) {
                None => Ok(default),
                Some("Yes") => Ok(true),
                Some("No") => Ok(false),
                Some(v) => Err(TextError::BadValue {
                    key: key.into(),
                    value: v.into(),
                    why: "expected Yes or No",
                }),
            }
        };
        let max_burst = min_key("MaxBurstLength", self.max_burst_length, 512)?;
        let first_burst = min_key("FirstBurstLength", self.first_burst_length, 512)?;
        let p = Params {
            header_digest: digest("HeaderDigest", self.header_digest)?,
            data_digest: digest("DataDigest", self.data_digest)?,
            max_recv_data_segment_length: self.max_recv_data_segment_length,
            max_send_data_segment_length: num(
                "MaxRecvDataSegmentLength",
                d.max_send_data_segment_length,
                512,
                (1 << 24) - 1,
            )?,
            max_burst_length: max_burst,
            first_burst_length: first_burst.min(max_burst),
            // InitialR2T is OR: we offered No, so the answer rules.
            initial_r2t: boolean("InitialR2T", d.initial_r2t)?,
            // ImmediateData is AND: we offered Yes, so the answer rules.
            immediate_data: boolean("ImmediateData", d.immediate_data)?,
            max_outstanding_r2t: num("MaxOutstandingR2T", 1, 1, 65535)?.min(1),
            default_time2wait: num("DefaultTime2Wait", d.default_time2wait, 0, 3600)?,
            default_time2retain: num("DefaultTime2Retain", d.default_time2retain, 0, 3600)?,
            error_recovery_level: num("ErrorRecoveryLevel", 0, 0, 2)?,
        };
        if p.error_recovery_level != 0 {
            return Err(TextError::OutOfOffer {
                key: "ErrorRecoveryLevel".into(),
                offer: "0".into(),
                answer: p.error_recovery_level.to_string(),
            });
        }
        Ok(p)
    }
}

fn default_of(key: &str) -> u32 {
    let d = Params::rfc_defaults();
    match key {
        "MaxBurstLength" => d.max_burst_length,
        "FirstBurstLength" => d.first_burst_length,
        _ => u32::MAX,
    }
}

pub fn parse_num(key: &str, v: &str, lo: u32, hi: u32) -> Result<u32, TextError> {
    let bad = |why| TextError::BadValue {
        key: key.into(),
        value: v.chars().take(40).collect(),
        why,
    };
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        v.parse::<u64>()
    }
    .map_err(|_| bad("not a number"))?;
    if n < u64::from(lo) || n > u64::from(hi) {
        return Err(bad("out of range"));
    }
    Ok(n as u32)
}

/// A text pair list printed for logs without secrets.
pub struct Redacted<'a>(pub &'a [(String, String)]);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if k.starts_with("CHAP_R") || k.starts_with("CHAP_C") {
                write!(f, "{k}=…")?;
            } else {
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode_round_trip() {
        let p = vec![
            ("A".to_string(), "1".to_string()),
            ("B".into(), "x=y".into()),
        ];
        let e = encode(&p);
        assert_eq!(e, b"A=1\0B=x=y\0");
        assert_eq!(parse(&e).unwrap(), p);
        assert_eq!(parse(b"A=1\0\0\0\0").unwrap().len(), 1);
        assert!(matches!(parse(b"nope\0"), Err(TextError::NoEquals(_))));
    }

    #[test]
    fn tgtd_style_answer_resolves() {
        // tgtd 1.0.85 with defaults: omits MaxRecvDataSegmentLength (8192)
        // and answers the min keys with its own limits.
        let ans = parse(
            b"HeaderDigest=None\0DataDigest=None\0MaxBurstLength=262144\0FirstBurstLength=65536\0InitialR2T=Yes\0ImmediateData=Yes\0MaxOutstandingR2T=1\0ErrorRecoveryLevel=0\0",
        )
        .unwrap();
        let p = Offer::default().resolve(&ans).unwrap();
        assert_eq!(p.max_send_data_segment_length, 8192);
        assert_eq!(p.max_burst_length, 262_144);
        assert_eq!(p.first_burst_length, 65_536);
        assert!(p.initial_r2t && p.immediate_data);
        assert!(!p.header_digest);
    }

    #[test]
    fn answers_beyond_the_offer_are_refused() {
        let ans = parse(b"MaxBurstLength=99999999\0").unwrap();
        assert!(Offer::default().resolve(&ans).is_err());
        let ans = parse(b"HeaderDigest=CRC32C\0").unwrap();
        assert!(Offer::default().resolve(&ans).is_err());
        let ans = parse(b"ErrorRecoveryLevel=2\0").unwrap();
        assert!(Offer::default().resolve(&ans).is_err());
    }
}
