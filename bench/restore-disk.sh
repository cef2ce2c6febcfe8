#!/usr/bin/env bash
# Restores to disk until durable, two builds side by side with the disk's floor in the same
# run: the PostgreSQL dump and the Redis RDB exported to a file (`&& sync`) beside
# `cat FILE > DST && sync`, and the directory restored (`&& sync`) beside `cp -a && sync`.
# Every step starts after `sync; fstrim /` (this disk is mounted with `discard`).
#
#   bench/restore-disk.sh OLD_BIN_DIR [--repeat 3] [--datasets pg,redis,tree]
#
# OLD_BIN_DIR holds the other build's lifeboat-restore (e.g. a copy of target/release before a
# change); this checkout's release build is "new". Datasets come from bench/run.sh's cache
# (.cache/bench; run it once with --datasets pg,redis,tree to create them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
old="$(realpath "${1:?usage: bench/restore-disk.sh OLD_BIN_DIR [--repeat N] [--datasets LIST]}")"; shift
repeat=3 datasets="pg,redis,tree"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) repeat="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
data="${BENCH_DATA:-$root/.cache/bench}"
cargo build --release --quiet --locked -p backup-cli -p restore-cli
B="$root/target/release/lifeboat-backup" NEW="$root/target/release/lifeboat-restore"
work="$(mktemp -d "$root/.cache/restore-disk.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo pw > "$work/pw"
export LIFEBOAT_PASSWORD_FILE="$work/pw" LIFEBOAT_CACHE_DIR="$work/cache"
"$B" -r "$work/repo" init --kdf-memory-mib 16 -q
src_of() { case "$1" in pg) echo "$data/pg/dump-0.pgdump" ;; redis) echo "$data/redis/dump-0.rdb" ;; tree) echo "$data/tree/base" ;; esac; }
for ds in ${datasets//,/ }; do
  if [ "$ds" = tree ]; then "$B" -r "$work/repo" run -q --volume "tree=$(src_of tree)"
  else "$B" -r "$work/repo" run -q --command "$ds=cat $(src_of "$ds")"; fi
done
for pass in $(seq "$repeat"); do
  for ds in ${datasets//,/ }; do
    src=$(src_of "$ds")
    if [ -d "$src" ]; then tar -cf - -C "$src" . > /dev/null; else cat "$src" > /dev/null; fi
    for tool in old new floor; do
      rm -rf "$work/out"; mkdir -p "$work/out"; sync; fstrim / 2>/dev/null || true; sleep 1
      case "$tool/$ds" in
        old/tree) cmd="$old/lifeboat-restore -r $work/repo run latest -q --to $work/out" ;;
        new/tree) cmd="$NEW -r $work/repo run latest -q --to $work/out" ;;
        floor/tree) cmd="cp -a $src $work/out/tree" ;;
        old/*) cmd="$old/lifeboat-restore -r $work/repo export latest $ds -o $work/out/$ds" ;;
        new/*) cmd="$NEW -r $work/repo export latest $ds -o $work/out/$ds" ;;
        floor/*) cmd="cat $src > $work/out/$ds" ;;
      esac
      /usr/bin/time -f "%e" -o "$work/t" sh -c "$cmd && sync" > /dev/null 2>&1
      echo "$ds $tool $(cat "$work/t")"
    done
  done
done | awk '{k = $1 " " $2; a[k] = a[k] " " $3} END {for (k in a) print k ":" a[k]}' | sort
