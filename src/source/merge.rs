//! PURE. A merge-join cursor: the parent snapshot's entries, read once in
//! the order the source visits its own items, looked up item by item
//! without ever holding the parent whole.
//!
//! The cursor does no I/O: [`Merge::step`] says whether the next parent
//! item is needed, and the caller fetches it (synchronously, as the files
//! source does with [`Merge::find`], or with an `.await`, as the bucket
//! source does) and hands it over with [`Merge::feed`]. The ordering is the
//! caller's: `cmp(parent_item)` compares a parent item with the item being
//! looked up, in the order both lists share (walk order for files, (bucket,
//! key) byte order for buckets).
//!
//! Lookups must come in increasing order. One that comes out of order (or
//! a parent list that is not in order) just finds nothing, never a wrong
//! item: the source then reads that item again, which costs time only.

use std::cmp::Ordering;

use crate::error::Result;

/// The cursor's state: at most one parent item held.
#[derive(Debug)]
pub struct Merge<T> {
    current: Option<T>,
    done: bool,
}

/// What [`Merge::step`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// The parent item equal to the one looked up.
    Found(T),
    /// The parent has no such item.
    Absent,
    /// The next parent item is needed: [`Merge::feed`] it, then step again.
    Need,
}

impl<T> Default for Merge<T> {
    fn default() -> Self {
        Merge {
            current: None,
            done: false,
        }
    }
}

impl<T> Merge<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// One step of a lookup: `cmp(p)` orders parent item `p` against the
    /// item looked up. Parent items before it are dropped.
    pub fn step(&mut self, cmp: impl Fn(&T) -> Ordering) -> Step<T> {
        loop {
            let Some(cur) = &self.current else {
                return if self.done { Step::Absent } else { Step::Need };
            };
            match cmp(cur) {
                Ordering::Less => self.current = None,
                Ordering::Equal => return Step::Found(self.current.take().expect("held")),
                Ordering::Greater => return Step::Absent,
            }
        }
    }

    /// The next parent item, `None` at the end of the parent's list (or
    /// when the caller gives up on it: nothing more is then found).
    pub fn feed(&mut self, next: Option<T>) {
        self.done = next.is_none();
        self.current = next;
    }

    /// A whole lookup with a synchronous source of parent items.
    pub fn find(
        &mut self,
        cmp: impl Fn(&T) -> Ordering,
        mut next: impl FnMut() -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        loop {
            match self.step(&cmp) {
                Step::Found(t) => return Ok(Some(t)),
                Step::Absent => return Ok(None),
                Step::Need => self.feed(next()?),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn lookups(parent: &BTreeSet<u16>, probes: &BTreeSet<u16>) -> Vec<(u16, Option<u16>)> {
        let mut it = parent.iter().copied();
        let mut m = Merge::new();
        probes
            .iter()
            .map(|&p| {
                let got = m.find(|x: &u16| x.cmp(&p), || Ok(it.next())).unwrap();
                (p, got)
            })
            .collect()
    }

    #[test]
    fn finds_what_is_there_and_nothing_else() {
        let parent: BTreeSet<u16> = [1, 3, 5, 9].into();
        let probes: BTreeSet<u16> = [0, 3, 4, 9, 10].into();
        assert_eq!(
            lookups(&parent, &probes),
            vec![(0, None), (3, Some(3)), (4, None), (9, Some(9)), (10, None)]
        );
    }

    #[test]
    fn a_lookup_out_of_order_finds_nothing_and_the_next_ones_still_work() {
        let mut it = [1u16, 2, 3, 4].into_iter();
        let mut m = Merge::new();
        let mut find = |p: u16| m.find(|x: &u16| x.cmp(&p), || Ok(it.next())).unwrap();
        assert_eq!(find(3), Some(3));
        assert_eq!(find(1), None); // passed already
        assert_eq!(find(4), Some(4));
        assert_eq!(find(5), None);
        assert_eq!(find(6), None);
    }

    #[test]
    fn a_parent_given_up_on_finds_nothing_more() {
        let mut m = Merge::new();
        assert_eq!(m.step(|x: &u16| x.cmp(&1)), Step::Need);
        m.feed(None);
        assert_eq!(m.step(|x: &u16| x.cmp(&1)), Step::Absent);
        assert_eq!(m.step(|x: &u16| x.cmp(&7)), Step::Absent);
    }

    proptest! {
        /// Increasing lookups find exactly the items of the parent (the
        /// merge-join equals a set intersection), and each parent item is
        /// read at most once.
        #[test]
        fn increasing_lookups_equal_set_membership(
            parent in proptest::collection::btree_set(0u16..500, 0..200),
            probes in proptest::collection::btree_set(0u16..500, 0..200),
        ) {
            let mut reads = 0;
            let mut it = parent.iter().copied();
            let mut m = Merge::new();
            for &p in &probes {
                let got = m.find(|x: &u16| x.cmp(&p), || { reads += 1; Ok(it.next()) }).unwrap();
                prop_assert_eq!(got, parent.contains(&p).then_some(p));
            }
            prop_assert!(reads <= parent.len() + 1);
        }

        /// Lookups in any order never find a wrong item.
        #[test]
        fn any_lookups_never_find_a_wrong_item(
            parent in proptest::collection::btree_set(0u16..100, 0..60),
            probes in proptest::collection::vec(0u16..100, 0..60),
        ) {
            let mut it = parent.iter().copied();
            let mut m = Merge::new();
            for &p in &probes {
                if let Some(got) = m.find(|x: &u16| x.cmp(&p), || Ok(it.next())).unwrap() {
                    prop_assert_eq!(got, p);
                }
            }
        }
    }
}
