//! application/x-www-form-urlencoded, as browsers and cow_qs write it: unreserved
//! characters as they are, space as "+", every other byte (UTF-8 or not) as %XX.
//! Two passes (length, then bytes) so the caller can write straight into its buffer.

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// How many output bytes each input byte takes.
const WIDTH: [u8; 256] = {
    let mut table = [3u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'*' | b' ') {
            table[b] = 1;
        }
        b += 1;
    }
    table
};

fn encoded_len(bytes: &[u8]) -> usize {
    bytes.iter().map(|&b| WIDTH[b as usize] as usize).sum()
}

/// Writes `bytes` encoded at the start of `out`; returns how many bytes it wrote.
fn encode_into(out: &mut [u8], bytes: &[u8]) -> usize {
    let mut at = 0;
    for &b in bytes {
        match (WIDTH[b as usize], b) {
            (1, b' ') => out[at] = b'+',
            (1, _) => out[at] = b,
            _ => {
                out[at] = b'%';
                out[at + 1] = HEX[(b >> 4) as usize];
                out[at + 2] = HEX[(b & 15) as usize];
                at += 2;
            }
        }
        at += 1;
    }
    at
}

/// Length of `k1=v1&k2=v2...` for these pairs.
pub fn urlencoded_len(pairs: &[(&[u8], &[u8])]) -> usize {
    let fields: usize = pairs
        .iter()
        .map(|(k, v)| encoded_len(k) + 1 + encoded_len(v))
        .sum();
    fields + pairs.len().saturating_sub(1)
}

/// Writes `k1=v1&k2=v2...` into `out`, which must be `urlencoded_len(pairs)` long.
pub fn urlencode_into(out: &mut [u8], pairs: &[(&[u8], &[u8])]) {
    let mut at = 0;
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out[at] = b'&';
            at += 1;
        }
        at += encode_into(&mut out[at..], key);
        out[at] = b'=';
        at += 1;
        at += encode_into(&mut out[at..], value);
    }
}

pub fn urlencode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = vec![0; urlencoded_len(pairs)];
    urlencode_into(&mut out, pairs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_unicode_and_raw_bytes() {
        let message = "a b&c=d%e+f П~".as_bytes();
        let encoded = urlencode(&[(b"message", message), (b"author", b"al\xff")]);
        assert_eq!(
            String::from_utf8_lossy(&encoded),
            "message=a+b%26c%3Dd%25e%2Bf+%D0%9F%7E&author=al%FF"
        );
    }

    #[test]
    fn every_byte_round_trips_through_percent_decoding() {
        let all: Vec<u8> = (0..=255).collect();
        let encoded = urlencode(&[(b"k", &all)]);
        let text = String::from_utf8(encoded).unwrap_or_default();
        let value = text.strip_prefix("k=").unwrap_or_default();
        let mut decoded = Vec::new();
        let mut bytes = value.bytes();
        while let Some(b) = bytes.next() {
            match b {
                b'+' => decoded.push(b' '),
                b'%' => {
                    let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                    decoded.push(u8::from_str_radix(&hex, 16).unwrap_or_default());
                }
                _ => decoded.push(b),
            }
        }
        assert_eq!(decoded, all);
    }

    #[test]
    fn empty_input_gives_empty_output() {
        assert!(urlencode(&[]).is_empty());
        assert_eq!(urlencode(&[(b"", b"")]), b"=");
    }
}
