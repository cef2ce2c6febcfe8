#!/usr/bin/env bash
# Metadata fidelity against restic on the same tree, in one run: odd, long and non-UTF-8 names,
# nanosecond mtimes, extended attributes, POSIX ACLs (a mask wider than the group entry), a
# file capability, hard links, symlinks, a FIFO, a device node, a 100 MiB sparse file, empty
# directories. Each tool backs the tree up and restores it; each restore is compared with the
# source as `find -printf '%p %m %s %T@ %y %l %U %G %n'`, `getfattr -d -m -`, `getfacl` and
# allocated blocks see them. Prints one line per tool and comparison. Run as root (device
# node, capability); needs restic, attr, acl, libcap2-bin.
#
#   bench/fidelity.sh          (KEEP=1: leave the work directory, with each comparison's diff)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --quiet --locked -p backup-cli -p restore-cli
B="$root/target/release/lifeboat-backup" R="$root/target/release/lifeboat-restore"
work="$(mktemp -d)"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
src="$work/src"
mkdir -p "$src"/{odd,empty/nested,acl-dir,deep}
cd "$src"
echo -n space > "odd/sp ace"; echo -n tab > "odd/tab	name"; echo -n unicode > "odd/ünïcödé"
echo -n latin1 > "odd/latin1-$(printf '\351')t$(printf '\351')"
echo -n long > "odd/$(printf 'n%.0s' $(seq 250))"
deep="deep/$(printf 'segment-of-a-long-path/%.0s' $(seq 8))"; mkdir -p "$deep"; echo leaf > "$deep/leaf"
printf 'plain file\n' > plain; ln plain plain.hardlink; ln -s plain link; ln -s nowhere/at/all dangling
truncate -s 100M sparse.img; printf x | dd of=sparse.img bs=1 seek=$((50 << 20)) conv=notrunc status=none
echo shared > acl-dir/shared; printf '#!/bin/sh\n' > setuid
chmod 4755 setuid; chmod 0600 plain; chmod 0700 odd; mkfifo fifo; chmod 0640 fifo
setfattr -n user.comment -v 'hello world' plain; setfattr -n user.binary -v 0x00ff10 odd
setfacl -m u:nobody:rwx,g::r--,m::rwx acl-dir/shared; setfacl -d -m u:nobody:r-x acl-dir
mknod null-device c 1 3; chown 1234:5678 plain; setcap cap_net_bind_service=+ep setuid
find . -depth -print0 | xargs -0 touch -h -d '@1709210096.123456789'
cd "$work"

listing() { # DIR KIND
  (cd "$1" && case "$2" in
    find) find . -printf '%p %m %s %T@ %y %l %U %G %n\n' | LC_ALL=C sort ;;
    xattrs) find . -print0 | LC_ALL=C sort -z | xargs -0 getfattr -h -d -m - -e hex 2>/dev/null ;;
    acls) find . \( -type f -o -type d \) -print0 | LC_ALL=C sort -z | xargs -0 getfacl -p 2>/dev/null ;;
    blocks) find . -type f -printf '%p %b\n' | LC_ALL=C sort ;;
  esac)
}
compare() { # TOOL DIR
  for kind in find xattrs acls blocks; do
    if diff <(listing "$src" $kind) <(listing "$2" $kind) > "$work/$1.$kind.diff"; then
      printf '%-9s %-7s equal\n' "$1" "$kind"
    else
      printf '%-9s %-7s DIFFERS: %s lines, e.g. %s\n' "$1" "$kind" \
        "$(grep -c '^[<>]' "$work/$1.$kind.diff")" "$(grep -m1 '^>' "$work/$1.$kind.diff" | cut -c1-100)"
    fi
  done
}

echo pw > pw
export LIFEBOAT_PASSWORD_FILE="$work/pw" LIFEBOAT_CACHE_DIR="$work/cache" RESTIC_PASSWORD=pw
"$B" -r "$work/lb" init --kdf-memory-mib 16 -q
"$B" -r "$work/lb" run -q --volume "tree=$src" || echo "lifeboat-backup run exited $?"
"$R" -r "$work/lb" run -q latest --to "$work/lb-out"
compare lifeboat "$work/lb-out/tree"

restic -r "$work/restic" init -q
(cd "$src" && restic -r "$work/restic" backup -q .) || echo "restic backup exited $?"
restic -r "$work/restic" restore -q latest --target "$work/restic-out"
compare restic "$work/restic-out"
echo "restic $(restic version | cut -d' ' -f2), lifeboat $(git -C "$root" rev-parse --short HEAD)"
