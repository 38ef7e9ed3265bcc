//! application/x-www-form-urlencoded exactly as MongooseIM 6.4 writes it (cowlib
//! 2.14's `cow_qs:qs/1`), byte for byte: `A-Z a-z 0-9 - . _` as they are, every other
//! byte (UTF-8 or not, `*` and `~` included) as `%XX` in upper case, and a space as
//! `+`, except that cow_qs escapes a byte that starts a run of four bytes to escape
//! as one group of four `%XX` (a space in such a group is `%20`). Both decode alike.
//! Two passes (length, then bytes) so the caller can write straight into its buffer.

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// How one input byte is written.
#[derive(Clone, Copy)]
enum Piece {
    Plain(u8),
    Plus,
    Escaped(u8),
}

impl Piece {
    fn width(self) -> usize {
        match self {
            Piece::Plain(_) | Piece::Plus => 1,
            Piece::Escaped(_) => 3,
        }
    }
}

/// The pieces of one encoded value, in cow_qs's order of decisions.
fn pieces(bytes: &[u8]) -> impl Iterator<Item = Piece> + '_ {
    let mut at = 0;
    // Bytes left in a group of four escapes.
    let mut group = 0;
    std::iter::from_fn(move || {
        let b = *bytes.get(at)?;
        let piece = if group > 0 {
            group -= 1;
            Piece::Escaped(b)
        } else if plain(b) {
            Piece::Plain(b)
        } else if bytes.len() - at >= 4 && bytes[at + 1..at + 4].iter().all(|&c| !plain(c)) {
            group = 3;
            Piece::Escaped(b)
        } else if b == b' ' {
            Piece::Plus
        } else {
            Piece::Escaped(b)
        };
        at += 1;
        Some(piece)
    })
}

fn encoded_len(bytes: &[u8]) -> usize {
    pieces(bytes).map(Piece::width).sum()
}

/// Writes `bytes` encoded at the start of `out`; returns how many bytes it wrote.
fn encode_into(out: &mut [u8], bytes: &[u8]) -> usize {
    let mut at = 0;
    for piece in pieces(bytes) {
        match piece {
            Piece::Plain(b) => out[at] = b,
            Piece::Plus => out[at] = b'+',
            Piece::Escaped(b) => {
                out[at] = b'%';
                out[at + 1] = HEX[(b >> 4) as usize];
                out[at + 2] = HEX[(b & 15) as usize];
            }
        }
        at += piece.width();
    }
    at
}

/// Length of `k1=v1&k2=v2...` for these pairs.
pub fn urlencoded_len<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> usize {
    let fields: usize = pairs
        .iter()
        .map(|(k, v)| encoded_len(k.as_ref()) + 1 + encoded_len(v.as_ref()))
        .sum();
    fields + pairs.len().saturating_sub(1)
}

/// Writes `k1=v1&k2=v2...` into `out`, which must be `urlencoded_len(pairs)` long.
pub fn urlencode_into<K: AsRef<[u8]>, V: AsRef<[u8]>>(out: &mut [u8], pairs: &[(K, V)]) {
    let mut at = 0;
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out[at] = b'&';
            at += 1;
        }
        at += encode_into(&mut out[at..], key.as_ref());
        out[at] = b'=';
        at += 1;
        at += encode_into(&mut out[at..], value.as_ref());
    }
}

pub fn urlencode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = vec![0; urlencoded_len(pairs)];
    urlencode_into(&mut out, pairs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: &[u8]) -> String {
        let pairs: [(&[u8], &[u8]); 1] = [(b"m", value)];
        String::from_utf8(urlencode(&pairs)).unwrap_or_default()
    }

    /// Expected texts worked out by hand from cowlib 2.14.0's src/cow_qs.erl
    /// (the version MongooseIM 6.4.0 locks), clause by clause.
    #[test]
    fn matches_cow_qs_byte_for_byte() {
        // Unreserved: letters, digits, - . _ ; `*` and `~` are escaped.
        assert_eq!(one(b"aZ09-._*~"), "m=aZ09-._%2A%7E");
        // Lone specials: one escape each, a space as "+".
        assert_eq!(one(b"a b&c=d%e+f"), "m=a+b%26c%3Dd%25e%2Bf");
        // Four bytes to escape in a row: one group of four escapes, spaces as %20.
        assert_eq!(one(b"    x"), "m=%20%20%20%20x");
        assert_eq!(one(b"a  &b"), "m=a++%26b");
        assert_eq!(one(b"a &&&b"), "m=a%20%26%26%26b");
        // A group is taken as soon as four are left; the rest one by one.
        assert_eq!(one(b"x      "), "m=x%20%20%20%20++");
        // "П" (two UTF-8 bytes) after a space: three escapes only, no group.
        assert_eq!(one("a П".as_bytes()), "m=a+%D0%9F");
        assert_eq!(one("a ПП".as_bytes()), "m=a%20%D0%9F%D0%9F");
        assert_eq!(one(b"al\xff"), "m=al%FF");
    }

    #[test]
    fn pairs_are_joined_in_order() {
        let pairs: [(&[u8], &[u8]); 4] = [
            (b"author", b"alice"),
            (b"server", b"localhost"),
            (b"receiver", b"bob"),
            // " ~ *" is a run of four to escape: one group, its spaces as %20.
            (b"message", b"Hi ~ *you*"),
        ];
        assert_eq!(
            urlencode(&pairs),
            b"author=alice&server=localhost&receiver=bob&message=Hi%20%7E%20%2Ayou%2A".to_vec()
        );
    }

    #[test]
    fn every_byte_round_trips_through_percent_decoding() {
        let all: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
        let text = one(&all);
        let value = text.strip_prefix("m=").unwrap_or_default();
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
        assert_eq!(text.len(), urlencoded_len(&[(b"m", &all)]));
    }

    #[test]
    fn empty_input_gives_empty_output() {
        let none: [(&[u8], &[u8]); 0] = [];
        assert!(urlencode(&none).is_empty());
        let empty: [(&[u8], &[u8]); 1] = [(b"", b"")];
        assert_eq!(urlencode(&empty), b"=");
    }
}
