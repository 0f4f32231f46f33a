//! The queue of builds waiting to start, in memory: one FIFO lane per tenant, served round robin.
//!
//! The store's Queued builds are the durable queue (it survives a restart); this is its index,
//! so that picking the next build costs a walk over the tenants with waiting builds, not a read
//! of every queued build (a query whose cost grows with the queue). The scheduler
//! feeds it the builds queued since the last id it saw; an entry whose build was cancelled
//! meanwhile is harmless: the store refuses to start a build that is no longer Queued.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;

/// A build taken from the queue: `(tenant id, build id)`.
pub type Picked = (i64, i64);

#[derive(Debug, Default)]
pub struct FairQueue {
    /// Tenant id → its waiting builds, oldest first. Empty lanes are removed.
    lanes: BTreeMap<i64, VecDeque<i64>>,
    /// The tenant served last: the next turn starts after it.
    last_tenant: Option<i64>,
    len: usize,
    /// Every build waiting, for [`FairQueue::contains`].
    members: HashSet<i64>,
}

impl FairQueue {
    /// Adds a build at the end of its tenant's lane (builds arrive in id order).
    pub fn push(&mut self, tenant: i64, build: i64) {
        self.lanes.entry(tenant).or_default().push_back(build);
        self.members.insert(build);
        self.len += 1;
    }

    /// Puts a build back at the front of its tenant's lane (it was picked, but could not start).
    pub fn push_front(&mut self, tenant: i64, build: i64) {
        if self.members.insert(build) {
            self.lanes.entry(tenant).or_default().push_front(build);
            self.len += 1;
        }
    }

    /// Whether `build` is waiting here.
    pub fn contains(&self, build: i64) -> bool {
        self.members.contains(&build)
    }

    /// Takes a build out (it was cancelled before it started). False when it was not waiting.
    pub fn remove(&mut self, tenant: i64, build: i64) -> bool {
        let Some(lane) = self.lanes.get_mut(&tenant) else { return false };
        let Some(at) = lane.iter().position(|b| *b == build) else { return false };
        lane.remove(at);
        if lane.is_empty() {
            self.lanes.remove(&tenant);
        }
        self.members.remove(&build);
        self.len -= 1;
        true
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// (tenant, builds waiting) of each tenant with waiting builds.
    pub fn per_tenant(&self) -> impl Iterator<Item = (i64, usize)> + '_ {
        self.lanes.iter().map(|(tenant, lane)| (*tenant, lane.len()))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Up to `free` builds: one per tenant in turn, starting after the tenant served last, FIFO
    /// within a tenant. A tenant whose running builds (`running`, plus those picked in this call)
    /// reached its cap in `caps` is passed over; its builds wait for one of its own to end.
    pub fn pick(&mut self, free: usize, running: &HashMap<i64, usize>, caps: &HashMap<i64, u32>) -> Vec<Picked> {
        let mut picked: Vec<Picked> = Vec::with_capacity(free.min(self.len));
        let mut taken: HashMap<i64, usize> = HashMap::new();
        while picked.len() < free && !self.lanes.is_empty() {
            let before = picked.len();
            let after = self.last_tenant.map_or(Bound::Unbounded, Bound::Excluded);
            let until = self.last_tenant.map_or(Bound::Unbounded, Bound::Included);
            // One turn: the tenants after the last one served, then from the first up to it.
            let turn: Vec<i64> = self
                .lanes
                .range((after, Bound::Unbounded))
                .chain(self.lanes.range((Bound::Unbounded, until)).take_while(|_| self.last_tenant.is_some()))
                .map(|(t, _)| *t)
                .collect();
            for tenant in turn {
                if picked.len() == free {
                    break;
                }
                let busy = running.get(&tenant).copied().unwrap_or(0) + taken.get(&tenant).copied().unwrap_or(0);
                if caps.get(&tenant).is_some_and(|cap| busy >= *cap as usize) {
                    continue;
                }
                let lane = self.lanes.get_mut(&tenant).expect("the turn lists existing lanes");
                let build = lane.pop_front().expect("lanes are never empty");
                if lane.is_empty() {
                    self.lanes.remove(&tenant);
                }
                self.len -= 1;
                self.members.remove(&build);
                *taken.entry(tenant).or_default() += 1;
                self.last_tenant = Some(tenant);
                picked.push((tenant, build));
            }
            if picked.len() == before {
                break; // every tenant with waiting builds is at its cap
            }
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(builds: &[(i64, i64)]) -> FairQueue {
        let mut q = FairQueue::default();
        builds.iter().for_each(|(t, b)| q.push(*t, *b));
        q
    }

    /// Starts builds one slot at a time, as finishing builds free them.
    fn start_order(q: &mut FairQueue) -> Vec<i64> {
        let (running, caps) = (HashMap::new(), HashMap::new());
        std::iter::from_fn(|| q.pick(1, &running, &caps).pop().map(|(_, b)| b)).collect()
    }

    #[test]
    fn tenants_take_turns_and_each_keeps_its_order() {
        // Tenant 1 queued 30 (ids 1..=30), two already started; tenant 2 queued 3 just after.
        let mut q = queue(&(3..=30).map(|b| (1, b)).chain((31..=33).map(|b| (2, b))).collect::<Vec<_>>());
        q.last_tenant = Some(1);
        let order = start_order(&mut q);
        assert_eq!(&order[..7], &[31, 3, 32, 4, 33, 5, 6]);
        let a: Vec<i64> = order.iter().copied().filter(|id| *id <= 30).collect();
        assert_eq!(a, (3..=30).collect::<Vec<_>>(), "first in, first out within a tenant");
        assert!(q.is_empty());
    }

    #[test]
    fn several_free_slots_go_round_the_tenants() {
        let builds = [(5, 1), (5, 2), (5, 3), (7, 4), (9, 5)];
        let (none, caps) = (HashMap::new(), HashMap::new());
        let ids = |v: Vec<Picked>| v.into_iter().map(|(_, b)| b).collect::<Vec<_>>();
        assert_eq!(ids(queue(&builds).pick(4, &none, &caps)), [1, 4, 5, 2]);
        let mut q = queue(&builds);
        q.last_tenant = Some(7);
        assert_eq!(ids(q.pick(2, &none, &caps)), [5, 1]);
        assert!(queue(&builds).pick(0, &none, &caps).is_empty());
        assert!(FairQueue::default().pick(3, &none, &caps).is_empty());
    }

    #[test]
    fn a_tenant_at_its_cap_waits_and_the_others_go_on() {
        let mut q = queue(&[(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)]);
        let caps = HashMap::from([(1, 2)]);
        let running = HashMap::from([(1, 1)]);
        // Tenant 1 runs one of its two: it gets one more, tenant 2 (no cap) the rest.
        let picked = q.pick(5, &running, &caps);
        assert_eq!(picked, [(1, 1), (2, 4), (2, 5)]);
        assert_eq!(q.len(), 2);
        // Still at its cap: nothing, however many slots are free.
        assert!(q.pick(5, &HashMap::from([(1, 2)]), &caps).is_empty());
        assert_eq!(q.pick(5, &HashMap::from([(1, 1)]), &caps), [(1, 2)]);
    }

    #[test]
    fn a_cancelled_build_leaves_its_lane() {
        let mut q = queue(&[(1, 1), (1, 2), (2, 3)]);
        assert!(q.remove(1, 2));
        assert!(!q.remove(1, 2));
        assert!(!q.remove(9, 1));
        assert_eq!(start_order(&mut q), [1, 3]);
    }
}
