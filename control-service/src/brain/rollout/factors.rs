//! From a target share to the operator weight factors of two stacks.

use serde::{Deserialize, Serialize};

use super::RolloutError;

/// Operator weight factors (0..=100) of the release and stable stacks that give the
/// release a `share_percent` of the scope, given their policy weights, and the share
/// they actually give (factors are whole numbers).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Factors {
    pub release: u32,
    pub stable: u32,
    pub share_percent: f64,
}

/// The factors closest to `share_percent` for policy weights `release_weight` and
/// `stable_weight`; among equally close ones, the largest (the stacks' other scopes keep
/// as much weight as possible).
pub fn operator_factors(
    share_percent: u32,
    release_weight: u32,
    stable_weight: u32,
) -> Result<Factors, RolloutError> {
    let target = f64::from(share_percent.min(100));
    if share_percent > 0 && release_weight == 0 {
        return Err(RolloutError::Factors("the release has policy weight 0"));
    }
    if share_percent < 100 && stable_weight == 0 {
        return Err(RolloutError::Factors(
            "the stable stack has policy weight 0",
        ));
    }
    if share_percent == 0 {
        return Ok(Factors {
            release: 0,
            stable: 100,
            share_percent: 0.0,
        });
    }
    if share_percent >= 100 {
        return Ok(Factors {
            release: 100,
            stable: 0,
            share_percent: 100.0,
        });
    }
    let (wr, ws) = (f64::from(release_weight), f64::from(stable_weight));
    let mut best = (
        f64::INFINITY,
        0u32,
        Factors {
            release: 0,
            stable: 0,
            share_percent: 0.0,
        },
    );
    for fr in 1..=100u32 {
        for fs in 1..=100u32 {
            let share = 100.0 * wr * f64::from(fr) / (wr * f64::from(fr) + ws * f64::from(fs));
            let err = (share - target).abs();
            let size = fr.max(fs) * 1_000 + fr + fs;
            if err < best.0 - 1e-12 || ((err - best.0).abs() <= 1e-12 && size > best.1) {
                best = (
                    err,
                    size,
                    Factors {
                        release: fr,
                        stable: fs,
                        share_percent: share,
                    },
                );
            }
        }
    }
    Ok(best.2)
}
