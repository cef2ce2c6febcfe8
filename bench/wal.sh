#!/usr/bin/env bash
# What one archive_command call costs: `lifeboat-backup wal push` of 16 MiB segments into a
# local repository initialised with the default key derivation, as PostgreSQL would call it
# one segment at a time. Three cases, each timed with the file's durability included:
#   cold     --lookahead 0: process start + key derivation + seal + durable put
#   ahead    the first call of a burst: pushes its segment and 7 ready ones in parallel
#   acked    a later call of the burst: answered from the acknowledgement (no key, no put)
# and the floor beside them: `cp` of the segment plus `sync`.
#
#   bench/wal.sh [--segments 8] [--bin target/release]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
segments=8 bin="$root/target/release"
while [ $# -gt 0 ]; do
  case "$1" in
    --segments) segments="$2"; shift 2 ;;
    --bin) bin="$(realpath "$2")"; shift 2 ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
[ -x "$bin/lifeboat-backup" ] || (cd "$root" && cargo build --release -q -p backup-cli)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export LIFEBOAT_REPOSITORY="$work/repo" LIFEBOAT_PASSWORD_FILE="$work/pw" LIFEBOAT_CACHE_DIR="$work/cache"
echo "wal bench secret" > "$work/pw"
"$bin/lifeboat-backup" --quiet init
mkdir -p "$work/pg_wal/archive_status" "$work/cold"
# Segments that compress like real WAL: half random, half zero-filled (a switched segment).
for i in $(seq 1 "$segments"); do
  name=$(printf '0000000100000000000000%02X' "$i")
  { head -c $((8 << 20)) /dev/urandom; head -c $((8 << 20)) /dev/zero; } > "$work/pg_wal/$name"
  touch "$work/pg_wal/archive_status/$name.ready"
done
cold=$(printf '0000000100000000000000%02X' $((segments + 1)))
cp "$work/pg_wal/$(printf '0000000100000000000000%02X' 1)" "$work/cold/$cold"
sec() { date +%s.%N; }
t0=$(sec); "$bin/lifeboat-backup" --quiet wal push --lookahead 0 "$work/cold/$cold"; t1=$(sec)
first=$(printf '0000000100000000000000%02X' 1)
t2=$(sec); "$bin/lifeboat-backup" --quiet wal push "$work/pg_wal/$first"; t3=$(sec)
acked_total=0
for i in $(seq 2 "$segments"); do
  name=$(printf '0000000100000000000000%02X' "$i")
  a=$(sec); "$bin/lifeboat-backup" --quiet wal push "$work/pg_wal/$name"; b=$(sec)
  acked_total=$(echo "$acked_total + $b - $a" | bc -l)
done
t4=$(sec); cp "$work/pg_wal/$first" "$work/floor" && sync; t5=$(sec)
printf '| case | seconds |\n|---|---|\n'
printf '| cold (1 segment, --lookahead 0) | %.3f |\n' "$(echo "$t1 - $t0" | bc -l)"
printf '| ahead (1 call: 1 + %d segments) | %.3f |\n' $((segments - 1)) "$(echo "$t3 - $t2" | bc -l)"
printf '| acked (mean of %d later calls) | %.3f |\n' $((segments - 1)) "$(echo "$acked_total / ($segments - 1)" | bc -l)"
printf '| floor: cp + sync of 1 segment | %.3f |\n' "$(echo "$t5 - $t4" | bc -l)"
