#!/bin/sh
# Build dist/server-starter_<version>_all.deb and
# dist/server-starter-example_<version>_all.deb with dpkg-buildpackage,
# offline, from a copy of the tree.  An optional argument builds another
# version (the upgrade tests build a newer one).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
version=${1:-$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)}
out=${DIST_DIR:-$top/dist}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

src="$work/server-starter-$version"
mkdir -p "$src" "$out"
git ls-files -z --cached --others --exclude-standard \
    | grep -zv '^packaging/' | xargs -0 cp --parents -t "$src"
cp -r packaging/debian "$src/debian"
if [ "$version" != "$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)" ]; then
    {
        printf 'server-starter (%s) unstable; urgency=medium\n\n' "$version"
        printf '  * Rebuild as %s.\n\n' "$version"
        printf ' -- server-starter maintainers <maintainers@server-starter.invalid>  %s\n\n' "$(date -R)"
        cat packaging/debian/changelog
    } > "$src/debian/changelog"
fi
# The program says the version it was built as (the in-place upgrade logs
# both the old and the new one).
sed -i "s/^__version__ = .*/__version__ = \"$version\"/" "$src/src/server_starter/__init__.py"
# Debian's python3 builds the package, whatever else is first on PATH.
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b --no-sign > "$work/build.log" 2>&1) || {
    tail -40 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed" >&2
    exit 1
}
mv "$work"/*.deb "$out/"
ls "$out"/*"_${version}_all.deb"
