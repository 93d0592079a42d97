//! Which tile a worker computes next.
//!
//! The pool's workers each own a region of the tile grid, a box the plan's
//! layout laid out for them, so each fetches a distinct part of A and B. A
//! worker takes the pending tile that needs the fewest new panels, within its
//! region; a tile whose panels it holds already costs nothing and may come from
//! anywhere. A worker that joins, or whose region runs dry, takes a region
//! nobody owns, or else the back half of the fullest one (away from where its
//! owner works), so the remaining work is laid out again whenever the pool
//! changes; when no region can be split, it steals single tiles from the back.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::plan::{Operand, PanelId, Plan};
use crate::pool::WorkerId;

/// A box of the tile grid, in tile coordinates.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Region {
    rows: Range<usize>,
    cols: Range<usize>,
    depth: Range<usize>,
    owner: Option<WorkerId>,
    /// Its pending tiles.
    tiles: BTreeSet<usize>,
}

impl Region {
    /// Cuts off the back half along its longest side; `None` for a single tile.
    fn split(&mut self) -> Option<Region> {
        let sides = [self.cols.len(), self.rows.len(), self.depth.len()];
        let longest = (0..3).max_by_key(|&i| (sides[i], 2 - i)).expect("three sides");
        if sides[longest] < 2 {
            return None;
        }
        let mut back = Region { owner: None, tiles: BTreeSet::new(), ..self.clone() };
        let cut = |r: &mut Range<usize>, b: &mut Range<usize>| {
            let mid = r.start + r.len() / 2;
            (r.end, b.start) = (mid, mid);
        };
        match longest {
            0 => cut(&mut self.cols, &mut back.cols),
            1 => cut(&mut self.rows, &mut back.rows),
            _ => cut(&mut self.depth, &mut back.depth),
        }
        Some(back)
    }

    fn contains(&self, plan: &Plan, t: usize) -> bool {
        let (r, c, s) = plan.coords(t);
        self.rows.contains(&r) && self.cols.contains(&c) && self.depth.contains(&s)
    }

    /// Every tile in the box.
    fn every_tile<'a>(&'a self, plan: &'a Plan) -> impl Iterator<Item = usize> + 'a {
        self.rows.clone().flat_map(move |r| self.cols.clone().flat_map(move |c| self.depth.clone().map(move |s| plan.index(r, c, s))))
    }
}

/// Regions by how much is pending in them, fullest (then lowest index) first.
type BySize = BTreeSet<(Reverse<usize>, usize)>;

#[derive(Debug)]
pub(crate) struct Queue {
    plan: Plan,
    regions: Vec<Region>,
    /// Every tile's region, pending or not.
    home: Vec<usize>,
    pending: usize,
    /// Pending tiles that use each panel.
    by_panel: Vec<BTreeSet<usize>>,
    /// Each panel's operand and elements: looked up for every panel a worker
    /// holds, on every offer, so not worked out again each time.
    panel_sizes: Vec<(Operand, usize)>,
    owned: BTreeMap<WorkerId, usize>,
    /// Workers that have owned a region: when the plan does not spread, only
    /// they may steal (to shorten the tail).
    veterans: BTreeSet<WorkerId>,
    /// Workers that sent a wrong result: they own no region (they may not
    /// redo that tile, and a region's tiles are its owner's alone), and steal.
    distrusted: BTreeSet<WorkerId>,
    /// Regions with pending tiles, fullest first; and those of them nobody owns.
    fullest: BySize,
    fullest_free: BySize,
    /// A region nobody owns has gained pending tiles since last asked: fast
    /// workers waiting for one may claim it now.
    region_freed: bool,
}

/// How many of a held panel's pending tiles to look at before settling.
const SCAN: usize = 64;

