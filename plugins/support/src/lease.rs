//! Counts held by streams (queue places, in-flight requests) kept as leases in one
//! shared-data value: each count is taken in a lease window and counted through the next
//! one, so counts whose holder died (its VM trapped or was replaced) expire instead of
//! leaking for ever. Layout: window (u64 LE), then the previous and the current window's
//! counts (u32 LE each).

/// `n` counts as of a lease window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedCounts {
    window: u64,
    previous: Vec<u32>,
    current: Vec<u32>,
}

impl LeasedCounts {
    /// Reads `n` counts; anything else (absent, another layout) is all zero.
    pub fn decode(value: Option<&[u8]>, n: usize) -> LeasedCounts {
        let mut counts = LeasedCounts {
            window: 0,
            previous: vec![0; n],
            current: vec![0; n],
        };
        let Some(bytes) = value.filter(|b| b.len() == 8 + 8 * n) else {
            return counts;
        };
        let word = |at: usize| crate::le::u32_at(bytes, at).unwrap_or(0);
        counts.window = crate::le::u64_at(bytes, 0).unwrap_or(0);
        for i in 0..n {
            counts.previous[i] = word(8 + 4 * i);
            counts.current[i] = word(8 + 4 * n + 4 * i);
        }
        counts
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.window.to_le_bytes().to_vec();
        for c in self.previous.iter().chain(&self.current) {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// The counts as of lease window `window`: older windows' counts are dropped.
    pub fn at(mut self, window: u64) -> LeasedCounts {
        if self.window != window {
            let n = self.current.len();
            let current = std::mem::replace(&mut self.current, vec![0; n]);
            self.previous = if self.window.wrapping_add(1) == window {
                current
            } else {
                vec![0; n]
            };
            self.window = window;
        }
        self
    }

    /// Live counts: the previous window's and the current one's.
    pub fn totals(&self) -> Vec<u32> {
        self.previous
            .iter()
            .zip(&self.current)
            .map(|(p, c)| p.saturating_add(*c))
            .collect()
    }

    /// Takes one more of count `i` in the current window.
    pub fn take(&mut self, i: usize) {
        if let Some(c) = self.current.get_mut(i) {
            *c = c.saturating_add(1);
        }
    }

    /// Gives back one of count `i` taken in window `taken`; false (nothing changed) when that
    /// lease already expired.
    pub fn give_back(&mut self, i: usize, taken: u64) -> bool {
        let counts = if taken == self.window {
            &mut self.current
        } else if taken.wrapping_add(1) == self.window {
            &mut self.previous
        } else {
            return false;
        };
        if let Some(c) = counts.get_mut(i) {
            *c = c.saturating_sub(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_live_through_the_next_window_then_expire() {
        let mut counts = LeasedCounts::decode(None, 2).at(10);
        counts.take(1);
        counts.take(1);
        let counts = LeasedCounts::decode(Some(&counts.encode()), 2);
        assert_eq!(counts.clone().at(11).totals(), vec![0, 2]);
        assert_eq!(counts.clone().at(12).totals(), vec![0, 0]);
        let mut next = counts.at(11);
        assert!(next.give_back(1, 10), "from the previous window");
        assert!(!next.give_back(1, 9), "expired: nothing to give back");
        assert_eq!(next.totals(), vec![0, 1]);
        assert_eq!(LeasedCounts::decode(Some(b"short"), 2).totals(), vec![0, 0]);
    }
}
