#!/usr/bin/env bash
# Volume backups, two builds and restic on the same tree in one run: a first backup into a
# fresh local repository, then an unchanged rerun (Lifeboat's file cache, restic's parent
# snapshot). Medians of --repeat runs, in seconds, the ratio to restic beside each.
#
#   bench/backup-builds.sh OLD_BIN_DIR [--repeat 3] [TREE]
#
# OLD_BIN_DIR holds the other build's lifeboat-backup (a copy of target/release before a
# change); this checkout's release build is "new". TREE defaults to bench/run.sh's directory
# dataset (.cache/bench/tree/base).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
old="$(realpath "${1:?usage: bench/backup-builds.sh OLD_BIN_DIR [--repeat N] [TREE]}")"; shift
repeat=3
[ "${1:-}" = --repeat ] && { repeat="$2"; shift 2; }
tree="${1:-${BENCH_DATA:-$root/.cache/bench}/tree/base}"
[ -d "$tree" ] || { echo "no dataset at $tree: run bench/run.sh --datasets tree first" >&2; exit 2; }
cargo build --release --quiet --locked -p backup-cli
work="$(mktemp -d -t lifeboat-builds.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo benchpw > "$work/pw"
export LIFEBOAT_PASSWORD_FILE="$work/pw" RESTIC_PASSWORD=benchpw RESTIC_CACHE_DIR="$work/restic-cache"
tar -cf - -C "$tree" . > /dev/null   # the tree in the page cache for every tool alike
secs() { local t0; t0=$(date +%s.%N); "$@" > /dev/null; echo "$(date +%s.%N) - $t0" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for pass in $(seq "$repeat"); do
  for tool in old new restic; do
    rm -rf "$work/repo" "$work/cache"
    case "$tool" in
      old|new)
        bin="$old/lifeboat-backup"; [ "$tool" = new ] && bin="$root/target/release/lifeboat-backup"
        export LIFEBOAT_CACHE_DIR="$work/cache"
        "$bin" -r "$work/repo" init -q --kdf-memory-mib 16
        first=$(secs "$bin" -r "$work/repo" run -q --volume "tree=$tree")
        again=$(secs "$bin" -r "$work/repo" run -q --volume "tree=$tree") ;;
      restic)
        restic -r "$work/repo" init -q
        first=$(secs restic -r "$work/repo" backup -q "$tree")
        again=$(secs restic -r "$work/repo" backup -q "$tree") ;;
    esac
    echo "$tool first $first" >> "$work/times"; echo "$tool again $again" >> "$work/times"
  done
done
r_first=$(grep '^restic first' "$work/times" | cut -d' ' -f3 | median)
r_again=$(grep '^restic again' "$work/times" | cut -d' ' -f3 | median)
for tool in old new restic; do
  f=$(grep "^$tool first" "$work/times" | cut -d' ' -f3 | median)
  a=$(grep "^$tool again" "$work/times" | cut -d' ' -f3 | median)
  printf '%-7s first %6.2f s (restic/this %.2f×)   unchanged rerun %6.2f s (restic/this %.2f×)\n' \
    "$tool" "$f" "$(echo "$r_first / $f" | bc -l)" "$a" "$(echo "$r_again / $a" | bc -l)"
done
echo "tree $(du -sh "$tree" | cut -f1), $(find "$tree" -type f | wc -l) files; new = $(git -C "$root" rev-parse --short HEAD), old = $old"
