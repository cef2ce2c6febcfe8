#!/usr/bin/env bash
# Lifeboat side by side with restic, rustic, borg and plain `zstd -T2` on three datasets:
# a PostgreSQL dump with text/json columns, a Redis RDB of mixed types and a directory of mixed
# files. For each tool and dataset: first backup, unchanged re-backup, re-backup after a ~2%
# change, restore (until `sync` returns, beside the floor: `cp -a` or `cat >` and `sync`); wall
# time, MB/s (10^6 bytes), CPU % of one core, peak RSS, repository size.
# Tools that are not installed are left out (and said so). Writes a Markdown report.
#
#   bench/run.sh [--datasets pg,redis,tree,stack] [--tools lifeboat,restic,rustic,borg,zstd]
#                [--stores local,s3] [--scale 1.0] [--repeat 1] [--out FILE] [--merge EARLIER.tsv]
#
# The `stack` dataset is a whole stack restored at once (lifeboat only): a PostgreSQL database
# (the pg dataset loaded into a server), a Redis server (the RDB) and two volumes (the tree split
# in two), backed up in one snapshot; then each item restored alone, the stack one item at a
# time and at once, into a second PostgreSQL server with fsync on, every step until `sync`.
# Its RTO is the at-once wall time, beside the slowest item alone.
#
# --repeat N runs each tool's sequence N times (alternating tools) and reports the median wall
# time of each step with the range; single runs on these VMs move by 10–20 %.
# --merge takes the rows of tools not run this time from an earlier run's .tsv (to rerun one
# tool after a change without re-measuring the others).
#
# Datasets are generated once (deterministically, bench/datasets.py) under $BENCH_DATA
# (default .cache/bench) and reused. Needs: python3, PostgreSQL server binaries, redis-server,
# GNU time; ministack (.ci/venv) for --stores s3.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
datasets="pg,redis,tree" tools="lifeboat,restic,rustic,borg,zstd" stores="local,s3" scale=1.0 repeat=1
out="$root/.cache/bench-report.md" merge=""
while [ $# -gt 0 ]; do
  case "$1" in
    --datasets) datasets="$2"; shift 2 ;;
    --tools) tools="$2"; shift 2 ;;
    --stores) stores="$2"; shift 2 ;;
    --scale) scale="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --merge) merge="$(realpath "$2")"; shift 2 ;;
    *) sed -n '2,23p' "$0"; exit 2 ;;
  esac
done
has() { case ",$1," in *",$2,"*) return 0 ;; *) return 1 ;; esac; }
data="${BENCH_DATA:-$root/.cache/bench}"
mkdir -p "$data" "$(dirname "$out")"
gen="python3 $root/bench/datasets.py"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work="$(mktemp -d -t lifeboat-bench.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# ------------------------------------------------------------------ datasets

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
start_postgres() { # dir port [fsync]  (initdb and postgres refuse to run as root)
  mkdir -p "$1"; chown postgres "$1" 2>/dev/null || true
  as_pg "$pg_bin/initdb" -D "$1/db" -A trust -U postgres --no-sync >/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$1/db" -l "$1/log" -w -o "-p $2 -k $1 -c listen_addresses=127.0.0.1 -c fsync=${3:-off} -c max_wal_size=4GB" start >/dev/null
}
make_pg() {
  [ -f "$data/pg/done" ] && return
  echo "generating the PostgreSQL dataset…" >&2
  rm -rf "$data/pg"; mkdir -p "$data/pg"; chmod 755 "$work"
  local port; port=$(free_port)
  start_postgres "$work/pg" "$port"
  local url="postgresql://postgres@127.0.0.1:$port/bench" rows
  rows=$(python3 -c "print(int(1600000 * $scale))")
  psql -q "postgresql://postgres@127.0.0.1:$port/postgres" -c "create database bench"
  pgbench -q -i -s "$(python3 -c "print(max(1, int(10 * $scale)))")" "$url" >/dev/null 2>&1
  psql -q "$url" -v ON_ERROR_STOP=1 <<'SQL'
create table events (id bigint primary key, created_at timestamptz not null, customer_id int,
  status text, amount numeric(12,2), note text, payload jsonb);
create index on events (customer_id);
SQL
  # Two generator processes: the CPU-bound Python is the slow part.
  $gen pg-events $((rows / 2)) 1 | psql -q "$url" -c "\copy events from stdin csv" &
  local g=$!
  $gen pg-events $((rows / 2)) 2 | psql -q "$url" -c "\copy events from stdin csv"
  wait "$g"
  psql -q "$url" -c "vacuum analyze"
  pg_dump -Fc -Z0 "$url" > "$data/pg/dump-0.pgdump"
  # A day's change, ~2% of rows: new orders appended, a batch of recent ones updated.
  psql -q "$url" -v ON_ERROR_STOP=1 <<SQL
insert into events select id + 500000000, created_at + interval '1 day', customer_id, 'new',
  amount, note, payload from events where id % 100 < 3 and id < 200000000;
update events set status = 'shipped', payload = payload || '{"shipped":true}'
  where id between 100000000 and 100000000 + $rows / 200;
SQL
  pg_dump -Fc -Z0 "$url" > "$data/pg/dump-1.pgdump"
  as_pg "$pg_bin/pg_ctl" -D "$work/pg/db" -m fast stop >/dev/null
  touch "$data/pg/done"
}

