//! Operational parameter negotiation as the responder (RFC 7143 §6.2,
//! §13): each key the initiator offers is answered by its result function
//! (min, max, OR, AND, first common list item); MaxRecvDataSegmentLength is
//! declarative, so we take the initiator's and declare our own once.

use super::config::TargetParams;
use crate::iscsi::pdu::MAX_DATA_SEGMENT;
use crate::iscsi::text::{parse_num, Params};

/// Answers for keys we do not implement or that make no sense here.
const NOT_UNDERSTOOD: &str = "NotUnderstood";
const REJECT: &str = "Reject";
const IRRELEVANT: &str = "Irrelevant";
/// RFC 7143 §13.15-16: Time2Wait/Time2Retain range over 0..=3600.
const MAX_TIME2: u32 = 3600;
/// What we answer for DefaultTime2Wait (max) and DefaultTime2Retain (min):
/// at ERL 0 nothing is retained, reconnect at once.
const OUR_TIME2WAIT: u32 = 2;
const OUR_TIME2RETAIN: u32 = 0;

pub(crate) struct Negotiator<'a> {
    ours: &'a TargetParams,
    pub params: Params,
}

impl<'a> Negotiator<'a> {
    pub fn new(ours: &'a TargetParams) -> Negotiator<'a> {
        let mut params = Params::rfc_defaults();
        params.max_recv_data_segment_length = ours.max_recv_data_segment_length;
        params.max_outstanding_r2t = 1;
        Negotiator { ours, params }
    }

    /// Our answer to one offered key, or `None` for keys that need none
    /// (declarative ones).
    pub fn answer(&mut self, key: &str, value: &str) -> Option<String> {
        let p = &mut self.params;
        let o = self.ours;
        let num = |lo: u32, hi: u32| parse_num(key, value, lo, hi).ok();
        let boolean = || match value {
            "Yes" => Some(true),
            "No" => Some(false),
            _ => None,
        };
        let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_string();
        Some(match key {
            "HeaderDigest" | "DataDigest" => {
                let pick = value.split(',').find(|v| match *v {
                    "None" => true,
                    "CRC32C" => o.digests,
                    _ => false,
                });
                let Some(pick) = pick else {
                    return Some(REJECT.into());
                };
                let on = pick == "CRC32C";
                if key == "HeaderDigest" {
                    p.header_digest = on;
                } else {
                    p.data_digest = on;
                }
                pick.to_string()
            }
            "MaxRecvDataSegmentLength" => {
                p.max_send_data_segment_length = num(512, MAX_DATA_SEGMENT)?;
                return None;
            }
            "MaxBurstLength" => match num(512, MAX_DATA_SEGMENT) {
                Some(v) => {
                    p.max_burst_length = v.min(o.max_burst_length);
                    p.max_burst_length.to_string()
                }
                None => REJECT.into(),
            },
            "FirstBurstLength" => match num(512, MAX_DATA_SEGMENT) {
                Some(v) => {
                    p.first_burst_length = v.min(o.first_burst_length);
                    p.first_burst_length.to_string()
                }
                None => REJECT.into(),
            },
            "InitialR2T" => match boolean() {
                Some(v) => {
                    p.initial_r2t = v || o.initial_r2t;
                    yes_no(p.initial_r2t)
                }
                None => REJECT.into(),
            },
            "ImmediateData" => match boolean() {
                Some(v) => {
                    p.immediate_data = v && o.immediate_data;
                    yes_no(p.immediate_data)
                }
                None => REJECT.into(),
            },
            // We hold one R2T per connection and deliver data in order.
            "MaxOutstandingR2T" | "MaxConnections" => match num(1, 65535) {
                Some(_) => "1".into(),
                None => REJECT.into(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match boolean() {
                Some(_) => "Yes".into(),
                None => REJECT.into(),
            },
            "ErrorRecoveryLevel" => match num(0, 2) {
                Some(_) => "0".into(),
                None => REJECT.into(),
            },
            "DefaultTime2Wait" => match num(0, MAX_TIME2) {
                Some(v) => {
                    p.default_time2wait = v.max(OUR_TIME2WAIT);
                    p.default_time2wait.to_string()
                }
                None => REJECT.into(),
            },
            // min() with our 0: nothing is retained at ERL 0.
            "DefaultTime2Retain" => match num(0, MAX_TIME2) {
                Some(_) => {
                    p.default_time2retain = OUR_TIME2RETAIN;
                    p.default_time2retain.to_string()
                }
                None => REJECT.into(),
            },
            // Markers are obsolete (RFC 7143 §13.25): always off.
            "IFMarker" | "OFMarker" => "No".into(),
            "IFMarkInt" | "OFMarkInt" => IRRELEVANT.into(),
            // Declarations the login stage reads itself.
            "InitiatorName" | "InitiatorAlias" | "SessionType" | "TargetName" => return None,
            _ => NOT_UNDERSTOOD.into(),
        })
    }

    /// The negotiated parameters, with FirstBurstLength ≤ MaxBurstLength.
    pub fn finish(mut self) -> Params {
        self.params.first_burst_length = self
            .params
            .first_burst_length
            .min(self.params.max_burst_length);
        self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_functions() {
        let ours = TargetParams {
            max_burst_length: 65536,
            first_burst_length: 8192,
            initial_r2t: false,
            ..TargetParams::default()
        };
        let mut n = Negotiator::new(&ours);
        assert_eq!(
            n.answer("MaxBurstLength", "16776192").as_deref(),
            Some("65536")
        );
        assert_eq!(
            n.answer("FirstBurstLength", "4096").as_deref(),
            Some("4096")
        );
        assert_eq!(n.answer("InitialR2T", "No").as_deref(), Some("No"));
        assert_eq!(n.answer("ImmediateData", "Yes").as_deref(), Some("Yes"));
        assert_eq!(
            n.answer("HeaderDigest", "CRC32C,None").as_deref(),
            Some("CRC32C")
        );
        assert_eq!(
            n.answer("DataDigest", "Adler,None").as_deref(),
            Some("None")
        );
        assert_eq!(n.answer("MaxRecvDataSegmentLength", "4096"), None);
        assert_eq!(n.answer("X-foo", "1").as_deref(), Some("NotUnderstood"));
        assert_eq!(
            n.answer("MaxBurstLength", "lots").as_deref(),
            Some("Reject")
        );
        let p = n.finish();
        assert_eq!(p.max_send_data_segment_length, 4096);
        assert_eq!((p.max_burst_length, p.first_burst_length), (65536, 4096));
        assert!(p.header_digest && !p.data_digest && !p.initial_r2t);
    }
}
