#!/usr/bin/env bash
# Install the real Fashion-MNIST data for the Fashion-MNIST example
# (python -m autoquant.examples.fashion_mnist, tests/examples/test_fashion_mnist.py).
#
# The data comes from Debian's package dataset-fashion-mnist, which installs the four IDX
# files of the Zalando Research release, gzipped, under /usr/share/datasets/fashion-mnist/
# (about 30 MB). Nothing is downloaded from anywhere but the distribution's package archive.
#
# Idempotent: when the four files are there and well-formed, it only says where they are.
# Otherwise it runs `apt-get update` (only when the package is unknown to apt) and
# `apt-get install dataset-fashion-mnist` (as root, or through sudo), then checks again.
# Data elsewhere: set AUTOQUANT_FASHION_MNIST to a directory holding the four files
# (gzipped or not); this script then only checks that directory.
set -euo pipefail

trap 'echo "scripts/setup_fashion_mnist.sh: FAILED (line $LINENO); see the output above." >&2' ERR

DEFAULT_DIR=/usr/share/datasets/fashion-mnist
DIR="${AUTOQUANT_FASHION_MNIST:-$DEFAULT_DIR}"
PACKAGE=dataset-fashion-mnist

# name, IDX magic (hex), size of the uncompressed file in bytes
FILES=(
    "train-images-idx3-ubyte 00000803 47040016"
    "train-labels-idx1-ubyte 00000801 60008"
    "t10k-images-idx3-ubyte 00000803 7840016"
    "t10k-labels-idx1-ubyte 00000801 10008"
)

fail() {
    trap - ERR
    echo "scripts/setup_fashion_mnist.sh: ERROR: $*" >&2
    exit 1
}

# Prints nothing and succeeds when every file in $DIR is present and well-formed;
# otherwise prints what is wrong and fails.
check() {
    local ok=0 entry name magic size path got_magic got_size
    for entry in "${FILES[@]}"; do
        read -r name magic size <<<"$entry"
        if [[ -f "$DIR/$name" ]]; then
            path="$DIR/$name"
            got_magic="$(head -c 4 "$path" | od -An -tx1 | tr -d ' \n')"
            got_size="$(stat -c %s "$path")"
        elif [[ -f "$DIR/$name.gz" ]]; then
            path="$DIR/$name.gz"
            if ! gzip -t "$path" 2>/dev/null; then
                echo "  $path: corrupt gzip stream"
                ok=1
                continue
            fi
            got_magic="$(gzip -dc "$path" | head -c 4 | od -An -tx1 | tr -d ' \n')"
            got_size="$(gzip -dc "$path" | wc -c)"
        else
            echo "  $DIR/$name[.gz]: missing"
            ok=1
            continue
        fi
        if [[ "$got_magic" != "$magic" || "$got_size" != "$size" ]]; then
            echo "  $path: IDX magic $got_magic, $got_size bytes; expected $magic, $size bytes"
            ok=1
        fi
    done
    return "$ok"
}

report() {
    echo "scripts/setup_fashion_mnist.sh: Fashion-MNIST is installed in $DIR:"
    local f
    for f in "$DIR"/*-ubyte*; do
        printf '  %-30s %10s bytes\n' "$(basename "$f")" "$(stat -c %s "$f")"
    done
    if [[ -n "${AUTOQUANT_FASHION_MNIST:-}" ]]; then
        echo "  (AUTOQUANT_FASHION_MNIST; the example reads the same variable)"
    fi
}

if problems="$(check)"; then
    report
    exit 0
fi

if [[ "$DIR" != "$DEFAULT_DIR" ]]; then
    fail "AUTOQUANT_FASHION_MNIST=$DIR does not hold the Fashion-MNIST IDX files:
$problems
Put the four files there, or unset AUTOQUANT_FASHION_MNIST to use $PACKAGE's $DEFAULT_DIR."
fi

echo "scripts/setup_fashion_mnist.sh: Fashion-MNIST not found in $DIR:"
echo "$problems"

command -v apt-get >/dev/null 2>&1 ||
    fail "apt-get is not available (not a Debian/Ubuntu system): put the four IDX files in a
directory and set AUTOQUANT_FASHION_MNIST to it."

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 ||
        fail "installing $PACKAGE needs root, and sudo is not available: run this script as root."
    SUDO=(sudo)
fi

candidate() {
    apt-cache policy "$PACKAGE" 2>/dev/null | awk '/Candidate:/ {print $2}'
}
if [[ -z "$(candidate)" || "$(candidate)" == "(none)" ]]; then
    echo "scripts/setup_fashion_mnist.sh: $PACKAGE is not in apt's lists; running apt-get update"
    "${SUDO[@]}" apt-get update -qq
fi
c="$(candidate)"
if [[ -z "$c" || "$c" == "(none)" ]]; then
    fail "apt knows no package $PACKAGE even after apt-get update: this needs a Debian or
Ubuntu release that ships it (Debian's main component), or the four IDX files in a directory
named by AUTOQUANT_FASHION_MNIST."
fi

echo "scripts/setup_fashion_mnist.sh: installing $PACKAGE $c"
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "$PACKAGE"

if ! problems="$(check)"; then
    fail "$PACKAGE is installed but $DIR is still incomplete:
$problems"
fi
report