make_redis() {
  [ -f "$data/redis/done" ] && return
  echo "generating the Redis dataset…" >&2
  rm -rf "$data/redis"; mkdir -p "$data/redis" "$work/redis"
  local port keys; port=$(free_port); keys=$(python3 -c "print(int(600000 * $scale))")
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work/redis" --save "" --appendonly no \
    --daemonize no --logfile "$work/redis/log" &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  # Two generator processes into files (a shared pipe would interleave their writes).
  $gen redis 0 $((keys / 2)) > "$work/redis/a.resp" &
  local g=$!
  $gen redis $((keys / 2)) $((keys - keys / 2)) > "$work/redis/b.resp"
  wait "$g"
  cat "$work/redis/a.resp" "$work/redis/b.resp" | redis-cli -p "$port" --pipe >/dev/null
  rm "$work/redis/a.resp" "$work/redis/b.resp"
  save_rdb() {
    local before; before=$(redis-cli -p "$port" lastsave)
    redis-cli -p "$port" bgsave >/dev/null
    while [ "$(redis-cli -p "$port" lastsave)" = "$before" ]; do sleep 0.2; done
    cp "$work/redis/dump.rdb" "$1"
  }
  sleep 1.1  # LASTSAVE has one-second resolution
  save_rdb "$data/redis/dump-0.rdb"
  $gen redis-change "$keys" 2 | redis-cli -p "$port" --pipe >/dev/null
  sleep 1.1
  save_rdb "$data/redis/dump-1.rdb"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  touch "$data/redis/done"
}

make_tree() {
  [ -f "$data/tree/done" ] && return
  echo "generating the directory dataset…" >&2
  rm -rf "$data/tree"; mkdir -p "$data/tree"
  $gen tree "$data/tree/base" "$(python3 -c "print(int(1536 * $scale))")"
  touch "$data/tree/done"
}

# ------------------------------------------------------------------ tools

# LIFEBOAT_BIN_DIR=DIR measures the binaries in DIR (another build, for before/after) instead
# of building this checkout's.
if [ -n "${LIFEBOAT_BIN_DIR:-}" ]; then
  B="$LIFEBOAT_BIN_DIR/lifeboat-backup" R="$LIFEBOAT_BIN_DIR/lifeboat-restore"
else
  cargo build --release --quiet --locked -p backup-cli -p restore-cli
  B="$root/target/release/lifeboat-backup" R="$root/target/release/lifeboat-restore"
fi
RUSTIC="$(command -v rustic || ls /opt/rustic/bin/rustic 2>/dev/null || true)"
available=""
for t in ${tools//,/ }; do
  case "$t" in
    lifeboat) available+="lifeboat," ;;
    restic) command -v restic >/dev/null && available+="restic," ;;
    rustic) [ -n "$RUSTIC" ] && available+="rustic," ;;
    borg) command -v borg >/dev/null && available+="borg," ;;
    zstd) command -v zstd >/dev/null && available+="zstd," ;;
  esac
