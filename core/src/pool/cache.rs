//! The master's exact copy of one worker's cache: which panels it holds, and
//! how much of its memory they and its tasks' products take.
//!
//! The worker evicts only what the master tells it to, so this copy never
//! drifts: the master knows what each worker holds without asking, and never
//! sends it more than the memory it announced.

use std::collections::BTreeMap;

use crate::plan::PanelId;
use crate::protocol::JobId;

#[derive(Debug)]
struct Entry {
    bytes: u64,
    /// Tasks in flight that need it: it may not be evicted meanwhile.
    pins: u32,
    /// When it was last used, for least-recently-used eviction.
    used_at: u64,
}

#[derive(Debug)]
pub(crate) struct Cache {
    budget: u64,
    /// Panels and reserved products.
    used: u64,
    panels: BTreeMap<(JobId, PanelId), Entry>,
    clock: u64,
}

impl Cache {
    pub fn new(budget: u64) -> Self {
        Self { budget, used: 0, panels: BTreeMap::new(), clock: 0 }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn holds(&self, job: JobId, panel: PanelId) -> bool {
        self.panels.contains_key(&(job, panel))
    }

    /// The panels of `job` it holds.
    pub fn panels_of(&self, job: JobId) -> impl Iterator<Item = PanelId> + '_ {
        self.panels.range((job, 0)..=(job, PanelId::MAX)).map(|(&(_, p), _)| p)
    }

    /// Makes room for `bytes` more, evicting least recently used unpinned
    /// panels. Returns the evictions (to tell the worker), or `None` if even
    /// evicting every unpinned panel would not make room (nothing is evicted then).
    pub fn make_room(&mut self, bytes: u64) -> Option<Vec<(JobId, PanelId)>> {
        if self.used + bytes <= self.budget {
            return Some(Vec::new());
        }
        let mut candidates: Vec<(u64, (JobId, PanelId), u64)> =
            self.panels.iter().filter(|(_, e)| e.pins == 0).map(|(&key, e)| (e.used_at, key, e.bytes)).collect();
        candidates.sort_unstable();
        let mut freed = 0;
        let mut evict = Vec::new();
        for (_, key, size) in candidates {
            if self.used - freed + bytes <= self.budget {
                break;
            }
            freed += size;
            evict.push(key);
        }
        if self.used - freed + bytes > self.budget {
            return None;
        }
        for key in &evict {
            self.panels.remove(key);
        }
        self.used -= freed;
        Some(evict)
    }

    /// Records a panel sent to the worker (room was made for it).
    pub fn insert(&mut self, job: JobId, panel: PanelId, bytes: u64) {
        self.clock += 1;
        self.used += bytes;
        self.panels.insert((job, panel), Entry { bytes, pins: 0, used_at: self.clock });
    }

    /// A task needs `panel` until it ends.
    pub fn pin(&mut self, job: JobId, panel: PanelId) {
        self.clock += 1;
        if let Some(e) = self.panels.get_mut(&(job, panel)) {
            e.pins += 1;
            e.used_at = self.clock;
        }
    }

    pub fn unpin(&mut self, job: JobId, panel: PanelId) {
        if let Some(e) = self.panels.get_mut(&(job, panel)) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// A task's product will take `bytes` until it is sent.
    pub fn reserve(&mut self, bytes: u64) {
        self.used += bytes;
    }

    pub fn release(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// The worker dropped every panel of `job`.
    pub fn drop_job(&mut self, job: JobId) {
        let keys: Vec<_> = self.panels_of(job).map(|p| (job, p)).collect();
        for key in keys {
            let e = self.panels.remove(&key).expect("listed above");
            self.used -= e.bytes;
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_unpinned_panels_only() {
        let mut cache = Cache::new(100);
        for panel in 0..4 {
            assert_eq!(cache.make_room(25), Some(vec![]));
            cache.insert(1, panel, 25);
        }
        cache.pin(1, 0); // in use, and now the most recent
        cache.pin(1, 2);
        cache.unpin(1, 2);
        assert_eq!(cache.make_room(40), Some(vec![(1, 1), (1, 3)]), "1 is the oldest, then 3; 0 is pinned");
        assert_eq!(cache.used(), 50);
        cache.reserve(40);
        assert_eq!(cache.make_room(40), None, "the pinned panel and the reservation leave 35 bytes at most");
        assert!(cache.holds(1, 2), "nothing is evicted when room cannot be made");
        cache.release(40);
        cache.drop_job(1);
        assert_eq!(cache.used(), 0);
    }
}
