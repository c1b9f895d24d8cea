//! A line diff for comparing two policy documents on the policy page: the longest
//! common subsequence of lines, reported as kept, removed and added lines in order.
//! Policies are small (a few hundred lines); above [`MAX_CELLS`] the table would be too
//! big, and the diff falls back to "everything removed, everything added".

use serde::Serialize;

/// Largest LCS table (lines × lines) computed.
const MAX_CELLS: usize = 4_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Same,
    Removed,
    Added,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub op: Op,
    pub text: String,
}

/// The lines of `a` and `b` as one edit script from `a` to `b`.
pub fn lines(a: &str, b: &str) -> Vec<Line> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // Common prefix and suffix first: most policy edits touch a few lines.
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let line = |op, text: &str| Line {
        op,
        text: text.to_string(),
    };
    let mut out: Vec<Line> = a[..prefix].iter().map(|t| line(Op::Same, t)).collect();
    if (ma.len() + 1).saturating_mul(mb.len() + 1) > MAX_CELLS {
        out.extend(ma.iter().map(|t| line(Op::Removed, t)));
        out.extend(mb.iter().map(|t| line(Op::Added, t)));
    } else {
        // lcs[i][j]: LCS length of ma[i..] and mb[j..].
        let w = mb.len() + 1;
        let mut lcs = vec![0u32; (ma.len() + 1) * w];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                lcs[i * w + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() || j < mb.len() {
            if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
                out.push(line(Op::Same, ma[i]));
                i += 1;
                j += 1;
            } else if i < ma.len() && (j == mb.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1])
            {
                // Removals before additions on a tie: reads as "this became that".
                out.push(line(Op::Removed, ma[i]));
                i += 1;
            } else {
                out.push(line(Op::Added, mb[j]));
                j += 1;
            }
        }
    }
    out.extend(a[a.len() - suffix..].iter().map(|t| line(Op::Same, t)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(script: &[Line], side: Op) -> Vec<String> {
        script
            .iter()
            .filter(|l| l.op == Op::Same || l.op == side)
            .map(|l| l.text.clone())
            .collect()
    }

    #[test]
    fn the_script_rebuilds_both_sides_and_keeps_common_lines() {
        let a = "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 3\n}";
        let b = "{\n  \"a\": 1,\n  \"b\": 20,\n  \"c\": 3,\n  \"d\": 4\n}";
        let d = lines(a, b);
        assert_eq!(apply(&d, Op::Removed), a.lines().collect::<Vec<_>>());
        assert_eq!(apply(&d, Op::Added), b.lines().collect::<Vec<_>>());
        let changed: Vec<(Op, &str)> = d
            .iter()
            .filter(|l| l.op != Op::Same)
            .map(|l| (l.op, l.text.as_str()))
            .collect();
        assert_eq!(
            changed,
            vec![
                (Op::Removed, "  \"b\": 2,"),
                (Op::Removed, "  \"c\": 3"),
                (Op::Added, "  \"b\": 20,"),
                (Op::Added, "  \"c\": 3,"),
                (Op::Added, "  \"d\": 4"),
            ]
        );
        assert!(lines(a, a).iter().all(|l| l.op == Op::Same));
    }

    #[test]
    fn interleaved_edits_are_minimal() {
        let a = "x\n1\ny\n2\nz";
        let b = "x\ny\n3\nz";
        let d = lines(a, b);
        assert_eq!(apply(&d, Op::Removed), a.lines().collect::<Vec<_>>());
        assert_eq!(apply(&d, Op::Added), b.lines().collect::<Vec<_>>());
        assert_eq!(d.iter().filter(|l| l.op == Op::Same).count(), 3);
    }
}