done
missing=""; for t in ${tools//,/ }; do has "$available" "$t" || missing+="$t "; done

ms_port=""
if has "$stores" s3; then
  if [ ! -x "$root/.ci/venv/bin/ministack" ]; then
    python3 -m venv "$root/.ci/venv" && "$root/.ci/venv/bin/pip" install --quiet ministack==1.5.33
  fi
fi
# A fresh ministack for each tool's sequence: it keeps every object in memory, and a server
# holding the gigabytes of earlier runs answered more slowly than a fresh one.
ms_pid=""
ms_start() {
  [ -n "$ms_pid" ] && { kill "$ms_pid" 2>/dev/null; wait "$ms_pid" 2>/dev/null || true; }
  ms_port=$(free_port)
  GATEWAY_PORT=$ms_port BIND_HOST=127.0.0.1 SERVICES=s3 LOG_LEVEL=WARNING \
    "$root/.ci/venv/bin/ministack" >/dev/null 2>&1 &
  ms_pid=$!
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$ms_port") 2>/dev/null && break; sleep 0.1; done
}
mkbucket() { python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$ms_port/$1', method='PUT'))"; }

echo benchpw > "$work/pw"
export LIFEBOAT_PASSWORD_FILE="$work/pw" RESTIC_PASSWORD=benchpw RUSTIC_PASSWORD=benchpw \
  BORG_PASSPHRASE=benchpw BORG_RELOCATED_REPO_ACCESS_IS_OK=yes \
  BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR="$work/borg-home" \
  XDG_CACHE_HOME="$work/xdg-cache" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchbench \
  LIFEBOAT_S3_PATH_STYLE=true

# Every timed command runs under GNU time: "wall_s rss_kib cpu_percent".
timed() { /usr/bin/time -f "%e %M %P" -o "$work/time" "$@" >"$work/cmd.log" 2>&1 ||
  { echo "FAILED: $*" >&2; tail -20 "$work/cmd.log" >&2; return 1; }; tr -d '%' < "$work/time" | tr ' ' '\t'; }
# Input in the page cache, and no dirty pages of an earlier step (a copied dataset, another
# tool's repository) being written back while the next step is timed: that cost the first
# backup after a copy up to 40 % here.
# After deletions: this disk is mounted with `discard`, and trims still pending slowed the
# next timed writes (a floor measured right after a deletion came out 4x slower).
settle() { sync; fstrim / 2>/dev/null || true; sleep 1; }
warm() { if [ -d "$1" ]; then tar -cf - -C "$1" . > /dev/null; else cat "$1" > /dev/null; fi; sync; }
size_of() { du -sb "$1" | cut -f1; }

# repo_for TOOL STORE DATASET -> repository location (created by init_repo)
repo_for() {
  if [ "$2" = s3 ]; then
    case "$1" in
      lifeboat) echo "s3://bench-$1-$3/repo" ;;
      restic) echo "s3:http://127.0.0.1:$ms_port/bench-$1-$3/repo" ;;
    esac
  else echo "$work/repo-$1-$3"; fi
}
# Lifeboat's environment for one store and dataset: the S3 endpoint and a cache of its own.
lb_env() { echo "env AWS_ENDPOINT_URL=http://127.0.0.1:$ms_port LIFEBOAT_CACHE_DIR=$work/lbcache-$1-$2-${pass:-1}"; }
init_repo() { # tool store dataset
  local repo; repo=$(repo_for "$@")
  [ "$2" = s3 ] && mkbucket "bench-$1-$3"
  case "$1" in
    lifeboat) $(lb_env "$2" "$3") "$B" -r "$repo" init --kdf-memory-mib 16 -q ;;
    restic) restic -r "$repo" init --repository-version 2 -q ;;
    rustic) "$RUSTIC" -r "$repo" init >/dev/null 2>&1 ;;
    borg) borg init -e repokey-blake2 "$repo" >/dev/null 2>&1 ;;
    zstd) mkdir -p "$repo" ;;
  esac
}

