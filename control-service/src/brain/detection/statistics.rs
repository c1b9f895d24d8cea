//! The detector's statistics: normal tails, the count tests behind the cross-stack delta
//! and a stack alone in its group, slopes for leading indicators, latency quantiles from
//! histogram buckets.

use super::*;

fn phi_upper(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// How far the KPI rate of `k` events in `n` requests (summed over `windows` windows)
/// is below the baseline, in standard deviations: the Poisson noise of the summed
/// count, plus the spread the baseline has beyond the Poisson noise of one window of
/// `n_window` requests (window-to-window variation, which the sum averages over its
/// windows), at least `kpi_alone_floor` of the median (slow drifts the sum does not
/// average away). 0 when not below.
pub(super) fn alone_kpi_z(
    cfg: &DetectorConfig,
    e: &Expected,
    k: u64,
    n: u64,
    n_window: u64,
    windows: usize,
) -> f64 {
    if n == 0 || n_window == 0 || e.median <= 0.0 {
        return 0.0;
    }
    let rate = k as f64 * 1_000.0 / n as f64;
    let sampling = e.median * 1_000.0 / n as f64;
    let beyond =
        (e.sigma * e.sigma - e.median * 1_000.0 / n_window as f64).max(0.0) / windows.max(1) as f64;
    let sd = (sampling + beyond)
        .sqrt()
        .max(cfg.kpi_alone_floor * e.median)
        .max(1e-6);
    ((e.median - rate) / sd).max(0.0)
}

/// One-sided conditional binomial test of a count against the pooled others: given
/// `k_i + k_o` events over `n_i + n_o` trials, how far is `k_i` above its share
/// (continuity-corrected z, positive when this stack has more).
pub fn count_delta_z(k_i: u64, n_i: u64, k_o: u64, n_o: u64) -> f64 {
    let (n, k) = ((n_i + n_o) as f64, (k_i + k_o) as f64);
    if n == 0.0 || k == 0.0 || n_i == 0 || n_o == 0 {
        return 0.0;
    }
    let pi = n_i as f64 / n;
    let mean = k * pi;
    let sd = (k * pi * (1.0 - pi)).sqrt();
    let d = k_i as f64 - mean;
    let d = d.signum() * (d.abs() - 0.5).max(0.0);
    d / sd
}

/// The z whose upper tail equals P(X ≥ k) for X ~ Poisson(λ) (exact sum for λ ≤ 50,
/// normal approximation above); 0 when k ≤ λ.
pub fn poisson_upper_z(k: u64, lambda: f64) -> f64 {
    if lambda <= 0.0 || (k as f64) <= lambda {
        return 0.0;
    }
    if lambda > 50.0 {
        return (k as f64 - lambda - 0.5).max(0.0) / lambda.sqrt();
    }
    // P(X < k) by summing the pmf; the tail is its complement.
    let (mut term, mut below) = ((-lambda).exp(), 0.0);
    for i in 0..k {
        below += term;
        term *= lambda / (i + 1) as f64;
        if term < 1e-300 {
            break;
        }
    }
    let tail = (1.0 - below).max(1e-300);
    // Invert the normal upper tail by bisection (monotone, 60 steps is exact enough).
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if p_upper(mid) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// Upper-tail p-value of a z.
pub fn p_upper(z: f64) -> f64 {
    phi_upper(z)
}

pub(super) fn slope_fit(points: &[(UnixMs, f64)]) -> Option<(f64, f64, f64)> {
    // Least squares; returns (slope per ms, fitted value at the last point, R²).
    let n = points.len() as f64;
    if points.len() < 5 {
        return None;
    }
    let t0 = points[0].0 as f64;
    let xs: Vec<f64> = points.iter().map(|(t, _)| *t as f64 - t0).collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = points.iter().map(|(_, v)| v).sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = xs
        .iter()
        .zip(points)
        .map(|(x, (_, y))| (x - mx) * (y - my))
        .sum();
    let slope = sxy / sxx;
    let syy: f64 = points.iter().map(|(_, y)| (y - my) * (y - my)).sum();
    let r2 = if syy == 0.0 {
        0.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Some((slope, my + slope * (xs[xs.len() - 1] - mx), r2))
}

/// Quantile (ms) interpolated linearly within its bucket: smoother than the bucket
/// midpoint, whose 25 % steps would look like sudden jumps to a baseline.
pub fn quantile_interpolated(l: &crate::brain::signals::Latency, q: f64) -> Option<f64> {
    use switchyard_filter::histogram::{lower_bound, upper_bound};
    let n: u64 = l.buckets.iter().map(|(_, c)| u64::from(*c)).sum();
    if n == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * n as f64).max(1.0);
    let mut cum = 0.0;
    for (b, c) in &l.buckets {
        let b = usize::from(*b);
        if b >= BUCKETS {
            continue;
        }
        let c = f64::from(*c);
        if cum + c >= rank {
            let lo = lower_bound(b) as f64;
            if b + 1 == BUCKETS {
                return Some(lo / 1_000.0);
            }
            let hi = upper_bound(b) as f64 + 1.0;
            return Some((lo + (rank - cum) / c * (hi - lo)) / 1_000.0);
        }
        cum += c;
    }
    None
}

pub(super) fn requests_above(w: &StackWindow, bucket: usize) -> u64 {
    w.latency
        .buckets
        .iter()
        .filter(|(b, _)| usize::from(*b) > bucket && usize::from(*b) < BUCKETS)
        .map(|(_, c)| u64::from(*c))
        .sum()
}

pub(super) fn latency_total(w: &StackWindow) -> u64 {
    w.latency.buckets.iter().map(|(_, c)| u64::from(*c)).sum()
}
