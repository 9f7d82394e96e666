//! Picking a target, purely: the weighted round-robin cycle (proportionally fair: every
//! prefix within one pick of each share; built once per config), weighted random, weighted rendezvous hashing (sticky, minimal
//! disruption on weight changes) and least-requests relative to weight.

/// The weighted round-robin cycle over the targets: position n of the cycle names a target
/// index; over any run of positions each target is within one pick of its share.
/// Weights are divided by their gcd, so the cycle is as short as the proportions allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrrTable {
    sequence: Vec<u16>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl WrrTable {
    /// Builds the cycle; None if it would exceed 1,000,000 picks.
    pub fn build(weights: &[u32]) -> Option<WrrTable> {
        let g = weights
            .iter()
            .filter(|w| **w > 0)
            .fold(0u64, |g, w| gcd(g, *w as u64));
        if g == 0 {
            return None;
        }
        let reduced: Vec<i64> = weights.iter().map(|w| (*w as u64 / g) as i64).collect();
        let total: i64 = reduced.iter().sum();
        if total > 1_000_000 {
            return None;
        }
        // A proportionally fair (Pfair) cycle: target i's j-th pick belongs in the window
        // [floor((j-1)·W/w_i), ceil(j·W/w_i)) of cycle positions, and each position goes to
        // the released pick with the earliest window end (ties: heavier target, then lower
        // index). With the weights summing to the cycle length, earliest-deadline-first meets
        // every window (Baruah et al., Pfair scheduling), so after any n picks every target
        // has within 1 of n·w_i/W — NGINX's smooth WRR can drift past 1 for some weight sets
        // (6:4:17:17:8:17:1 reaches 1.014, found by the property test below).
        let total_u = total as u64;
        let mut picked = vec![0u64; reduced.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for slot in 0..total_u {
            let mut best: Option<(u64, i64, usize)> = None;
            for (i, w) in reduced.iter().enumerate() {
                let w_u = *w as u64;
                if w_u == 0 || picked[i] >= w_u {
                    continue;
                }
                let j = picked[i] + 1;
                let release = (j - 1) * total_u / w_u;
                if release > slot {
                    continue;
                }
                let deadline = (j * total_u).div_ceil(w_u);
                let key = (deadline, -*w, i);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
            // Never None: EDF meets every window (see above); `?` keeps it total.
            let (_, _, chosen) = best?;
            picked[chosen] += 1;
            sequence.push(chosen as u16);
        }
        Some(WrrTable { sequence })
    }

    pub fn len(&self) -> usize {
        self.sequence.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequence.is_empty()
    }

    /// The target at cycle position `n` (any n; the cycle repeats).
    pub fn at(&self, n: u64) -> usize {
        self.sequence
            .get((n % self.sequence.len().max(1) as u64) as usize)
            .copied()
            .unwrap_or(0) as usize
    }

    /// The first target at or after position `n` that is available, within one cycle;
    /// also returns how many positions were skipped. None if nothing is available.
    pub fn next_available(
        &self,
        n: u64,
        mut available: impl FnMut(usize) -> bool,
    ) -> Option<(usize, u64)> {
        let mut checked: u64 = 0; // bit set of targets already found unavailable (≤ 64)
        for skip in 0..self.sequence.len() as u64 {
            let target = self.at(n + skip);
            if checked & (1 << target) != 0 {
                continue;
            }
            if available(target) {
                return Some((target, skip));
            }
            checked |= 1 << target;
        }
        None
    }
}

/// A weighted random pick from a uniform `random`: target i with probability w_i / W.
pub fn weighted_random(weights: &[u32], random: u64) -> usize {
    let total: u64 = weights.iter().map(|w| *w as u64).sum();
    let mut x = ((random as u128 * total as u128) >> 64) as u64;
    for (i, w) in weights.iter().enumerate() {
        if x < *w as u64 {
            return i;
        }
        x -= *w as u64;
    }
    weights.iter().rposition(|w| *w > 0).unwrap_or(0)
}

/// splitmix64's finalizer: a strong 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const LN_TABLE_BITS: u32 = 12;

/// ln(1 + k/4096) for k in 0..=4096, built once per VM.
fn ln_table() -> &'static [f64] {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=(1u32 << LN_TABLE_BITS))
            .map(|k| (1.0 + k as f64 / (1u32 << LN_TABLE_BITS) as f64).ln())
            .collect()
    })
}