# backup TOOL STORE DATASET INPUT N: INPUT is a file (streamed as the item "data") or a directory.
backup_cmd() {
  local tool=$1 repo input=$4 n=$5; repo=$(repo_for "$1" "$2" "$3")
  local base; base=$(basename "$input")
  case "$tool" in
    lifeboat)
      if [ -d "$input" ]; then echo "$(lb_env "$2" "$3") $B -r $repo run -q --volume data=$input"
      else echo "$(lb_env "$2" "$3") $B -r $repo run -q --command data='cat $input'"; fi ;;
    restic)
      if [ -d "$input" ]; then echo "restic -r $repo backup -q $input"
      else echo "restic -r $repo backup -q --stdin --stdin-filename data < $input"; fi ;;
    rustic)
      if [ -d "$input" ]; then echo "$RUSTIC -r $repo backup $input"
      # --force: rustic 0.11 otherwise takes stdin as unchanged from the parent snapshot and
      # records the old content without reading it (seen here).
      else echo "$RUSTIC -r $repo backup --force --stdin-filename data - < $input"; fi ;;
    borg)
      if [ -d "$input" ]; then echo "borg create -C zstd,3 $repo::s$n $input"
      else echo "borg create -C zstd,3 --stdin-name data $repo::s$n - < $input"; fi ;;
    zstd)
      if [ -d "$input" ]; then echo "tar -cf - -C $input . | zstd -q -T2 -3 -f -o $repo/s$n.tar.zst"
      else echo "zstd -q -T2 -3 -f $input -o $repo/s$n.zst"; fi ;;
  esac
}
restore_cmd() { # tool store dataset is_dir n target
  local tool=$1 repo is_dir=$4 n=$5 to=$6; repo=$(repo_for "$1" "$2" "$3")
  case "$tool" in
    lifeboat)
      if [ "$is_dir" = 1 ]; then echo "$(lb_env "$2" "$3") $R -r $repo run latest -q --to $to"
      else echo "$(lb_env "$2" "$3") $R -r $repo export latest data -o $to/data"; fi ;;
    restic) echo "restic -r $repo restore latest -q --target $to" ;;
    rustic) echo "$RUSTIC -r $repo restore latest $to" ;;
    borg) echo "cd $to && borg extract $repo::s$n" ;;
    zstd)
      if [ "$is_dir" = 1 ]; then echo "zstd -q -d -c $repo/s$n.tar.zst | tar -xf - -C $to"
      else echo "zstd -q -d -f $repo/s$n.zst -o $to/data"; fi ;;
  esac
}
# Streams the item to stdout (compared against a pipe to /dev/null: the pipeline without the
# disk, which bounds restores to files here).
dump_cmd() { # tool store dataset is_dir n path: a directory comes out as a tar stream
  local tool=$1 repo is_dir=$4 n=$5 path=$6; repo=$(repo_for "$1" "$2" "$3")
  [ "$is_dir" = 0 ] && path=/data
  case "$tool" in
    lifeboat) echo "$(lb_env "$2" "$3") $R -r $repo export latest data -o - > /dev/null" ;;
    restic) echo "restic -r $repo dump -q latest $path > /dev/null" ;;
    rustic) echo "$RUSTIC -r $repo dump latest:${path#/} > /dev/null" ;;
    borg)
      if [ "$is_dir" = 1 ]; then echo "borg export-tar $repo::s$n - > /dev/null"
      else echo "borg extract --stdout $repo::s$n > /dev/null"; fi ;;
    zstd)
      if [ "$is_dir" = 1 ]; then echo "zstd -q -d -c $repo/s$n.tar.zst > /dev/null"
      else echo "zstd -q -d -c $repo/s$n.zst > /dev/null"; fi ;;
  esac
}

# Where a tool put the restored copy of INPUT under TARGET.
restored_path() { # tool is_dir input target
  case "$1" in
    lifeboat) echo "$4/data" ;;
    restic | rustic | borg) if [ "$2" = 1 ]; then echo "$4${3}"; else echo "$4/data"; fi ;;
    zstd) [ "$2" = 1 ] && echo "$4" || echo "$4/data" ;;
  esac
}

results="$work/results.tsv"
: > "$results"
record() { echo -e "$*" >> "$results"; }

