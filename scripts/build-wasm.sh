#!/usr/bin/env bash
# Compiles every AssemblyScript module assembly/<name>/index.ts to
# build/wasm/<name>.wasm (options in asconfig.json), only when a source
# under assembly/ or asconfig.json is newer than the output.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/wasm
for entry in assembly/*/index.ts; do
  [ -f "$entry" ] || continue
  name="$(basename "$(dirname "$entry")")"
  out="build/wasm/$name.wasm"
  if [ -f "$out" ] && [ -z "$(find assembly asconfig.json -newer "$out" -name '*.ts' -o -newer "$out" -name asconfig.json | head -1)" ]; then
    continue
  fi
  echo "setup: wasm: compiling $entry -> $out"
  npx asc "$entry" --config asconfig.json --target release --outFile "$out"
done