impl Queue {
    /// Every tile pending, in the regions of `layout` (worker boxes along rows,
    /// columns and depth).
    pub fn new(plan: &Plan, layout: (usize, usize, usize)) -> Self {
        let (pr, pc, pk) = plan.shape();
        let (wr, wc, wk) = (layout.0.clamp(1, pr), layout.1.clamp(1, pc), layout.2.clamp(1, pk));
        let cut = |parts: usize, w: usize, i: usize| i * parts / w..(i + 1) * parts / w;
        let mut regions = Vec::new();
        for i in 0..wr {
            for j in 0..wc {
                for l in 0..wk {
                    let region = Region { rows: cut(pr, wr, i), cols: cut(pc, wc, j), depth: cut(pk, wk, l), owner: None, tiles: BTreeSet::new() };
                    regions.push(region);
                }
            }
        }
        let mut home = vec![0; plan.tiles()];
        for (index, region) in regions.iter().enumerate() {
            for t in region.every_tile(plan) {
                home[t] = index;
            }
        }
        let mut queue = Self {
            plan: plan.clone(),
            regions,
            home,
            pending: 0,
            by_panel: vec![BTreeSet::new(); plan.panels()],
            panel_sizes: (0..plan.panels()).map(|p| plan.panel(p as PanelId)).map(|p| (p.operand, p.elements())).collect(),
            owned: BTreeMap::new(),
            veterans: BTreeSet::new(),
            distrusted: BTreeSet::new(),
            fullest: BySize::new(),
            fullest_free: BySize::new(),
            region_freed: false,
        };
        for t in 0..plan.tiles() {
            queue.push(t);
        }
        queue
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    pub fn is_pending(&self, t: usize) -> bool {
        self.regions[self.home[t]].tiles.contains(&t)
    }

    /// Region `r`'s entries in the size orders, before and after a change.
    fn unlist(&mut self, r: usize) {
        let key = (Reverse(self.regions[r].tiles.len()), r);
        self.fullest.remove(&key);
        self.fullest_free.remove(&key);
    }

    fn list(&mut self, r: usize) {
        let region = &self.regions[r];
        if region.tiles.is_empty() {
            return;
        }
        let key = (Reverse(region.tiles.len()), r);
        self.fullest.insert(key);
        if region.owner.is_none() {
            self.fullest_free.insert(key);
        }
    }

    /// Puts tile `t` back (or in for the first time).
    pub fn push(&mut self, t: usize) {
        let r = self.home[t];
        if self.regions[r].tiles.contains(&t) {
            return;
        }
        self.unlist(r);
        self.regions[r].tiles.insert(t);
        self.list(r);
        self.region_freed |= self.regions[r].owner.is_none() && self.regions[r].tiles.len() == 1;
        self.pending += 1;
        for panel in self.plan.panels_of(t) {
            self.by_panel[panel as usize].insert(t);
        }
    }

    /// Takes tile `t` out (it was issued, or is done).
    pub fn remove(&mut self, t: usize) {
        let r = self.home[t];
        if !self.regions[r].tiles.contains(&t) {
            return;
        }
        self.unlist(r);
        self.regions[r].tiles.remove(&t);
        self.list(r);
        self.pending -= 1;
        for panel in self.plan.panels_of(t) {
            self.by_panel[panel as usize].remove(&t);
        }
    }

    fn set_owner(&mut self, r: usize, owner: Option<WorkerId>) {
        self.unlist(r);
        self.regions[r].owner = owner;
        self.list(r);
    }

    /// `worker` is gone: its region is anyone's. Returns whether it had one.
    pub fn forget(&mut self, worker: WorkerId) -> bool {
        let Some(r) = self.owned.remove(&worker) else { return false };
        self.set_owner(r, None);
        self.region_freed |= !self.regions[r].tiles.is_empty();
        true
    }

    /// `worker` sent a wrong result: its region, if it has one, is anyone's,
    /// and it claims none from now on (it may still steal, as a veteran).
    pub fn distrust(&mut self, worker: WorkerId) {
        self.forget(worker);
        self.distrusted.insert(worker);
        self.veterans.insert(worker);
    }

    /// Whether a region nobody owns has pending tiles.
    pub fn has_free_region(&self) -> bool {
        !self.fullest_free.is_empty()
    }

    /// Regions nobody owns that have pending tiles.
    pub fn free_regions(&self) -> usize {
        self.fullest_free.len()
    }

    /// Whether a region nobody owns gained pending tiles since last asked.
    pub fn take_region_freed(&mut self) -> bool {
        std::mem::take(&mut self.region_freed)
    }

    /// Whether `worker` has owned a region of this queue.
    pub fn is_veteran(&self, worker: WorkerId) -> bool {
        self.veterans.contains(&worker)
    }

    /// Lets any worker claim or share a region from now on, as if the plan
    /// had used the whole pool.
    pub fn spread(&mut self) {
        self.plan.spread = true;
    }

    /// The next tile for `worker`, which holds the panels `held` says (in
    /// increasing order, as its cache lists them), never one `refused` says it
    /// may not have. The tile stays pending until removed.
    ///
    /// Only a worker `fit` for a region (fast enough, by the plan) claims one.
    ///
    /// With `new_panel`, only a tile that needs a panel the worker lacks: the
    /// next to send panels ahead for.
    pub fn next(&mut self, worker: WorkerId, held: &[PanelId], fit: bool, new_panel: bool, refused: impl Fn(usize) -> bool) -> Option<usize> {
        debug_assert!(held.is_sorted(), "held panels in increasing order: {held:?}");
        if self.pending == 0 {
            return None;
        }
        let own = if fit || self.owned.contains_key(&worker) { self.region(worker) } else { None };
        let own_dry = own.is_none_or(|r| self.regions[r].tiles.iter().all(|&t| refused(t)));
        // Tiles that use a panel it holds: those needing no new panel first,
        // then its own region's, then (once its region is dry) anyone's. Among
        // those needing one, a panel of the operand it holds less of: so A's and
        // B's panels come in turns, and each byte unlocks the most tiles.
        let (mut a_bytes, mut b_bytes) = (0, 0);
        for &p in held {
            match self.panel_sizes[p as usize] {
                (Operand::A, elements) => a_bytes += elements,
                (Operand::B, elements) => b_bytes += elements,
            }
        }
        let short = if a_bytes <= b_bytes { Operand::A } else { Operand::B };
        let mut best: Option<(usize, bool, bool, usize)> = None;
        for &panel in held {
            let Some(tiles) = self.by_panel.get(panel as usize) else { continue };
            for &t in tiles.iter().take(SCAN) {
                if refused(t) {
                    continue;
                }
                // Counted, not collected: this runs up to SCAN times per panel held, per offer.
                let panels = self.plan.panels_of(t);
                let needed = panels.map(|p| held.binary_search(&p).is_err());
                let needs = needed.iter().filter(|&&n| n).count();
                if new_panel && needs == 0 {
                    continue;
                }
                let outside = own != Some(self.home[t]);
                if needs > 0 && outside && !own_dry {
                    continue;
                }
                let long = (0..2).any(|i| needed[i] && self.panel_sizes[panels[i] as usize].0 != short);
                if best.is_none_or(|b| (needs, outside, long, t) < b) {
                    best = Some((needs, outside, long, t));
                }
            }
        }
        if let Some((_, _, _, t)) = best {
            return Some(t);
        }
        let lacks = |t: usize| !new_panel || self.plan.panels_of(t).iter().any(|p| held.binary_search(p).is_err());
        if let Some(t) = own.and_then(|r| self.regions[r].tiles.iter().copied().find(|&t| !refused(t) && lacks(t))) {
            return Some(t);
        }
        if own.is_none() && !self.plan.spread && !self.veterans.contains(&worker) {
            return None; // the plan chose fewer workers than the pool has: this one waits
        }
        // Steal from the back of the fullest region.
        if new_panel {
            return None; // no stealing ahead of need
        }
        let &(_, fullest) = self.fullest.first()?;
        self.regions[fullest].tiles.iter().rev().copied().find(|&t| !refused(t))
    }

    /// Pending tiles whose panels are all in `held` (in increasing order),
    /// counted up to `limit`: work a worker can do without another byte from
    /// the master.
    pub fn ready(&self, held: &[PanelId], limit: usize) -> usize {
        debug_assert!(held.is_sorted(), "held panels in increasing order: {held:?}");
        let mut count = 0;
        for &panel in held {
            let Some(tiles) = self.by_panel.get(panel as usize) else { continue };
            // Each tile once: from its A panel's list.
            for &t in tiles.iter().take(SCAN) {
                let [a, b] = self.plan.panels_of(t);
                if a == panel && held.binary_search(&b).is_ok() {
                    count += 1;
                    if count >= limit {
                        return count;
                    }
                }
            }
        }
        count
    }

    /// The region `worker` owns, claiming one if it has none: one nobody owns
    /// with work in it, or else the back half of the fullest region.
    fn region(&mut self, worker: WorkerId) -> Option<usize> {
        if self.distrusted.contains(&worker) {
            return None;
        }
        if let Some(&r) = self.owned.get(&worker) {
            if !self.regions[r].tiles.is_empty() {
                return Some(r);
            }
            self.owned.remove(&worker);
            self.set_owner(r, None);
        }
        let r = match self.fullest_free.first() {
            Some(&(_, r)) => r,
            // A worker the plan left out waits; one that had a region shares another.
            None if !self.plan.spread && !self.veterans.contains(&worker) => return None,
            None => {
                let &(_, fullest) = self.fullest.first()?;
                let mut back = self.regions[fullest].split()?;
                let r = self.regions.len();
                self.unlist(fullest);
                back.tiles = self.regions[fullest].tiles.iter().copied().filter(|&t| back.contains(&self.plan, t)).collect();
                self.regions[fullest].tiles.retain(|t| !back.tiles.contains(t));
                for t in back.every_tile(&self.plan) {
                    self.home[t] = r;
                }
                let empty = back.tiles.is_empty();
                self.regions.push(back);
                self.list(fullest);
                self.list(r);
                if empty {
                    return None; // nothing pending there now: it steals instead
                }
                r
            }
        };
        self.set_owner(r, Some(worker));
        self.owned.insert(worker, r);
        self.veterans.insert(worker);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_start_in_regions_of_their_own_and_keep_to_their_panels() {
        let plan = Plan::grid(8, 8, 8, 2, 2, 2);
        let mut q = Queue::new(&plan, (1, 1, 2));
        let first = q.next(1, &[], true, false, |_| false).unwrap();
        let second = q.next(2, &[], true, false, |_| false).unwrap();
        assert_ne!(plan.coords(first).2, plan.coords(second).2, "one depth slice each");
        q.remove(first);
        // Holding the first tile's panels, worker 1 next takes a tile sharing one of them.
        let held = plan.panels_of(first);
        let next = q.next(1, &held, true, false, |_| false).unwrap();
        assert_eq!(plan.panels_of(next).iter().filter(|p| held.contains(p)).count(), 1);
        assert_eq!(plan.coords(next).2, plan.coords(first).2);
    }

    #[test]
    fn a_dry_worker_takes_the_back_half_of_the_fullest_region() {
        let plan = Plan::columns(4, 4, 40, 1);
        let mut q = Queue::new(&plan, (1, 2, 1));
        assert_eq!(q.next(1, &[], true, false, |_| false), Some(0));
        assert_eq!(q.next(2, &[], true, false, |_| false), Some(20));
        for t in 0..20 {
            q.remove(t);
        }
        assert_eq!(q.next(1, &[], true, false, |_| false), Some(30), "its own region (columns 0..20) is done");
        for t in 21..40 {
            q.remove(t);
        }
        assert_eq!(q.next(1, &[], true, false, |_| false), Some(20), "the last tile: no region to split, so it steals");
    }

    #[test]
    fn newcomers_split_the_fullest_region() {
        let plan = Plan::columns(4, 4, 16, 1);
        let mut q = Queue::new(&plan, (1, 1, 1));
        assert_eq!(q.next(1, &[], true, false, |_| false), Some(0));
        assert_eq!(q.next(2, &[], true, false, |_| false), Some(8), "the back half of the only region");
        assert_eq!(q.next(3, &[], true, false, |_| false), Some(4));
        q.forget(2);
        assert_eq!(q.next(4, &[], true, false, |_| false), Some(8), "the region worker 2 left");
        assert_eq!(q.next(1, &[], true, false, |t| t == 0), Some(1), "never a tile it may not have");
    }
}
