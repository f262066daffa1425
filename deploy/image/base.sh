#!/bin/sh
# The image's base, from Debian's own packages: bookworm (its python3 is 3.11, what the project
# is tested on) made by mmdebstrap, imported as localhost/tierroute-base:bookworm.
# Run as root (mmdebstrap's root mode; buildah with chroot isolation and the vfs driver, which
# need no daemon and no kernel overlay support). Skipped when the base is already there.
set -eu
tag=${1:-localhost/tierroute-base:bookworm}
if buildah inspect --type image "$tag" >/dev/null 2>&1; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,ca-certificates,libnuma1,libgomp1,procps \
    bookworm "$work/rootfs.tar" http://deb.debian.org/debian
ctr=$(buildah from scratch)
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
buildah config --env LANG=C.UTF-8 --cmd /bin/sh "$ctr"
buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
echo "built $tag"
