//! The pure side of delta push: what changed between two views ([`diff`]),
//! the bounded record of recent changes ([`History`]) and what one node
//! must be sent to reach the current version from the one it holds
//! ([`plan`]). No I/O, no clock: the session in `push::stream` executes the
//! plan.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// How many versions a controller can resume from.
pub const HISTORY: usize = 256;

/// What changed from one view to the next, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<K> {
    pub added: BTreeSet<K>,
    pub changed: BTreeSet<K>,
    pub removed: BTreeSet<K>,
}

impl<K: Ord + Clone> Diff<K> {
    /// Every key a node must hear about.
    pub fn touched(&self) -> BTreeSet<K> {
        let mut all = self.added.clone();
        all.extend(self.changed.iter().cloned());
        all.extend(self.removed.iter().cloned());
        all
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The added, changed and removed resources from `old` to `new`, in one
/// ordered walk of both (a shared allocation is unchanged without a look
/// at its content).
pub fn diff<K: Ord + Clone, V: PartialEq>(
    old: &BTreeMap<K, Arc<V>>,
    new: &BTreeMap<K, Arc<V>>,
) -> Diff<K> {
    let mut d = Diff {
        added: BTreeSet::new(),
        changed: BTreeSet::new(),
        removed: BTreeSet::new(),
    };
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                d.removed.insert((*k).clone());
                a.next();
            }
            (None, Some((k, _))) => {
                d.added.insert((*k).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    d.removed.insert((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    d.added.insert((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) && va != vb {
                        d.changed.insert((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    d
}

/// The keys touched by each of the last [`HISTORY`] versions that changed
/// anything; a node holding one of these versions resumes from it.
#[derive(Debug, Clone)]
pub struct History<K> {
    cap: usize,
    /// `(version, keys that changed to make it)`, oldest first.
    entries: VecDeque<(u64, Arc<BTreeSet<K>>)>,
}

impl<K: Ord + Clone> History<K> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            entries: VecDeque::new(),
        }
    }

    /// Records that `version` changed `touched` (the first version of a
    /// controller records everything, or nothing: it is only a base).
    pub fn push(&mut self, version: u64, touched: BTreeSet<K>) {
        if self.entries.len() == self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back((version, Arc::new(touched)));
    }

    pub fn latest(&self) -> Option<u64> {
        self.entries.back().map(|e| e.0)
    }

    /// Every key touched after `from`, or why `from` cannot be resumed.
    pub fn since(&self, from: u64) -> Result<BTreeSet<K>, String> {
        let Some(pos) = self.entries.iter().position(|(v, _)| *v == from) else {
            let oldest = self.entries.front().map_or(0, |e| e.0);
            let latest = self.latest().unwrap_or(0);
            return Err(if from > latest {
                format!("version {from} is newer than this controller's latest, {latest}")
            } else if from < oldest {
                format!(
                    "version {from} is older than the {} versions this controller keeps (oldest {oldest})",
                    self.entries.len()
                )
            } else {
                format!("version {from} was never published by this controller")
            });
        };
        let mut keys = BTreeSet::new();
        for (_, touched) in self.entries.iter().skip(pos + 1) {
            keys.extend(touched.iter().cloned());
        }
        Ok(keys)
    }
}

/// What a node says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The controller run that made `version`.
    pub epoch: String,
    /// 0: nothing.
    pub version: u64,
}

/// What to send one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K> {
    /// `Some(reason)`: the whole state (in scope), because of `reason`.
    pub full: Option<String>,
    pub upserts: Vec<K>,
    pub removals: Vec<K>,
}

impl<K> Plan<K> {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.full.is_none() && self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// What takes a node from `held` to `current` (this controller's `epoch`):
/// the resources touched since its version, or, when its version cannot be
/// resumed from, the whole state with the reason. Only keys `in_scope`
/// are ever named, removals included.
pub fn plan<K: Ord + Clone, V>(
    held: &Held,
    epoch: &str,
    history: &History<K>,
    current: &BTreeMap<K, V>,
    in_scope: impl Fn(&K) -> bool,
) -> Plan<K> {
    let resumed = if held.version == 0 {
        Err("first subscription".to_owned())
    } else if held.epoch != epoch {
        Err(format!(
            "version {} is from another controller run (epoch {:?}, this is {epoch:?})",
            held.version, held.epoch
        ))
    } else {
        history.since(held.version)
    };
    match resumed {
        Ok(keys) => {
            let (upserts, removals) = keys
                .into_iter()
                .filter(|k| in_scope(k))
                .partition(|k| current.contains_key(k));
            Plan {
                full: None,
                upserts,
                removals,
            }
        }
        Err(reason) => Plan {
            full: Some(reason),
            upserts: current.keys().filter(|k| in_scope(k)).cloned().collect(),
            removals: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entries: &[(&'static str, u32)]) -> BTreeMap<&'static str, Arc<u32>> {
        entries.iter().map(|(k, v)| (*k, Arc::new(*v))).collect()
    }

    fn set(keys: &[&'static str]) -> BTreeSet<&'static str> {
        keys.iter().copied().collect()
    }

    #[test]
    fn the_diff_names_added_changed_and_removed_resources() {
        // (old, new, added, changed, removed)
        type Case = (
            &'static [(&'static str, u32)],
            &'static [(&'static str, u32)],
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (&[], &[], &[], &[], &[]),
            (&[], &[("a", 1)], &["a"], &[], &[]),
            (&[("a", 1)], &[], &[], &[], &["a"]),
            (
                &[("a", 1), ("b", 2)],
                &[("a", 1), ("b", 3)],
                &[],
                &["b"],
                &[],
            ),
            (
                &[("a", 1), ("c", 3), ("e", 5)],
                &[("b", 2), ("c", 4), ("e", 5), ("f", 6)],
                &["b", "f"],
                &["c"],
                &["a"],
            ),
            (&[("a", 1), ("b", 2)], &[("a", 1), ("b", 2)], &[], &[], &[]),
        ];
        for (old, new, added, changed, removed) in cases {
            let d = diff(&view(old), &view(new));
            assert_eq!(d.added, set(added), "{old:?} -> {new:?}");
            assert_eq!(d.changed, set(changed), "{old:?} -> {new:?}");
            assert_eq!(d.removed, set(removed), "{old:?} -> {new:?}");
            assert_eq!(
                d.is_empty(),
                added.is_empty() && changed.is_empty() && removed.is_empty()
            );
        }
        let shared = view(&[("a", 1)]);
        assert!(diff(&shared, &shared.clone()).is_empty());
    }

    fn history() -> History<&'static str> {
        let mut h = History::new(3);
        h.push(10, set(&[]));
        h.push(11, set(&["a"]));
        h.push(12, set(&["b", "c"]));
        h
    }

    #[test]
    fn history_resumes_from_kept_versions_and_says_why_not_otherwise() {
        let h = history();
        assert_eq!(h.since(12), Ok(set(&[])));
        assert_eq!(h.since(11), Ok(set(&["b", "c"])));
        assert_eq!(h.since(10), Ok(set(&["a", "b", "c"])));
        assert!(h.since(13).unwrap_err().contains("newer"));
        assert!(
            h.since(5)
                .unwrap_err()
                .contains("older than the 3 versions")
        );
        assert!(h.since(115).unwrap_err().contains("newer"));
        let mut h = h;
        h.push(20, set(&["d"]));
        assert!(h.since(10).unwrap_err().contains("older"), "10 fell out");
        assert!(h.since(15).unwrap_err().contains("never published"));
        assert_eq!(h.since(11), Ok(set(&["b", "c", "d"])));
    }

    #[test]
    fn a_plan_resumes_sends_everything_in_scope_or_says_why_it_cannot() {
        let h = history();
        let now: BTreeMap<&str, u32> = [("a", 1), ("c", 3), ("x", 9)].into_iter().collect();
        fn all(_: &&str) -> bool {
            true
        }
        fn no_x(k: &&str) -> bool {
            *k != "x" && *k != "c"
        }
        let held = |epoch: &str, version| Held {
            epoch: epoch.into(),
            version,
        };
        // (held, scope, full reason contains, upserts, removals)
        type Scope = fn(&&str) -> bool;
        type Case = (
            Held,
            Scope,
            Option<&'static str>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                held("", 0),
                all as Scope,
                Some("first subscription"),
                vec!["a", "c", "x"],
                vec![],
            ),
            (
                held("e", 0),
                no_x as Scope,
                Some("first subscription"),
                vec!["a"],
                vec![],
            ),
            (held("e", 12), all as Scope, None, vec![], vec![]),
            (held("e", 11), all as Scope, None, vec!["c"], vec!["b"]),
            (held("e", 10), all as Scope, None, vec!["a", "c"], vec!["b"]),
            (held("e", 11), no_x as Scope, None, vec![], vec!["b"]),
            (
                held("old", 11),
                all as Scope,
                Some("another controller run"),
                vec!["a", "c", "x"],
                vec![],
            ),
            (
                held("e", 3),
                all as Scope,
                Some("older than"),
                vec!["a", "c", "x"],
                vec![],
            ),
        ];
        for (held, scope, full, upserts, removals) in cases {
            let p = plan(&held, "e", &h, &now, scope);
            match (full, &p.full) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.contains(want), "{held:?}: {got}"),
                _ => panic!("{held:?}: full {:?}", p.full),
            }
            assert_eq!(p.upserts, upserts, "{held:?}");
            assert_eq!(p.removals, removals, "{held:?}");
        }
        assert!(plan(&held("e", 12), "e", &h, &now, all).is_empty());
    }
}
