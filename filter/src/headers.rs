//! Envoy's serialized header-map encoding, parsed in place. Every length is bounds-checked:
//! a malformed buffer yields `None`, never a panic.

/// Parse Envoy's pairs encoding: `u32 count`, `count × (u32 key_len, u32 value_len)`, then
/// each key and value followed by a NUL byte.
pub fn parse_pairs(buf: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = buf.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if buf.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(0)?;
    // Every pair needs at least 8 bytes of sizes and 2 NULs.
    if count > buf.len() / 10 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
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
    Some(out)
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
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x"), (b"cookie", b"a=1"), (b"cookie", b"\xff\x00")];
        let buf = encode_pairs(&pairs);
        assert_eq!(parse_pairs(&buf).unwrap(), pairs);
        assert_eq!(parse_pairs(&[]).unwrap(), Vec::<(&[u8], &[u8])>::new());
    }

    proptest! {
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
