#!/usr/bin/env bash
# One file back from a large volume, Lifeboat beside restic on the same tree in one run:
# `dump` and `restore --include` of one 10 MiB file out of a 2 GiB volume (200 files of
# 10 MiB), from a local repository and from a local S3 server (ministack); restores timed
# until the file is durable (sync). Then `ls` of a 100 000-file volume and the size of its
# catalog. Prints Markdown tables (docs/BENCHMARKS.md).
#   bench/single-file.sh [FILES]     (default 200 files of 10 MiB)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
files="${1:-200}"
cd "$root"
cargo build --release --quiet --locked -p backup-cli -p restore-cli
B="$root/target/release/lifeboat-backup"
R="$root/target/release/lifeboat-restore"
# shellcheck source=bench/ministack.sh
. "$root/bench/ministack.sh"
work="$(mktemp -d -t lifeboat-single.XXXXXX)"
ms_pid=""
cleanup() { [ -n "$ms_pid" ] && kill "$ms_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

tree="$work/vol"
mkdir -p "$tree/d"
for i in $(seq -w 1 "$files"); do head -c 10M /dev/urandom > "$tree/d/f$i.bin"; done
want="d/f$(printf '%0*d' ${#files} $((files / 2))).bin"

start_ministack bench
port=$ms_port

echo pw > "$work/pw"
export LIFEBOAT_PASSWORD_FILE="$work/pw" RESTIC_PASSWORD=pw RESTIC_CACHE_DIR="$work/restic-cache" \
       AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench \
       AWS_ENDPOINT_URL="http://127.0.0.1:$port" LIFEBOAT_S3_PATH_STYLE=true
secs() { local t0; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; python3 -c "import sys; print(f'{$(date +%s.%N) - $t0:.2f}')"; }
same() { cmp -s "$1" "$tree/$want" || { echo "restored $1 differs" >&2; exit 1; }; }

echo "| store | tool | backup s | dump s | restore --include s | fetched by dump |"
echo "|---|---|---|---|---|---|"
for store in local s3; do
  if [ $store = local ]; then lrepo="$work/lb"; rrepo="$work/restic"; else lrepo="s3://bench/lb"; rrepo="s3:http://127.0.0.1:$port/bench/restic"; fi
  export LIFEBOAT_REPOSITORY="$lrepo" LIFEBOAT_CACHE_DIR="$work/cache-$store"
  "$B" init --kdf-memory-mib 16 -q
  bs=$(secs "$B" run -q --volume "vol=$tree")
  out="$work/dump-$store"
  ds=$(secs sh -c "\"$R\" dump latest vol $want --json > $out 2> $out.json && sync $out")
  same "$out"
  fetched=$(python3 -c "import json; print(json.loads(open('$out.json').read().splitlines()[-1])['bytes_fetched'])")
  rs=$(secs sh -c "\"$R\" run latest --include $want --to $work/lr-$store -q && sync -f $work/lr-$store/vol/$want")
  same "$work/lr-$store/vol/$want"
  item=$("$R" show latest --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["size"])')
  echo "| $store | Lifeboat | $bs | $ds | $rs | $(python3 -c "print(f'{$fetched/2**20:.1f} MiB ({100*$fetched/$item:.2f} % of the item)')") |"

  restic -r "$rrepo" init -q >/dev/null
  rbs=$(secs restic -r "$rrepo" backup -q "$tree")
  rd=$(secs sh -c "restic -r $rrepo dump latest $tree/$want > $work/rdump-$store && sync $work/rdump-$store")
  same "$work/rdump-$store"
  rr=$(secs sh -c "restic -r $rrepo restore latest --include $tree/$want --target $work/rr-$store && sync -f $work/rr-$store$tree/$want")
  same "$work/rr-$store$tree/$want"
  echo "| $store | restic $(restic version | cut -d' ' -f2) | $rbs | $rd | $rr | — |"
done

# ls of a 100 000-file volume, and its catalog's size.
many="$work/many"
python3 - "$many" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    p = os.path.join(root, f"dir{d:03d}")
    os.makedirs(p)
    for f in range(1000):
        with open(os.path.join(p, f"file{f:04d}.txt"), "w") as fh:
            fh.write(f"{d} {f}\n")
PY
export LIFEBOAT_REPOSITORY="$work/lb-many" LIFEBOAT_CACHE_DIR="$work/cache-many"
"$B" init --kdf-memory-mib 16 -q
"$B" run -q --volume "many=$many"
restic -r "$work/restic-many" init -q >/dev/null
restic -r "$work/restic-many" backup -q "$many" >/dev/null
lls=$(secs sh -c "\"$R\" ls latest many --recursive > $work/ls-lb")
rls=$(secs sh -c "restic -r $work/restic-many ls latest > $work/ls-restic")
read -r csize isize < <("$R" show latest --json | python3 -c 'import json,sys; i=json.load(sys.stdin)["items"][0]; print(i["catalog"]["size"], i["size"])')
echo
echo "| 100 000 files | Lifeboat | restic |"
echo "|---|---|---|"
echo "| ls (recursive) s | $lls | $rls |"
echo "| lines listed | $(wc -l < "$work/ls-lb") | $(wc -l < "$work/ls-restic") |"
echo "| catalog | $(python3 -c "print(f'{$csize/2**20:.1f} MiB JSON, {100*$csize/$isize:.1f} % of the {$isize/2**20:.0f} MiB tar stream')") | — |"
