//! What a GC run may delete, decided from one inventory of the store, with no I/O: the rules
//! that make duplicate chunks safe live here, where they can be tested exhaustively.
//!
//! Invariant (docs/FORMAT.md, "Garbage collection"): every chunk a snapshot names keeps at
//! least one copy that GC neither deletes nor leaves unindexed. Each referenced chunk gets one
//! *keeper* copy — its loose object if there is one, else the copy in the best-ranked pack
//! that holds it — and only copies that are not keepers count as dead. A pack is deleted only
//! when it keeps nothing; a pack whose index cannot be read is never deleted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::content::{PackIndex, PackedAt};
use crate::id::{ChunkId, PackId, id_in_key};
use crate::store::ObjectMeta;

/// What is in the store, as GC listed it.
pub(crate) struct Inventory<'a> {
    pub referenced: &'a HashSet<ChunkId>,
    /// `chunks/` objects.
    pub loose: &'a [ObjectMeta],
    /// `packs/` objects.
    pub packs: &'a [ObjectMeta],
    pub index: &'a PackIndex,
    pub grace: Duration,
    pub max_unused: f64,
}

/// A pack to rewrite: the chunks it keeps are copied, then it is deleted.
#[derive(Debug, Clone)]
pub(crate) struct Repack {
    pub pack: PackId,
    pub meta: ObjectMeta,
    /// The chunks whose keeper is this pack, in pack order.
    pub copy: Vec<(ChunkId, PackedAt)>,
    /// Indexed bytes of the pack that are not kept.
    pub dead: u64,
}

/// The decisions of one GC run.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub loose_referenced: usize,
    pub loose_in_grace: usize,
    pub loose_delete: Vec<ObjectMeta>,
    /// Packs to delete whole, with their index key (deleted first) if they have one.
    pub packs_delete: Vec<(Option<String>, ObjectMeta)>,
    pub repack: Vec<Repack>,
    /// Index objects whose pack is gone.
    pub dangling: Vec<String>,
    /// Packs kept because their index is damaged, with why.
    pub unreadable: Vec<String>,
    /// Dead bytes left in kept packs after the repacks.
    pub dead_kept: u64,
}