run_dataset() { # dataset store
  local ds=$1 store=$2 first second is_dir=0 live="$work/live-$1"
  case "$ds" in
    pg) first="$data/pg/dump-0.pgdump" second="$data/pg/dump-1.pgdump" ;;
    redis) first="$data/redis/dump-0.rdb" second="$data/redis/dump-1.rdb" ;;
    tree) first="$data/tree/base" second="" is_dir=1 ;;
  esac
  for pass in $(seq "$repeat"); do
  for tool in ${available//,/ }; do
    [ "$store" = s3 ] && ! has "lifeboat,restic" "$tool" && continue
    echo "== $ds / $store / $tool" >&2
    # The input lives at one path for all runs, so metadata-based file skipping (restic,
    # rustic, borg) sees a changed tree as a change of the same paths.
    rm -rf "$live"
    if [ "$is_dir" = 1 ]; then cp -a "$first" "$live"; else cp "$first" "$live"; fi
    # Lifeboat does not remember files changed within a second of a backup's start (a write in
    # the same timestamp tick would go unseen), so right after a bulk copy its next run reads
    # them all again. A nightly backup does not start within a second of such a copy.
    sleep 2
    [ "$store" = s3 ] && ms_start
    init_repo "$tool" "$store" "$ds"
    local repo sz step n=0 t
    repo=$(repo_for "$tool" "$store" "$ds")
    for step in first unchanged changed; do
      n=$((n + 1))
      if [ "$step" = changed ]; then
        if [ "$is_dir" = 1 ]; then $gen tree-change "$live" 2>/dev/null; else cp "$second" "$live"; fi
      fi
      warm "$live"
      t=$(timed sh -c "$(backup_cmd "$tool" "$store" "$ds" "$live" $n)")
      sz=""; [ "$store" = local ] && sz=$(size_of "$repo")
      record "$ds\t$store\t$tool\t$step\t$(size_of "$live")\t$t\t$sz"
    done
    local to="$work/restore"; rm -rf "$to"; mkdir -p "$to"; settle
    # Until the data is durable, for every tool: a restore is done when it survives a crash.
    t=$(timed sh -c "$(restore_cmd "$tool" "$store" "$ds" "$is_dir" "$n" "$to") && sync")
    local got; got=$(restored_path "$tool" "$is_dir" "$live" "$to")
    if [ "$is_dir" = 1 ]; then diff -rq "$live" "$got" >/dev/null || { echo "RESTORE DIFFERS: $tool $ds" >&2; exit 1; }
    else cmp -s "$live" "$got" || { echo "RESTORE DIFFERS: $tool $ds" >&2; exit 1; }; fi
    record "$ds\t$store\t$tool\trestore\t$(size_of "$live")\t$t\t"
    t=$(timed sh -c "$(dump_cmd "$tool" "$store" "$ds" "$is_dir" "$n" "$live")")
    record "$ds\t$store\t$tool\trestore to a pipe\t$(size_of "$live")\t$t\t"
    rm -rf "$to" "$repo" 2>/dev/null || true
  done
  # The disk's floor for the same bytes, in the same run: a plain copy, durable.
  if [ "$store" = local ]; then
    local to="$work/restore"; rm -rf "$to"; mkdir -p "$to"; warm "$live"; settle
    if [ "$is_dir" = 1 ]; then t=$(timed sh -c "cp -a $live $to/data && sync")
    else t=$(timed sh -c "cat $live > $to/data && sync"); fi
    record "$ds\t$store\tfloor\trestore\t$(size_of "$live")\t$t\t"
    rm -rf "$to"
  fi
  done
  rm -rf "$live"
}

# ------------------------------------------------------------------ whole stack

