#!/usr/bin/env bash
# CI smoke: run every bench script in bench/ that has a --quick flag, in that mode (tiny
# shapes, a few repeats). Each script validates against numbadlrm.reference before it
# times, so this also checks every kernel version end to end. Must finish in < 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
for script in bench/*.py; do
    case "$(basename "$script")" in _*) continue ;; esac
    # the flag, as the script's argparse declares it (reading the source runs nothing)
    if ! grep -q -- '"--quick"' "$script"; then
        echo "== $script: no --quick flag, skipped"
        continue
    fi
    echo "== $script --quick"
    t0=$SECONDS
    python "$script" --quick
    echo "== $script: $((SECONDS - t0)) s"
done
echo "== smoke: all benches passed in $((SECONDS - start)) s"
