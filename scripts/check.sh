#!/usr/bin/env bash
# npm run check: type check, proto lint, generated-code drift, and breaking-change detection.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "check: tsc"
npx tsc --noEmit -p tsconfig.json

echo "check: buf lint"
npx buf lint

echo "check: gen/ is up to date with proto/"
npm run --silent generate
if [ -n "$(git status --porcelain -- gen)" ]; then
  git status --short -- gen
  echo "gen/ differs from 'npm run generate'; regenerate and commit it" >&2
  exit 1
fi

echo "check: buf breaking (FILE) against the previous commit"
if git rev-parse --verify -q HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = "true" ]; then git fetch -q --deepen=1 || true; fi
  npx buf breaking --against ".git#ref=HEAD~1"
else
  echo "  (no previous commit with buf.yaml; nothing to compare)"
fi
