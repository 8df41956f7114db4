#!/usr/bin/env bash
# Runs the operator's unit tests with the LOWEST versions pyproject.toml allows for the
# product's dependencies.
#
# Why: a range that claims more than the code supports installs cleanly and fails at the first
# call (the Kubernetes adapter once needed client 37 while pyproject said >=31). Each `>=X`
# (and `==X`) of [project].dependencies becomes `==X` in a fresh virtualenv; the test tools come
# at the versions `make venv` resolves; torch is not installed (the operator never needs it),
# so only the operator's folders run: the unit tests and the kmock ones.
#
# Usage: scripts/lowest-deps.sh [VENV_DIR]   (default .venv-lowest; recreated each run)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-lowest}"
python="${PYTHON:-python3}"

pins="$("$python" - "$repo/pyproject.toml" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
for dep in deps:
    m = re.match(r"^([A-Za-z0-9_.\[\]-]+)\s*(?:>=|==)\s*([0-9][^,;\s]*)", dep)
    if not m:
        sys.exit(f"lowest-deps: no lower bound in {dep!r}: every dependency needs one")
    print(f"{m.group(1)}=={m.group(2)}")
EOF
)"
echo "lowest allowed versions:"; echo "$pins" | sed 's/^/  /'

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q $pins \
    "pytest>=8" "pytest-timeout>=2.3" "pytest-asyncio>=0.24" "hypothesis>=6.100" "kmock==0.8" \
    "looptime>=0.2" "kubernetes-validate>=1.31" "matplotlib>=3.8" "scipy" "setuptools>=77"
"$venv/bin/python" -m pip install -q --no-deps -e "$repo" -e "$repo/tools/testbed"
echo "installed:"
# shellcheck disable=SC2086
"$venv/bin/python" -c '
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name = pin.split("==")[0]
    print(f"  {name}=={version(name)}")
' $pins

cd "$repo"
# The unit tests, and the real operator (kopf, the kubernetes client) against kmock, which is
# where the client's methods are called.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    -m "not testbed and not prometheus and (not slow or kmock)" \
    tests/operator tests/policy tests/arbiter tests/simulation