# The stack's sources, started once: PostgreSQL with the pg dataset, Redis with the RDB, the
# tree split into two volumes; and the target PostgreSQL server (fsync on, as in production).
stack_up() {
  st="$work/stack"; mkdir -p "$st"; chmod 755 "$work" "$st"
  src_port=$(free_port); start_postgres "$st/pg-src" "$src_port"
  psql -q "postgresql://postgres@127.0.0.1:$src_port/postgres" -c "create database bench"
  "$pg_bin/pg_restore" -j 2 -d "postgresql://postgres@127.0.0.1:$src_port/bench" "$data/pg/dump-0.pgdump"
  tgt_port=$(free_port); start_postgres "$st/pg-tgt" "$tgt_port" on
  redis_port=$(free_port); mkdir -p "$st/redis"; cp "$data/redis/dump-0.rdb" "$st/redis/dump.rdb"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$st/redis" --save "" --appendonly no \
    --daemonize no --logfile "$st/redis/log" &
  pids+=($!)
  for _ in $(seq 300); do [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  mkdir -p "$st/files.orig" "$st/media.orig"
  cp -a "$data/tree/base/src" "$data/tree/base/logs" "$data/tree/base/db" "$st/files.orig/"
  cp -a "$data/tree/base/media" "$data/tree/base/backup-copies" "$st/media.orig/"
}
stack_down() {
  as_pg "$pg_bin/pg_ctl" -D "$st/pg-src/db" -m fast stop >/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$st/pg-tgt/db" -m fast stop >/dev/null
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$st"
}
# Targets emptied again between restores: the database dropped, the volumes and RDB removed.
stack_clear() {
  psql -q "postgresql://postgres@127.0.0.1:$tgt_port/postgres" -c "drop database if exists bench" 2>/dev/null
  rm -rf "$st/files" "$st/media" "$st/redis-out"; mkdir -p "$st/redis-out"; settle
}
run_stack() { # store
  local store=$1 repo n t step only sz
  local pg_sz rdb_sz files_sz media_sz
  pg_sz=$(stat -c %s "$data/pg/dump-0.pgdump"); rdb_sz=$(stat -c %s "$data/redis/dump-0.rdb")
  files_sz=$(size_of "$st/files.orig"); media_sz=$(size_of "$st/media.orig")
  [ "$store" = s3 ] && ms_start
  init_repo lifeboat "$store" stack
  repo=$(repo_for lifeboat "$store" stack)
  # The volumes are backed up from the paths they are restored to.
  mv "$st/files.orig" "$st/files"; mv "$st/media.orig" "$st/media"
  $(lb_env "$store" stack) "$B" -r "$repo" run -q \
    --postgres "app=postgresql://postgres@127.0.0.1:$src_port/bench" \
    --redis "cache=redis://127.0.0.1:$redis_port" --volume "files=$st/files" --volume "media=$st/media"
  mv "$st/files" "$st/files.orig"; mv "$st/media" "$st/media.orig"
  local restore="$(lb_env "$store" stack) $R -r $repo run latest -q --to-postgres postgresql://postgres@127.0.0.1:$tgt_port/ --to-redis-dir $st/redis-out"
  for pass in $(seq "$repeat"); do
    echo "== stack / $store / pass $pass" >&2
    for step in "postgres alone" "postgres alone, --jobs 2" "redis alone" "volume files alone" \
                "volume media alone" "whole stack, one item at a time" "whole stack at once"; do
      case "$step" in
        "postgres alone") only="--only app"; sz=$pg_sz ;;
        "postgres alone, --jobs 2") only="--only app --jobs 2"; sz=$pg_sz ;;
        "redis alone") only="--only cache"; sz=$rdb_sz ;;
        "volume files alone") only="--only files"; sz=$files_sz ;;
        "volume media alone") only="--only media"; sz=$media_sz ;;
        "whole stack, one item at a time") only="--items-at-once 1"; sz=$((pg_sz + rdb_sz + files_sz + media_sz)) ;;
        "whole stack at once") only=""; sz=$((pg_sz + rdb_sz + files_sz + media_sz)) ;;
      esac
      stack_clear
      t=$(timed sh -c "$restore $only && sync")
      record "stack\t$store\tlifeboat\t$step\t$sz\t$t\t"
    done
    # The last (at-once) restore, checked: volumes file by file, the RDB byte for byte
    # against a fresh export (row counts of every table were checked by the restore itself).
    diff -rq "$st/files.orig" "$st/files" >/dev/null && diff -rq "$st/media.orig" "$st/media" >/dev/null ||
      { echo "STACK RESTORE DIFFERS ($store)" >&2; exit 1; }
    $(lb_env "$store" stack) "$R" -r "$repo" export latest cache -o - | cmp -s - "$st/redis-out/dump.rdb" ||
      { echo "STACK RDB DIFFERS ($store)" >&2; exit 1; }
  done
  stack_clear
  rm -rf "$repo" 2>/dev/null || true
}

