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

use crate::id::{ChunkId, PackId, id_in_key};
use crate::pack::{PackIndex, PackedAt};
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

pub(crate) fn age(m: &ObjectMeta) -> Duration {
    m.modified
        .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
        .unwrap_or_default()
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
        } else if age(m) < inv.grace {
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
            if age(meta) >= inv.grace {
                plan.packs_delete.push((None, meta.clone()));
            }
            continue;
        };
        let (copy, dead): (Vec<_>, Vec<_>) = chunks
            .iter()
            .partition(|(id, at)| keepers.get(id) == Some(&Keeper::Pack(at.pack, at.offset)));
        let dead: u64 = dead.iter().map(|(_, at)| u64::from(at.length)).sum();
        if copy.is_empty() {
            if age(meta) >= inv.grace {
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
        .filter(|&i| kept[i].dead > 0 && age(&kept[i].meta) >= inv.grace)
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
