#!/usr/bin/env bash
# mypy over the installed import names (dario.daemon, dario.ctl, dario.tray): the folders are
# mapped by setuptools' package-dir, which mypy cannot follow, so check through a symlink tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/dario"
for part in daemon ctl tray; do ln -s "$PWD/$part" "$tree/dario/$part"; done
MYPYPATH="$tree" "${MYPY:-mypy}" --namespace-packages --explicit-package-bases \
  --cache-dir .mypy_cache -p dario.daemon -p dario.ctl -p dario.tray "$@"
