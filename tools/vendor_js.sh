#!/usr/bin/env bash
# Refresh the JavaScript that the built book serves itself instead of loading
# from a CDN: MathJax 3 and the ipywidgets HTML manager, taken from the npm
# registry with `npm pack` and trimmed to the files a page loads.
# plotly.js and the circuitsvis bundle are not kept here: the book's Sphinx
# extension (book/_ext/coursebook.py) copies them from the installed Python
# packages at build time, so they always match the Python side.
#
# Usage: tools/vendor_js.sh   (needs npm and the npm registry; the book build does not)
set -euo pipefail

MATHJAX_VERSION=3.2.2
HTML_MANAGER_VERSION=1.0.15

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/book/_static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "mathjax@$MATHJAX_VERSION" "@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION" >/dev/null
mkdir mathjax html-manager
tar xzf "mathjax-$MATHJAX_VERSION.tgz" -C mathjax
tar xzf "jupyter-widgets-html-manager-$HTML_MANAGER_VERSION.tgz" -C html-manager

rm -rf "$dest/mathjax" "$dest/html-manager"
mkdir -p "$dest/mathjax/output/chtml/fonts" "$dest/html-manager"

# MathJax: one combined file (TeX input with every extension, CommonHTML
# output, the menu) and the web fonts it loads relative to itself.
cp mathjax/package/es5/tex-chtml-full.js mathjax/package/LICENSE "$dest/mathjax/"
cp -r mathjax/package/es5/output/chtml/fonts/woff-v2 "$dest/mathjax/output/chtml/fonts/"

# ipywidgets: the standalone embed bundle (no require.js needed) and the
# Font Awesome web fonts its CSS points at (woff2 and woff cover current browsers).
hm=html-manager/package/dist
cp "$hm/embed.js" "$hm/embed.js.LICENSE.txt" "$dest/html-manager/"
cp "$hm"/*.woff2 "$hm"/*.woff "$dest/html-manager/"
cat > "$dest/html-manager/LICENSE" <<'LIC'
@jupyter-widgets/html-manager is distributed under the BSD-3-Clause license
(see its package.json, "license": "BSD-3-Clause"); the third-party notices
bundled into embed.js are listed in embed.js.LICENSE.txt. The npm package
ships no LICENSE file of its own; the license text is the one of the
ipywidgets project, which publishes this package.
LIC

printf 'mathjax %s\n@jupyter-widgets/html-manager %s\n' "$MATHJAX_VERSION" "$HTML_MANAGER_VERSION" > "$dest/VERSIONS"
du -sh "$dest"
