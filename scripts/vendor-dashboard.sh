#!/usr/bin/env bash
# Vendors the dashboard's third-party browser code (xterm.js and its fit addon) from the npm
# registry into crates/wrenn-server/dashboard/vendor/, with their licences. Pinned versions and
# checksums make the output reproducible; the server compiles the files into its binary, so
# nothing here runs at build or run time.
#
#   scripts/vendor-dashboard.sh          (needs `npm` and the registry; run after changing a pin)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo_root/crates/wrenn-server/dashboard/vendor"

# name@version, then the tarball's sha512 integrity as published (npm view NAME@VER dist.integrity)
packages=(
  "@xterm/xterm@6.0.0 sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg=="
  "@xterm/addon-fit@0.11.0 sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g=="
)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for entry in "${packages[@]}"; do
  read -r spec integrity <<<"$entry"
  tarball="$(cd "$work" && npm pack --silent "$spec" | tail -n1)"
  got="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
  if [[ "$got" != "$integrity" ]]; then
    echo "integrity mismatch for $spec: $got" >&2
    exit 1
  fi
done

unpack() { # tarball dir
  mkdir -p "$2"
  tar -xzf "$1" -C "$2" --strip-components=1
}
unpack "$work"/xterm-xterm-6.0.0.tgz "$work/xterm"
unpack "$work"/xterm-addon-fit-0.11.0.tgz "$work/fit"

rm -rf "$out"
mkdir -p "$out/xterm" "$out/addon-fit"
# Drop the sourceMappingURL comment: the maps are not shipped.
sed '/^\/\/# sourceMappingURL=/d' "$work/xterm/lib/xterm.mjs" >"$out/xterm/xterm.mjs"
cp "$work/xterm/css/xterm.css" "$out/xterm/xterm.css"
cp "$work/xterm/LICENSE" "$out/xterm/LICENSE"
sed '/^\/\/# sourceMappingURL=/d' "$work/fit/lib/addon-fit.mjs" >"$out/addon-fit/addon-fit.mjs"
cp "$work/fit/LICENSE" "$out/addon-fit/LICENSE"
cat >"$out/README.md" <<TXT
Vendored by \`scripts/vendor-dashboard.sh\`; do not edit by hand.

| package | version | licence |
|---|---|---|
| @xterm/xterm | 6.0.0 | MIT (xterm/LICENSE) |
| @xterm/addon-fit | 0.11.0 | MIT (addon-fit/LICENSE) |
TXT
(cd "$out" && sha256sum xterm/* addon-fit/* >SHA256SUMS)
echo "vendored into $out"