/// −ln(u) for u in (0, 1): exponent × ln 2 plus ln of the mantissa, linearly interpolated
/// in a 4096-step table (absolute error < 10⁻⁸, no division). Strictly monotonic, which is
/// what rendezvous hashing's stability needs; the accuracy keeps weights honoured.
fn neg_ln_with(table: &[f64], u: f64) -> f64 {
    let bits = u.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mantissa = bits & 0x000f_ffff_ffff_ffff;
    let index = (mantissa >> (52 - LN_TABLE_BITS)) as usize;
    let fraction = (mantissa & ((1u64 << (52 - LN_TABLE_BITS)) - 1)) as f64
        * (1.0 / (1u64 << (52 - LN_TABLE_BITS)) as f64);
    let (low, high) = match (table.get(index), table.get(index + 1)) {
        (Some(low), Some(high)) => (*low, *high),
        _ => return -u.ln(),
    };
    -(exponent as f64 * std::f64::consts::LN_2 + low + (high - low) * fraction)
}

/// Weighted rendezvous hashing: each target scores w / −ln(u), u uniform in (0, 1) from
/// hash(target, key); the highest score wins. Raising one target's weight only raises its
/// own scores, so keys move only towards it; removing a target moves only its keys.
pub fn rendezvous(
    weights: &[u32],
    target_seeds: &[u64],
    key_hash: u64,
    available: impl Fn(usize) -> bool,
) -> Option<usize> {
    // Best so far as (index, weight, −ln u); compare w_i / l_i > w_b / l_b as w_i·l_b > w_b·l_i.
    let table = ln_table();
    let mut best: Option<(usize, f64, f64)> = None;
    for (i, (w, seed)) in weights.iter().zip(target_seeds).enumerate() {
        if *w == 0 || !available(i) {
            continue;
        }
        let u = ((mix(seed ^ key_hash) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        let (weight, l) = (*w as f64, neg_ln_with(table, u));
        if best.is_none_or(|(_, wb, lb)| weight * lb > wb * l) {
            best = Some((i, weight, l));
        }
    }
    best.map(|(i, _, _)| i)
}

/// The available target with the fewest in-flight requests relative to its weight:
/// minimal (in_flight + 1) / weight, compared exactly; ties go to the larger weight.
pub fn least_requests(
    weights: &[u32],
    in_flight: &[u32],
    available: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, w) in weights.iter().enumerate() {
        if *w == 0 || !available(i) {
            continue;
        }
        let load = |j: usize| {
            (
                in_flight.get(j).copied().unwrap_or(0) as u64 + 1,
                weights[j] as u64,
            )
        };
        best = match best {
            None => Some(i),
            Some(b) => {
                let ((ci, wi), (cb, wb)) = (load(i), load(b));
                if ci * wb < cb * wi || (ci * wb == cb * wi && wi > wb) {
                    Some(i)
                } else {
                    Some(b)
                }
            }
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrr_interleaves() {
        let t = WrrTable::build(&[5, 1, 1]).unwrap();
        let seq: Vec<usize> = (0..7).map(|n| t.at(n)).collect();
        assert_eq!(
            seq,
            [0, 0, 0, 1, 0, 0, 2],
            "each pick in its window: a a a b a a c"
        );
        let t = WrrTable::build(&[1, 1]).unwrap();
        assert_eq!((0..4).map(|n| t.at(n)).collect::<Vec<_>>(), [0, 1, 0, 1]);
        // Where NGINX's smooth WRR drifts 1.014 picks from the share (target 5, pick 33).
        let weights = [6u32, 4, 17, 17, 8, 17, 1];
        let t = WrrTable::build(&weights).unwrap();
        let mut counts = [0f64; 7];
        for n in 0..70u64 {
            counts[t.at(n)] += 1.0;
            for (c, w) in counts.iter().zip(weights) {
                assert!((c - (n + 1) as f64 * w as f64 / 70.0).abs() < 1.0);
            }
        }
        assert_eq!(
            WrrTable::build(&[90, 10]).unwrap().len(),
            10,
            "gcd-reduced cycle"
        );
        assert_eq!(WrrTable::build(&[0, 3]).unwrap().len(), 1);
        assert!(WrrTable::build(&[0, 0]).is_none());
    }

    #[test]
    fn failover_skips_unavailable_targets_in_cycle_order() {
        let t = WrrTable::build(&[70, 20, 10]).unwrap();
        let counts = (0..10).fold([0; 3], |mut c, n| {
            c[t.next_available(n, |i| i != 1).unwrap().0] += 1;
            c
        });
        assert_eq!(counts[1], 0);
        assert_eq!(counts[0] + counts[2], 10);
        assert!(t.next_available(0, |_| false).is_none());
    }

    #[test]
    fn the_fast_logarithm_is_accurate_and_monotonic() {
        let mut previous = f64::INFINITY;
        for i in 1..100_000u64 {
            let u = i as f64 / 100_000.0;
            let approx = neg_ln_with(ln_table(), u);
            assert!(
                (approx + u.ln()).abs() < 1e-8,
                "{u}: {approx} vs {}",
                -u.ln()
            );
            assert!(approx < previous, "strictly decreasing in u at {u}");
            previous = approx;
        }
    }

    #[test]
    fn hashing_honours_weights() {
        let weights = [70, 20, 10];
        let seeds = [mix(1), mix(2), mix(3)];
        let mut counts = [0u32; 3];
        for key in 0..100_000u64 {
            counts[rendezvous(&weights, &seeds, mix(key ^ 0xabc), |_| true).unwrap()] += 1;
        }
        for (c, w) in counts.iter().zip(weights) {
            assert!((*c as f64 / 1000.0 - w as f64).abs() < 1.0, "{counts:?}");
        }
    }

    #[test]
    fn weighted_random_covers_the_range() {
        assert_eq!(weighted_random(&[1, 0, 1], 0), 0);
        assert_eq!(weighted_random(&[1, 0, 1], u64::MAX), 2);
        assert_eq!(weighted_random(&[0, 5], 123), 1);
    }

    #[test]
    fn least_requests_is_relative_to_weight() {
        assert_eq!(
            least_requests(&[1, 3], &[0, 2], |_| true),
            Some(1),
            "(0+1)/1 = 1 > (2+1)/3 = 1? tie goes to weight 3"
        );
        assert_eq!(least_requests(&[1, 3], &[0, 3], |_| true), Some(0));
        assert_eq!(least_requests(&[1, 1], &[5, 0], |i| i == 0), Some(0));
    }

    proptest! {
        /// Over any prefix of the cycle, each target's count is within 1 of its share, and
        /// over a whole cycle it is exact.
        #[test]
        fn wrr_proportions_and_interleaving(weights in prop::collection::vec(0u32..20, 1..8)) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let t = WrrTable::build(&weights).unwrap();
            let total: f64 = weights.iter().map(|w| *w as f64).sum();
            let mut counts = vec![0u64; weights.len()];
            for n in 0..t.len() as u64 * 2 {
                counts[t.at(n)] += 1;
                for (i, c) in counts.iter().enumerate() {
                    let share = (n + 1) as f64 * weights[i] as f64 / total;
                    prop_assert!((*c as f64 - share).abs() < 1.0 + 1e-9, "target {i}: {c} vs {share} after {}", n + 1);
                }
            }
        }

        /// Raising one target's weight only moves keys to that target.
        #[test]
        fn hash_moves_only_towards_the_grown_target(weights in prop::collection::vec(1u32..100, 2..8), grow in 0usize..8, extra in 1u32..200) {
            let grow = grow % weights.len();
            let seeds: Vec<u64> = (0..weights.len() as u64).map(|i| mix(i + 1)).collect();
            let mut bigger = weights.clone();
            bigger[grow] += extra;
            for key in 0..300u64 {
                let before = rendezvous(&weights, &seeds, mix(key), |_| true).unwrap();
                let after = rendezvous(&bigger, &seeds, mix(key), |_| true).unwrap();
                prop_assert!(before == after || after == grow);
            }
        }

        /// Least requests keeps in-flight counts proportional to weight.
        #[test]
        fn least_requests_balances(weights in prop::collection::vec(1u32..10, 2..6), n in 50usize..400) {
            let mut in_flight = vec![0u32; weights.len()];
            for _ in 0..n {
                let i = least_requests(&weights, &in_flight, |_| true).unwrap();
                in_flight[i] += 1;
            }
            let total: u32 = weights.iter().sum();
            for (i, c) in in_flight.iter().enumerate() {
                let share = n as f64 * weights[i] as f64 / total as f64;
                prop_assert!((*c as f64 - share).abs() <= weights.len() as f64, "{c} vs {share}");
            }
        }
    }
}
