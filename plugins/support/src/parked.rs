//! Requests an adapter holds (paused) until a time: parked with a due time and what the
//! adapter needs to let them go, taken back when due on the root context's tick, or when
//! their client leaves. The root ticks while anything is parked.

/// One parked request.
#[derive(Debug)]
struct Entry<T> {
    context_id: u32,
    due: u64,
    item: T,
}

/// Parked requests, in the order they were parked.
#[derive(Debug)]
pub struct Parked<T> {
    entries: Vec<Entry<T>>,
}

impl<T> Default for Parked<T> {
    fn default() -> Self {
        Parked {
            entries: Vec::new(),
        }
    }
}

impl<T> Parked<T> {
    /// Holds stream `context_id` until `due` (the caller's clock), with `item`.
    pub fn park(&mut self, context_id: u32, due: u64, item: T) {
        self.entries.push(Entry {
            context_id,
            due,
            item,
        });
    }

    /// Takes every request due at `now` (due ≤ now), in the order they were parked.
    pub fn take_due(&mut self, now: u64) -> Vec<(u32, T)> {
        let (due, keep): (Vec<Entry<T>>, Vec<Entry<T>>) =
            self.entries.drain(..).partition(|e| e.due <= now);
        self.entries = keep;
        due.into_iter().map(|e| (e.context_id, e.item)).collect()
    }

    /// Takes every parked request with its due time (to look at each again and park the
    /// ones that keep waiting).
    pub fn take_all(&mut self) -> Vec<(u32, u64, T)> {
        self.entries
            .drain(..)
            .map(|e| (e.context_id, e.due, e.item))
            .collect()
    }

    /// Takes stream `context_id`'s request (its client left, or it was let go another way).
    pub fn take(&mut self, context_id: u32) -> Option<T> {
        let position = self
            .entries
            .iter()
            .position(|e| e.context_id == context_id)?;
        Some(self.entries.remove(position).item)
    }

    /// Drops the requests `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.entries.retain(|e| keep(&e.item));
    }

    /// The earliest due time, if anything is parked.
    pub fn next_due(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.due).min()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn due_requests_come_back_in_parking_order() {
        let mut parked = Parked::default();
        parked.park(1, 30, "a");
        parked.park(2, 10, "b");
        parked.park(3, 20, "c");
        assert_eq!(parked.next_due(), Some(10));
        assert_eq!(parked.take_due(5), vec![]);
        assert_eq!(parked.take_due(20), vec![(2, "b"), (3, "c")]);
        assert_eq!(parked.len(), 1);
        assert_eq!(parked.take(1), Some("a"));
        assert_eq!(parked.take(1), None);
        assert!(parked.is_empty());
        assert_eq!(parked.next_due(), None);
    }

    #[test]
    fn take_all_and_retain() {
        let mut parked = Parked::default();
        parked.park(1, 30, 1);
        parked.park(2, 10, 2);
        parked.retain(|n| *n != 1);
        assert_eq!(parked.take_all(), vec![(2, 10, 2)]);
        assert!(parked.is_empty());
    }

    proptest! {
        /// Every parked request comes back exactly once: due at its time, or taken.
        #[test]
        fn nothing_is_lost_or_doubled(
            dues in proptest::collection::vec(0u64..100, 0..40),
            now in 0u64..100,
            left in proptest::collection::vec(0u32..40, 0..10),
        ) {
            let mut parked = Parked::default();
            for (i, due) in dues.iter().enumerate() {
                parked.park(i as u32, *due, i);
            }
            let mut seen: Vec<usize> = left.iter().filter_map(|c| parked.take(*c)).collect();
            let due = parked.take_due(now);
            prop_assert!(due.iter().all(|(c, i)| dues[*i] <= now && *c as usize == *i));
            seen.extend(due.into_iter().map(|(_, i)| i));
            prop_assert!(parked.next_due().is_none_or(|d| d > now));
            seen.extend(parked.take_all().into_iter().map(|(_, _, i)| i));
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..dues.len()).collect::<Vec<_>>());
        }
    }
}
