//! application/x-www-form-urlencoded, as browsers and cow_qs write it.

/// Appends `bytes` percent-encoded: unreserved characters as they are, space as "+",
/// everything else (any byte, UTF-8 or not) as %XX.
fn encode_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
    }
}

/// `k1=v1&k2=v2...`
pub fn urlencode<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for (i, (key, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        encode_into(&mut out, key);
        out.push(b'=');
        encode_into(&mut out, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_unicode_and_raw_bytes() {
        let message = "a b&c=d%e+f П".as_bytes();
        let encoded = urlencode([(&b"message"[..], message), (b"author", b"al\xff")]);
        assert_eq!(
            String::from_utf8_lossy(&encoded),
            "message=a+b%26c%3Dd%25e%2Bf+%D0%9F&author=al%FF"
        );
    }

    #[test]
    fn empty_input_gives_empty_output() {
        assert!(urlencode(std::iter::empty()).is_empty());
        assert_eq!(urlencode([(&b""[..], &b""[..])]), b"=");
    }
}
