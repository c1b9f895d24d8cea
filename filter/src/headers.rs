//! Header utilities: Envoy's serialized header-map encoding, parsed in place, and the
//! splitting of header values (`:status`, `cookie`). Every length is bounds-checked: a
//! malformed buffer yields `None`, never a panic. Knows nothing of policy or routing.

/// Parse Envoy's pairs encoding: `u32 count`, `count × (u32 key_len, u32 value_len)`, then
/// each key and value followed by a NUL byte.
pub fn parse_pairs(buf: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    parse_pairs_into(buf, &mut out).then_some(out)
}

/// [`parse_pairs`] into a caller's vector (cleared first), so the request path reuses one
/// allocation. Returns `false` (leaving `out` empty) if the buffer is malformed.
pub fn parse_pairs_into<'a>(buf: &'a [u8], out: &mut Vec<(&'a [u8], &'a [u8])>) -> bool {
    out.clear();
    if buf.is_empty() {
        return true;
    }
    let ok = parse(buf, out).is_some();
    if !ok {
        out.clear();
    }
    ok
}

fn parse<'a>(buf: &'a [u8], out: &mut Vec<(&'a [u8], &'a [u8])>) -> Option<()> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = buf.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0)?;
    // Every pair needs at least 8 bytes of sizes and 2 NULs.
    if count > buf.len() / 10 {
        return None;
    }
    out.reserve(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for i in 0..count {
        let klen = u32_at(4 + i * 8)?;
        let vlen = u32_at(8 + i * 8)?;
        let key = buf.get(data..data.checked_add(klen)?)?;
        data = data.checked_add(klen)?;
        if buf.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        let value = buf.get(data..data.checked_add(vlen)?)?;
        data = data.checked_add(vlen)?;
        if buf.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        out.push((key, value));
    }
    Some(())
}

/// An empty vector of pairs with `v`'s allocation and no borrow: how the request path
/// keeps its pairs vector between requests whose header buffers live shorter than it.
pub fn recycle(mut v: Vec<(&[u8], &[u8])>) -> Vec<(&'static [u8], &'static [u8])> {
    v.clear();
    // In-place collection: same element layout, so the buffer is kept.
    v.into_iter().map(|_| (&[][..], &[][..])).collect()
}

/// A `:status` value: exactly three ASCII digits, 100–999 (what Envoy's codecs accept);
/// anything else is `None` (the response then counts as a failure).
pub fn parse_status(s: &[u8]) -> Option<u32> {
    match *s {
        [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Some(u32::from(a - b'0') * 100 + u32::from(b - b'0') * 10 + u32::from(c - b'0'))
        }
        _ => None,
    }
}

/// Iterate over the `name=value` pairs of one `Cookie` header value, each side trimmed of
/// ASCII whitespace and a value's surrounding double quotes removed. A pair without `=`
/// is skipped. Callers must read every `cookie` header: Envoy may pass several.
pub fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        Some((name, value))
    })
}

/// Encode pairs the way Envoy does (used by tests and tools).
pub fn encode_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/x"),
            (b"cookie", b"a=1"),
            (b"cookie", b"\xff\x00"),
        ];
        let buf = encode_pairs(&pairs);
        assert_eq!(parse_pairs(&buf).unwrap(), pairs);
        assert_eq!(parse_pairs(&[]).unwrap(), Vec::<(&[u8], &[u8])>::new());
    }

    #[test]
    fn reused_vector_keeps_its_allocation_and_is_cleared() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x"), (b"cookie", b"a=1")];
        let buf = encode_pairs(&pairs);
        let mut v = Vec::new();
        assert!(parse_pairs_into(&buf, &mut v));
        assert_eq!(v, pairs);
        let cap = v.capacity();
        let ptr = v.as_ptr() as usize;
        let kept = recycle(v);
        assert!(kept.is_empty());
        assert_eq!((kept.capacity(), kept.as_ptr() as usize), (cap, ptr));
        // A malformed buffer leaves the vector empty, not half-filled.
        let mut v: Vec<(&[u8], &[u8])> = kept;
        assert!(!parse_pairs_into(&buf[..buf.len() - 1], &mut v));
        assert!(v.is_empty());
        assert!(parse_pairs_into(&[], &mut v) && v.is_empty());
    }

    #[test]
    fn cookie_parsing() {
        let pairs: Vec<_> = cookie_pairs(b" a=1; sy_aff=\"x.y\" ;junk; b = 2 ;=").collect();
        assert_eq!(
            pairs,
            vec![
                (&b"a"[..], &b"1"[..]),
                (b"sy_aff", b"x.y"),
                (b"b", b"2"),
                (b"", b"")
            ]
        );
    }

    #[test]
    fn status_codes() {
        assert_eq!(parse_status(b"200"), Some(200));
        assert_eq!(parse_status(b"503"), Some(503));
        assert_eq!(parse_status(b"100"), Some(100));
        assert_eq!(parse_status(b"999"), Some(999));
        for bad in [
            &b""[..],
            b"20",
            b"2000",
            b"099",
            b" 200",
            b"20x",
            b"+20",
            b"\xff00",
        ] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn status_matches_std_on_three_digits(n in 0u32..1000) {
            let text = format!("{n:03}");
            prop_assert_eq!(parse_status(text.as_bytes()), (n >= 100).then_some(n));
        }

        #[test]
        fn never_panics_on_garbage(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_pairs(&buf);
        }

        #[test]
        fn truncation_is_detected(n in 1usize..40) {
            let pairs: Vec<(&[u8], &[u8])> = vec![(b"x-a", b"1234567890"), (b"x-b", b"abc")];
            let buf = encode_pairs(&pairs);
            let cut = buf.len().saturating_sub(n);
            prop_assert!(parse_pairs(&buf[..cut]).is_none() || cut == 0);
        }
    }
}