has "$datasets" pg && make_pg
has "$datasets" redis && make_redis
has "$datasets" tree && make_tree
if has "$datasets" stack; then make_pg; make_redis; make_tree; fi
for ds in ${datasets//,/ }; do
  [ "$ds" = stack ] && continue
  for store in ${stores//,/ }; do run_dataset "$ds" "$store"; done
done
if has "$datasets" stack && has "$available" lifeboat; then
  stack_up
  for store in ${stores//,/ }; do run_stack "$store"; done
  stack_down
fi

# ------------------------------------------------------------------ report
{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -sr);" \
       "$(date -u +%Y-%m-%d). Versions: lifeboat $(git -C "$root" rev-parse --short HEAD)," \
       "$(restic version 2>/dev/null | cut -d' ' -f1-2 || true), $([ -n "$RUSTIC" ] && "$RUSTIC" --version || true)," \
       "$(borg --version 2>/dev/null || true), $(zstd --version 2>/dev/null | cut -d, -f1 || true)."
  [ -n "$missing" ] && echo "Not installed, left out: $missing"
  echo
  if [ -n "$merge" ]; then
    awk -F'\t' -v ran="$available" 'index("," ran, "," $3 ",") == 0' "$merge" >> "$results"
  fi
  cp "$results" "${out%.md}.tsv"
  python3 - "$results" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
bad = [r for r in rows if len(r) != 9]
assert not bad, bad
order = {k: i for i, k in enumerate(["pg", "redis", "tree", "stack", "local", "s3", "lifeboat", "restic",
         "rustic", "borg", "zstd", "floor", "first", "unchanged", "changed", "restore", "restore to a pipe",
         "postgres alone", "postgres alone, --jobs 2", "redis alone", "volume files alone",
         "volume media alone", "whole stack, one item at a time", "whole stack at once"])}
rows.sort(key=lambda r: (order[r[0]], order[r[1]], order[r[2]], order[r[3]]))
# Repeated runs (--repeat): the run with the median wall time, and the range.
runs = collections.OrderedDict()
for r in rows:
    runs.setdefault(tuple(r[:4]), []).append(r)
by = collections.OrderedDict()
for rs in runs.values():
    rs.sort(key=lambda r: float(r[5]))
    ds, store, tool, step, size, wall, rss, cpu, repo = rs[len(rs) // 2]
    spread = f"{float(rs[0][5]):.2f}–{float(rs[-1][5]):.2f}" if len(rs) > 1 else ""
    by.setdefault((ds, store), []).append((tool, step, int(size), float(wall), int(rss), cpu, repo, spread))
many = any(r[-1] for rs in by.values() for r in rs)
names = {"pg": "PostgreSQL dump", "redis": "Redis RDB", "tree": "directory",
         "stack": "whole stack (PostgreSQL, Redis, two volumes), restore"}
for (ds, store), rs in by.items():
    size = max(r[2] for r in rs) if ds == "stack" else rs[0][2]
    print(f"### {names[ds]}, {size / 1e6:.0f} MB, {store} repository\n")
    print("| tool | step | wall s | " + ("range s | " if many else "") +
          "MB/s | CPU % | peak RSS MiB | repo MB | added MB |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if many else ""))
    prev = {}
    for tool, step, size, wall, rss, cpu, repo, spread in rs:
        added = ""
        if repo:
            if tool in prev:
                added = f"{(int(repo) - prev[tool]) / 1e6:.1f}"
            prev[tool] = int(repo)
            repo = f"{int(repo) / 1e6:.0f}"
        print(f"| {tool} | {step} | {wall:.2f} | " + (f"{spread} | " if many else "") +
              f"{size / 1e6 / max(wall, 0.01):.0f} | {cpu} | "
              f"{rss / 1024:.0f} | {repo} | {added} |")
    print()
    if ds == "stack":
        wall = {step: w for _, step, _, w, *_ in rs}
        alone = max((w, step) for step, w in wall.items() if step.endswith(" alone"))
        whole = wall.get("whole stack at once")
        if whole:
            print(f"RTO (whole stack at once): {whole:.2f} s = {whole / alone[0]:.2f}x the slowest "
                  f"item alone ({alone[1]}, {alone[0]:.2f} s); one item at a time: "
                  f"{wall.get('whole stack, one item at a time', 0):.2f} s\n")
PY
} > "$out"
cat "$out"
echo "report: $out" >&2
