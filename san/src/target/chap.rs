//! CHAP with MD5 as the authenticator (RFC 1994, RFC 7143 §12.1.3): we send
//! an identifier and a random challenge, the initiator answers
//! MD5(identifier ‖ secret ‖ challenge). Mutual CHAP is not supported.

use crate::iscsi::Chap;
use std::io::Read;

/// CHAP_A value of MD5, the only algorithm RFC 7143 defines.
pub(crate) const ALGORITHM_MD5: &str = "5";
/// Challenge bytes: RFC 7143 §12.1.3 asks for at least the digest's size.
const CHALLENGE_LEN: usize = 32;

/// One challenge we sent, to check the answer against.
pub(crate) struct Challenge {
    pub id: u8,
    pub bytes: [u8; CHALLENGE_LEN],
}

impl Challenge {
    /// A fresh challenge from the kernel's random source.
    pub fn new() -> std::io::Result<Challenge> {
        let mut b = [0u8; CHALLENGE_LEN + 1];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        let mut bytes = [0u8; CHALLENGE_LEN];
        bytes.copy_from_slice(&b[1..]);
        Ok(Challenge { id: b[0], bytes })
    }

    /// CHAP_I and CHAP_C as sent.
    pub fn pairs(&self) -> [(String, String); 2] {
        [
            ("CHAP_I".into(), self.id.to_string()),
            ("CHAP_C".into(), format!("0x{}", hex(&self.bytes))),
        ]
    }

    /// Whether `user`/`response` (CHAP_N, CHAP_R) answer this challenge for `account`.
    pub fn verify(&self, account: &Chap, user: &str, response: &str) -> bool {
        let Some(got) = decode_hex(response) else {
            return false;
        };
        let mut h = md5::Context::new();
        h.consume([self.id]);
        h.consume(&account.secret);
        h.consume(self.bytes);
        let want = h.finalize().0;
        // Both compared in full, so timing says nothing about where they differ.
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(want.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same && user == account.user
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `0x`-prefixed hex, as initiators send CHAP_R.
fn decode_hex(v: &str) -> Option<Vec<u8>> {
    let h = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
    if h.is_empty() || h.len() % 2 != 0 || h.len() > 512 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_and_wrong_answers() {
        let c = Challenge::new().unwrap();
        let acct = Chap {
            user: "u".into(),
            secret: b"twelve-bytes".to_vec(),
        };
        let mut h = md5::Context::new();
        h.consume([c.id]);
        h.consume(b"twelve-bytes");
        h.consume(c.bytes);
        let r = format!("0x{}", hex(&h.finalize().0));
        assert!(c.verify(&acct, "u", &r));
        assert!(!c.verify(&acct, "v", &r));
        assert!(!c.verify(&acct, "u", "0x00"));
        assert!(!c.verify(&acct, "u", "garbage"));
    }
}