/// Decides what to delete and repack.
pub(crate) fn plan(inv: &Inventory) -> Plan {
    let mut plan = Plan::default();
    let mut loose_live = HashSet::new();
    for m in inv.loose {
        let Some(id) = id_in_key::<ChunkId>(&m.key) else {
            continue;
        };
        if inv.referenced.contains(&id) {
            plan.loose_referenced += 1;
            loose_live.insert(id);
        } else if m.age() < inv.grace {
            plan.loose_in_grace += 1;
        } else {
            plan.loose_delete.push(m.clone());
        }
    }
    let by_pack = inv.index.by_pack();
    let present: HashMap<PackId, &ObjectMeta> = inv
        .packs
        .iter()
        .filter_map(|m| Some((id_in_key::<PackId>(&m.key)?, m)))
        .collect();
    let keepers = assign_keepers(inv.referenced, &loose_live, &by_pack, &present);
    let damaged: HashMap<PackId, &str> = inv
        .index
        .damaged()
        .iter()
        .filter_map(|d| Some((d.pack?, d.reason.as_str())))
        .collect();
    let mut kept = Vec::new();
    let mut ids: Vec<&PackId> = present.keys().collect();
    ids.sort();
    for pack in ids {
        let meta = present[pack];
        if let Some(why) = damaged.get(pack) {
            plan.unreadable.push(format!(
                "{} kept: its index {} does not open ({why})",
                meta.key,
                pack.index_key()
            ));
            continue;
        }
        let Some(chunks) = by_pack.get(pack) else {
            // An orphan: a run died between writing a pack and its index.
            if meta.age() >= inv.grace {
                plan.packs_delete.push((None, meta.clone()));
            }
            continue;
        };
        let (copy, dead): (Vec<_>, Vec<_>) = chunks
            .iter()
            .partition(|(id, at)| keepers.get(id) == Some(&Keeper::Pack(at.pack, at.offset)));
        let dead: u64 = dead.iter().map(|(_, at)| u64::from(at.length)).sum();
        if copy.is_empty() {
            if meta.age() >= inv.grace {
                plan.packs_delete
                    .push((Some(pack.index_key()), meta.clone()));
            } else {
                plan.dead_kept += dead;
            }
            continue;
        }
        let mut copy = copy;
        copy.sort_by_key(|(_, at)| at.offset);
        kept.push(Repack {
            pack: *pack,
            meta: meta.clone(),
            copy,
            dead,
        });
    }
    let mut dangling: Vec<String> = by_pack
        .keys()
        .filter(|p| !present.contains_key(p))
        .map(PackId::index_key)
        .collect();
    dangling.sort();
    plan.dangling = dangling;
    plan.repack = choose_repacks(&mut kept, inv);
    plan.dead_kept += kept.iter().map(|r| r.dead).sum::<u64>();
    plan
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keeper {
    Loose,
    Pack(PackId, u64),
}

/// One keeper copy per referenced chunk: its loose object, else its copy in the pack with the
/// largest referenced share (ties by pack id), so that of two packs holding the same chunks
/// one keeps them all, and a repack's new, fully live pack wins over the old one it was
/// copied from. Only packs whose object is present count.
fn assign_keepers(
    referenced: &HashSet<ChunkId>,
    loose_live: &HashSet<ChunkId>,
    by_pack: &HashMap<PackId, Vec<(ChunkId, PackedAt)>>,
    present: &HashMap<PackId, &ObjectMeta>,
) -> HashMap<ChunkId, Keeper> {
    let mut rank: Vec<(PackId, f64)> = by_pack
        .iter()
        .filter(|(p, _)| present.contains_key(p))
        .map(|(p, chunks)| {
            let total: u64 = chunks.iter().map(|(_, at)| u64::from(at.length)).sum();
            let live: u64 = chunks
                .iter()
                .filter(|(id, _)| referenced.contains(id))
                .map(|(_, at)| u64::from(at.length))
                .sum();
            (*p, live as f64 / total.max(1) as f64)
        })
        .collect();
    rank.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut keepers: HashMap<ChunkId, Keeper> =
        loose_live.iter().map(|id| (*id, Keeper::Loose)).collect();
    for (pack, _) in rank {
        for (id, at) in &by_pack[&pack] {
            if referenced.contains(id) {
                keepers
                    .entry(*id)
                    .or_insert(Keeper::Pack(at.pack, at.offset));
            }
        }
    }
    keepers
}

/// The packs with the largest dead share past the grace period, until the dead share of all
/// kept pack bytes is at most `max_unused` (restic's prune works the same way). Those picked
/// are taken out of `kept`.
fn choose_repacks(kept: &mut Vec<Repack>, inv: &Inventory) -> Vec<Repack> {
    let total: u64 = kept.iter().map(|r| r.meta.size).sum();
    let mut dead: u64 = kept.iter().map(|r| r.dead).sum();
    let allowed = (inv.max_unused.clamp(0.0, 1.0) * total as f64) as u64;
    let share = |r: &Repack| r.dead as f64 / r.meta.size.max(1) as f64;
    let mut order: Vec<usize> = (0..kept.len())
        .filter(|&i| kept[i].dead > 0 && kept[i].meta.age() >= inv.grace)
        .collect();
    order.sort_by(|&a, &b| share(&kept[b]).total_cmp(&share(&kept[a])));
    let mut pick = HashSet::new();
    for i in order {
        if dead <= allowed {
            break;
        }
        dead -= kept[i].dead;
        pick.insert(i);
    }
    let mut chosen = Vec::new();
    let mut rest = Vec::new();
    for (i, r) in kept.drain(..).enumerate() {
        if pick.contains(&i) {
            chosen.push(r);
        } else {
            rest.push(r);
        }
    }
    *kept = rest;
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    fn meta(key: String, size: u64) -> ObjectMeta {
        ObjectMeta {
            key,
            size,
            modified: Some(chrono::Utc::now() - chrono::Duration::days(3)),
        }
    }

    /// Random repositories with chunks packed up to three times, loose copies, packs without
    /// an index, indexes without a pack and damaged indexes: after the plan, every referenced
    /// chunk that had a readable copy still has one, and no pack whose index is damaged goes.
    #[test]
    fn every_referenced_chunk_keeps_a_copy() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..3000 {
            let chunks: Vec<ChunkId> = (0..1 + rng.next() % 24)
                .map(|i| ChunkId([i as u8; 32]))
                .collect();
            let mut index = PackIndex::default();
            let mut packs = Vec::new();
            let mut damaged = HashSet::new();
            for p in 0..1 + rng.next() % 6 {
                let pack = PackId([p as u8 + 1; 16]);
                let mut entries = Vec::new();
                let mut offset = 0;
                for c in &chunks {
                    if rng.chance(35) {
                        let len = 1 + (rng.next() % 1000) as u32;
                        entries.push((*c, offset, len, None));
                        offset += u64::from(len);
                    }
                }
                let indexed = !rng.chance(10);
                if indexed {
                    index.insert_for_test(pack, &entries);
                } else if rng.chance(50) {
                    index.damage_for_test(pack);
                    damaged.insert(pack);
                }
                if !rng.chance(10) || damaged.contains(&pack) {
                    packs.push(meta(pack.object_key(), offset.max(1)));
                }
            }
            let referenced: HashSet<ChunkId> =
                chunks.iter().filter(|_| rng.chance(50)).copied().collect();
            let loose: Vec<ObjectMeta> = chunks
                .iter()
                .filter(|_| rng.chance(15))
                .map(|c| meta(c.object_key(), 10))
                .collect();
            let inv = Inventory {
                referenced: &referenced,
                loose: &loose,
                packs: &packs,
                index: &index,
                grace: Duration::ZERO,
                max_unused: (rng.next() % 3) as f64 * 0.25,
            };
            let plan = plan(&inv);
            let present: HashSet<String> = packs.iter().map(|m| m.key.clone()).collect();
            let loose_keys: HashSet<String> = loose.iter().map(|m| m.key.clone()).collect();
            let readable = |c: &ChunkId, gone: &HashSet<String>, moved: &HashSet<ChunkId>| {
                let packed = index.locations(c).iter().any(|at| {
                    let k = at.pack.object_key();
                    present.contains(&k) && !gone.contains(&k)
                });
                let k = c.object_key();
                packed || moved.contains(c) || (loose_keys.contains(&k) && !gone.contains(&k))
            };
            let mut gone: HashSet<String> =
                plan.loose_delete.iter().map(|m| m.key.clone()).collect();
            gone.extend(plan.packs_delete.iter().map(|(_, m)| m.key.clone()));
            gone.extend(plan.repack.iter().map(|r| r.meta.key.clone()));
            let moved: HashSet<ChunkId> = plan
                .repack
                .iter()
                .flat_map(|r| r.copy.iter().map(|(c, _)| *c))
                .collect();
            for c in &referenced {
                if readable(c, &HashSet::new(), &HashSet::new()) {
                    assert!(readable(c, &gone, &moved), "case {case}: chunk {c} lost");
                }
            }
            for d in &damaged {
                assert!(
                    !gone.contains(&d.object_key()),
                    "case {case}: damaged pack deleted"
                );
            }
            for (index_key, m) in &plan.packs_delete {
                let pack: PackId = id_in_key(&m.key).unwrap();
                let indexed = index.by_pack().contains_key(&pack);
                assert_eq!(
                    index_key.is_some(),
                    indexed,
                    "case {case}: index outlives pack"
                );
            }
        }
    }
}
