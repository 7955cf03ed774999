"""Deployment files (deploy/docker, deploy/k8s; docs/kubernetes.md), checked offline:

- every kustomization renders with a current kubectl and every object validates against the
  Kubernetes API schemas, strictly (unknown fields, removed apiVersions, unknown kinds), plus
  what Herald relies on across objects (tests/deploy/check.mjs); the Dockerfile is linted;
- each kind of mistake is shown to fail that check: a wrong field type, an unknown kind, an unknown
  field, a removed apiVersion, a broker count that disagrees with the StatefulSet, an edge grace
  period shorter than its drain, a misspelt option variable, a broken Dockerfile;
- yamllint passes on every YAML file of the repository, and fails on a bad one;
- the broker entrypoint (deploy/docker/broker-entrypoint.sh) derives the node id and the broker
  list from the pod, and refuses bad input with a clear message and exit status 2; through it a
  real broker starts with peers whose DNS names do not resolve, and keeps serving;
- the ConfigMap path: a broker and an edge configured only by the dev overlay's ConfigMaps (as
  environment variables; just the addresses replaced by loopback ones) serve, and the edge drains
  with the overlay's grace on SIGTERM.

Needs `npm ci` in tests/deploy (scripts/deps.sh test does it) and Debian's yamllint.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import (BROKER_BIN, BUILD_DIR, EDGE_BIN, SOURCE_DIR, end_process, free_port,
                      partition_of, run_cli, track)

DEPLOY_TESTS = SOURCE_DIR / "tests" / "deploy"
CHECK = DEPLOY_TESTS / "check.mjs"
K8S = SOURCE_DIR / "deploy" / "k8s"
DOCKERFILE = SOURCE_DIR / "deploy" / "docker" / "Dockerfile"
ENTRYPOINT = SOURCE_DIR / "deploy" / "docker" / "broker-entrypoint.sh"
YAMLLINT_CONFIG = DEPLOY_TESTS / "yamllint.yaml"


def node():
    path = shutil.which("node")
    assert path, "node not found: scripts/deps.sh test installs Node.js"
    assert (DEPLOY_TESTS / "node_modules").is_dir(), \
        "tests/deploy/node_modules is missing: run scripts/deps.sh test (npm ci in tests/deploy)"
    return path


def run_check(*args, timeout=60):
    proc = subprocess.run([node(), str(CHECK), "--build-dir", str(BUILD_DIR), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def rendered(overlay):
    proc = subprocess.run([node(), str(CHECK), "--render", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def config_map(objects, prefix):
    """The data of the generated ConfigMap whose name starts with `prefix` (a hash follows)."""
    for o in objects:
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix + "-"):
            return dict(o["data"])
    raise AssertionError(f"no ConfigMap {prefix}-… in the rendered overlay")


# ---- the repository's manifests and Dockerfile ---------------------------------------------------

def test_every_overlay_renders_and_validates_and_the_dockerfile_lints():
    rc, out = run_check()
    assert rc == 0, out
    for target in ("deploy/k8s/overlays/dev:", "deploy/k8s/overlays/prod:",
                   "components/ingress:", "components/servicemonitor:",
                   "deploy/docker/Dockerfile:"):
        assert any(line.startswith("ok") and target in line for line in out.splitlines()), out
    assert "check.mjs: all checks passed" in out
    assert "note: no herald binaries" not in out, out  # option names were checked against --help


def test_overlays_have_the_documented_shape():
    dev, prod = rendered("dev"), rendered("prod")

    def one(objects, kind, name):
        found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)}"
        return found[0]

    assert one(dev, "StatefulSet", "herald-broker")["spec"]["replicas"] == 1
    assert one(dev, "Deployment", "herald-edge")["spec"]["replicas"] == 1
    assert config_map(dev, "herald-broker-config")["HERALD_BROKER_REPLICAS"] == "1"
    assert one(prod, "StatefulSet", "herald-broker")["spec"]["replicas"] == 3
    assert config_map(prod, "herald-broker-config")["HERALD_BROKER_REPLICAS"] == "3"
    hpa = one(prod, "HorizontalPodAutoscaler", "herald-edge")
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in one(prod, "Deployment", "herald-edge")["spec"]
    assert not [o for o in dev if o["kind"] == "HorizontalPodAutoscaler"]
    sts = one(prod, "StatefulSet", "herald-broker")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] \
        == "20Gi"
    assert "requiredDuringSchedulingIgnoredDuringExecution" in \
        sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    for objects, image in ((dev, "localhost/herald:dev"),
                           (prod, "registry.example.com/herald:0.1.0")):
        images = {c["image"] for o in objects if o["kind"] in ("StatefulSet", "Deployment")
                  for c in o["spec"]["template"]["spec"]["containers"]}
        assert images == {image}, images
        for kind in ("PodDisruptionBudget", "NetworkPolicy", "Service"):
            assert [o for o in objects if o["kind"] == kind], kind


# ---- each kind of mistake fails the check ------------------------------------------------------

BROKER_PATCH = """
  - patch: |-
      apiVersion: apps/v1
      kind: StatefulSet
      metadata:
        name: herald-broker
      spec:
{body}
"""

EDGE_PATCH = """
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: herald-edge
      spec:
{body}
"""


def indent(text, n):
    return "\n".join(" " * n + line if line else line for line in text.strip("\n").splitlines())


MISTAKES = {
    # name: (patches, extra resources, config literals (broker, edge), expected message)
    "wrong field type": (
        [BROKER_PATCH.format(body=indent('replicas: "three"', 8))], "", ([], []),
        "StatefulSet/herald-broker: schema: /spec/replicas must be integer"),
    "unknown kind": (
        [], "apiVersion: apps/v1\nkind: Deplyment\nmetadata:\n  name: typo\n", ([], []),
        "Deplyment/typo: unknown kind Deplyment in apps/v1"),
    "unknown field": (
        [BROKER_PATCH.format(body=indent("""
template:
  spec:
    containers:
      - name: broker
        livenessprobe:
          periodSeconds: 10""", 8))], "", ([], []),
        "StatefulSet/herald-broker: unknown field /spec/template/spec/containers/0/livenessprobe"),
    "unknown nested field": (
        [EDGE_PATCH.format(body=indent("""
template:
  spec:
    containers:
      - name: edge
        securityContext:
          readOnlyRootFileSystem: true""", 8))], "", ([], []),
        "unknown field /spec/template/spec/containers/0/securityContext/readOnlyRootFileSystem"),
    "removed apiVersion": (
        [], "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata:\n  name: old\n"
            "spec:\n  maxUnavailable: 1\n", ([], []),
        "PodDisruptionBudget/old: apiVersion policy/v1beta1 is no longer served"),
    "broker count disagrees with the StatefulSet": (
        [BROKER_PATCH.format(body=indent("replicas: 3", 8))], "", ([], []),
        "StatefulSet/herald-broker: replicas 3 but HERALD_BROKER_REPLICAS=1"),
    "edge grace shorter than its drain": (
        [EDGE_PATCH.format(body=indent("""
template:
  spec:
    terminationGracePeriodSeconds: 5""", 8))], "", ([], []),
        "terminationGracePeriodSeconds 5 does not cover the edge's drain"),
    "misspelt option variable": (
        [], "", ([], ["HERALD_EDGE_DRAIN_GRACEE=1000"]),
        "HERALD_EDGE_DRAIN_GRACEE is not an option of herald-edge"),
    "node id for every pod alike": (
        [], "", (["HERALD_BROKER_NODE_ID=0"], []),
        "HERALD_BROKER_NODE_ID is set for every pod alike"),
    "privilege escalation allowed": (
        [EDGE_PATCH.format(body=indent("""
template:
  spec:
    containers:
      - name: edge
        securityContext:
          allowPrivilegeEscalation: true""", 8))], "", ([], []),
        "container edge: allowPrivilegeEscalation is not false"),
    "Service port that names no container port": (
        [], "", ([], []), "targetPort requestz is not a named container port"),
}


def write_mistake(tmp_path, name):
    patches, extra, (broker_env, edge_env), _ = MISTAKES[name]
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    if name == "Service port that names no container port":
        svc = root / "base" / "broker-services.yaml"
        text = svc.read_text()
        svc.write_text(text.replace("targetPort: requests", "targetPort: requestz", 1))
    overlay = root / "overlays" / "mistake"
    overlay.mkdir()
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization",
             "resources:", "  - ../dev"]
    if extra:
        (overlay / "extra.yaml").write_text(extra)
        lines.append("  - extra.yaml")
    generators = []
    for cm, literals in (("herald-broker-config", broker_env), ("herald-edge-config", edge_env)):
        if literals:
            generators += [f"  - name: {cm}", "    behavior: merge", "    literals:",
                           *[f"      - {lit}" for lit in literals]]
    if generators:
        lines += ["configMapGenerator:", *generators]
    if patches:
        lines += ["patches:", *[p.strip("\n") for p in patches]]
    (overlay / "kustomization.yaml").write_text("\n".join(lines) + "\n")
    return overlay


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_mistake_in_the_manifests_fails_the_check(tmp_path, name):
    overlay = write_mistake(tmp_path, name)
    rc, out = run_check("--no-docker", "--kustomization", overlay)
    assert rc == 1, f"the check passed a manifest with a {name}:\n{out}"
    assert MISTAKES[name][3] in out, out


DOCKERFILE_MISTAKES = {
    "unknown instruction": (("RUN apt-get update", "RUNN apt-get update"),
                            "Unknown instruction: RUNN"),
    "a HEALTHCHECK": (("CMD [\"herald\", \"--help\"]",
                       "HEALTHCHECK CMD herald ping\nCMD [\"herald\", \"--help\"]"),
                      "HEALTHCHECK: Kubernetes probes do that job"),
    "running as root": (("USER 10001:10001", "USER root"), "does not switch to a non-root USER"),
    "another build than the README's": (("RUN bash scripts/build.sh", "RUN cmake -S . -B build"),
                                        "does not run scripts/build.sh"),
    "a fat runtime": (("FROM debian:${DEBIAN_RELEASE}-slim AS runtime",
                       "FROM debian:${DEBIAN_RELEASE} AS runtime"), "not debian:bookworm-slim"),
}


@pytest.mark.parametrize("name", list(DOCKERFILE_MISTAKES))
def test_a_mistake_in_the_dockerfile_fails_the_lint(tmp_path, name):
    (old, new), expected = DOCKERFILE_MISTAKES[name]
    text = DOCKERFILE.read_text()
    assert old in text
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace(old, new, 1))
    rc, out = run_check("--no-k8s", "--dockerfile", bad)
    assert rc == 1, out
    assert expected in out, out


# ---- yamllint ------------------------------------------------------------------------------------

def yaml_files():
    skip = {".git", "node_modules", "__pycache__"}
    out = []
    for dirpath, dirnames, filenames in os.walk(SOURCE_DIR):
        rel = Path(dirpath).relative_to(SOURCE_DIR)
        dirnames[:] = [d for d in dirnames
                       if d not in skip and not (rel == Path(".") and d.startswith("build"))]
        out += [Path(dirpath) / f for f in filenames if f.endswith((".yaml", ".yml"))]
    return sorted(out)


def yamllint(*files):
    exe = shutil.which("yamllint")
    assert exe, "yamllint not found: scripts/deps.sh test installs Debian's yamllint"
    return subprocess.run([exe, "-f", "parsable", "-c", str(YAMLLINT_CONFIG), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_yamllint_passes_on_every_yaml_file():
    files = yaml_files()
    assert any(f.parent.name == "base" for f in files) and len(files) >= 20, files
    proc = yamllint(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_fails_on_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nenabled: yes\nb: c   \n")
    proc = yamllint(bad)
    assert proc.returncode == 1, proc.stdout
    for rule in ("key-duplicates", "truthy", "trailing-spaces"):
        assert f"({rule})" in proc.stdout, proc.stdout


# ---- the broker entrypoint -----------------------------------------------------------------------

@pytest.fixture
def stub_path(tmp_path):
    """A PATH whose herald-broker prints its arguments and HERALD_BROKER_* environment."""
    bindir = tmp_path / "stub"
    bindir.mkdir()
    stub = bindir / "herald-broker"
    stub.write_text("#!/bin/sh\necho \"args: $*\"\nenv | grep '^HERALD_BROKER_' | sort\n")
    stub.chmod(0o755)
    return f"{bindir}:/usr/bin:/bin"


def entrypoint(env, path, *args):
    full = {"PATH": path, **env}
    return subprocess.run(["/bin/sh", str(ENTRYPOINT), *args], env=full, capture_output=True,
                          text=True, timeout=20)


def test_entrypoint_derives_node_id_and_broker_list_from_the_pod(stub_path):
    proc = entrypoint({"HERALD_POD_NAME": "herald-broker-2", "HERALD_BROKER_REPLICAS": "3",
                       "HERALD_POD_NAMESPACE": "herald"}, stub_path, "--log-level", "debug")
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line
               and not line.startswith("args:"))
    names = [f"herald-broker-{i}.herald-broker-headless.herald.svc.cluster.local"
             for i in range(3)]
    assert env["HERALD_BROKER_CLUSTER"] == ",".join(f"tcp://{n}:7400" for n in names)
    assert env["HERALD_BROKER_NODE_ID"] == "2"
    assert env["HERALD_BROKER_ADVERTISE"] == names[2]
    assert "args: --log-level debug" in proc.stdout
    assert "event=config" in proc.stderr and "node_id=2" in proc.stderr

    # Another service, domain and port; no namespace: short names through the search path.
    proc = entrypoint({"HERALD_POD_NAME": "brokers-0", "HERALD_BROKER_REPLICAS": "2",
                       "HERALD_BROKER_HEADLESS_SERVICE": "hb", "HERALD_CLUSTER_DOMAIN": "x.y",
                       "HERALD_BROKER_LISTEN": "tcp://0.0.0.0:9000"}, stub_path)
    assert proc.returncode == 0, proc.stderr
    assert "HERALD_BROKER_CLUSTER=tcp://brokers-0.hb:9000,tcp://brokers-1.hb:9000" in proc.stdout
    assert "HERALD_BROKER_ADVERTISE=brokers-0.hb\n" in proc.stdout

    # An explicit list that agrees with N is used as it is; the pod advertises its own entry.
    proc = entrypoint({"HERALD_POD_NAME": "herald-broker-1", "HERALD_BROKER_REPLICAS": "2",
                       "HERALD_BROKER_CLUSTER": "tcp://a.example:7400,tcp://b.example:7400"},
                      stub_path)
    assert proc.returncode == 0, proc.stderr
    assert "HERALD_BROKER_ADVERTISE=b.example\n" in proc.stdout
    assert "HERALD_BROKER_NODE_ID=1\n" in proc.stdout


ENTRYPOINT_REFUSALS = {
    "ordinal not below the replica count": (
        {"HERALD_POD_NAME": "herald-broker-3", "HERALD_BROKER_REPLICAS": "3"}, (),
        "pod herald-broker-3 has ordinal 3, but HERALD_BROKER_REPLICAS=3"),
    "broker list disagrees with the StatefulSet size": (
        {"HERALD_POD_NAME": "herald-broker-0", "HERALD_BROKER_REPLICAS": "3",
         "HERALD_BROKER_CLUSTER": "tcp://a:7400,tcp://b:7400"}, (),
        "HERALD_BROKER_CLUSTER lists 2 broker(s) but HERALD_BROKER_REPLICAS is 3"),
    "replica count not a number": (
        {"HERALD_POD_NAME": "herald-broker-0", "HERALD_BROKER_REPLICAS": "three"}, (),
        "HERALD_BROKER_REPLICAS='three' is not a positive integer"),
    "replica count zero": (
        {"HERALD_POD_NAME": "herald-broker-0", "HERALD_BROKER_REPLICAS": "0"}, (),
        "HERALD_BROKER_REPLICAS='0' is not a positive integer"),
    "replica count missing": (
        {"HERALD_POD_NAME": "herald-broker-0"}, (), "HERALD_BROKER_REPLICAS is not set"),
    "pod name without an ordinal": (
        {"HERALD_POD_NAME": "herald-broker", "HERALD_BROKER_REPLICAS": "3"}, (),
        "does not end in -<ordinal>"),
    "node id other than the ordinal": (
        {"HERALD_POD_NAME": "herald-broker-1", "HERALD_BROKER_REPLICAS": "3",
         "HERALD_BROKER_NODE_ID": "2"}, (),
        "HERALD_BROKER_NODE_ID='2' differs from the ordinal 1"),
    "advertise other than its entry": (
        {"HERALD_POD_NAME": "herald-broker-1", "HERALD_BROKER_REPLICAS": "3",
         "HERALD_BROKER_ADVERTISE": "elsewhere"}, (),
        "HERALD_BROKER_ADVERTISE='elsewhere' differs"),
    "listen endpoint without a port": (
        {"HERALD_POD_NAME": "herald-broker-0", "HERALD_BROKER_REPLICAS": "1",
         "HERALD_BROKER_LISTEN": "ipc:///tmp/x"}, (), "HERALD_BROKER_LISTEN='ipc:///tmp/x'"),
    "--cluster on the command line": (
        {"HERALD_POD_NAME": "herald-broker-0", "HERALD_BROKER_REPLICAS": "1"},
        ("--cluster", "tcp://x:1"), "--cluster on the command line"),
}


@pytest.mark.parametrize("name", list(ENTRYPOINT_REFUSALS))
def test_entrypoint_refuses_bad_input(stub_path, name):
    env, args, expected = ENTRYPOINT_REFUSALS[name]
    proc = entrypoint(env, stub_path, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("herald-broker-entrypoint: "), proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert "args:" not in proc.stdout  # herald-broker never ran


def test_entrypoint_runs_a_broker_whose_peers_do_not_resolve_yet(tmp_path):
    """Pod 0 of 3 with the cluster's DNS names, none of which resolve here: the broker starts,
    serves the partitions it owns, answers `unavailable` for the others (never a wrong ID), keeps
    retrying its peers without crashing, and stops cleanly on SIGTERM (the entrypoint execs it,
    so the signal reaches the broker)."""
    port, live = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    env = {"PATH": f"{BROKER_BIN.parent}:/usr/bin:/bin",
           "HERALD_POD_NAME": "herald-broker-0", "HERALD_POD_NAMESPACE": "herald-test",
           "HERALD_BROKER_REPLICAS": "3",
           "HERALD_BROKER_LISTEN": endpoint, "HERALD_BROKER_LIVE": f"tcp://127.0.0.1:{live}",
           "HERALD_BROKER_DATA_DIR": str(tmp_path / "data"),
           "HERALD_BROKER_FORWARD_TIMEOUT": "500", "HERALD_BROKER_HEARTBEAT_INTERVAL": "200"}
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        proc = track(subprocess.Popen(["/bin/sh", str(ENTRYPOINT)], env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=f))
    try:
        deadline = time.monotonic() + 10
        while True:
            rc, out, _ = run_cli(["ping", "--broker", endpoint, "--timeout", "500"])
            if rc == 0:
                break
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
        assert "node_id=0" in out
        owned = [t for t in (f"t{i}" for i in range(50)) if partition_of(t, 64) % 3 == 0][:2]
        other = next(t for t in (f"t{i}" for i in range(50)) if partition_of(t, 64) % 3 == 1)
        for t in owned:
            rc, out, errtext = run_cli(["publish", "--broker", endpoint, t, "x"])
            assert rc == 0, errtext
        rc, _, errtext = run_cli(["publish", "--broker", endpoint, "--timeout", "3000", other, "x"])
        assert rc == 3 and "unavailable" in errtext and "herald-broker-1.herald-broker-headless" \
            in errtext, (rc, errtext)
        time.sleep(1.5)  # peers are retried every heartbeat; nothing crashes
        assert proc.poll() is None, err.read_text()
        assert run_cli(["ping", "--broker", endpoint, "--timeout", "1000"])[0] == 0
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, err.read_text()
        text = err.read_text()
        assert "mod=entrypoint event=config pod=herald-broker-0 node_id=0 brokers=3" in text
        assert "advertise=herald-broker-0.herald-broker-headless.herald-test.svc.cluster.local" \
            in text
    finally:
        end_process(proc)


def test_backup_with_mdb_copy_and_restore_through_the_entrypoint(tmp_path):
    """docs/kubernetes.md "Back up and restore": mdb_copy of a running broker's environment to
    standard output (what `kubectl exec … mdb_copy` streams out), then the copy placed beside the
    data directory as data.restore.mdb: the entrypoint moves the data aside and the broker
    starts on the copy (same node identity, history up to the backup)."""
    mdb_copy = shutil.which("mdb_copy")
    assert mdb_copy, "mdb_copy not found: scripts/deps.sh installs lmdb-utils"
    port, live = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    volume = tmp_path / "volume"
    volume.mkdir()
    data = volume / "data"
    env = {"PATH": f"{BROKER_BIN.parent}:/usr/bin:/bin", "HERALD_POD_NAME": "herald-broker-0",
           "HERALD_BROKER_REPLICAS": "1", "HERALD_BROKER_CLUSTER": endpoint,
           "HERALD_BROKER_LISTEN": endpoint, "HERALD_BROKER_LIVE": f"tcp://127.0.0.1:{live}",
           "HERALD_BROKER_DATA_DIR": str(data)}

    def start(log):
        with open(tmp_path / log, "wb") as f:
            p = track(subprocess.Popen(["/bin/sh", str(ENTRYPOINT)], env=env, stderr=f,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while run_cli(["ping", "--broker", endpoint, "--timeout", "300"])[0] != 0:
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / log).read_text()
        return p

    def stop(p):
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == 0

    def history(field="data"):
        rc, out, err = run_cli(["fetch", "--broker", endpoint, "backup.topic"])
        assert rc == 0, err
        return [json.loads(line)[field] for line in out.splitlines()]

    broker = start("broker-1.log")
    try:
        for i in range(3):
            assert run_cli(["publish", "--broker", endpoint, "backup.topic", f"m{i}"])[0] == 0
        backup = tmp_path / "backup.mdb"
        with open(backup, "wb") as f:
            subprocess.run([mdb_copy, str(data)], stdout=f, check=True, timeout=30)
        assert run_cli(["publish", "--broker", endpoint, "backup.topic", "after"])[0] == 0
        assert history() == ["m0", "m1", "m2", "after"]
        epoch_before = history("epoch")[0]
        shutil.copy(backup, volume / "data.restore.mdb")
        stop(broker)  # kubectl delete pod: SIGTERM, and the StatefulSet starts it again
        broker = start("broker-2.log")
        assert history() == ["m0", "m1", "m2"]
        assert not (volume / "data.restore.mdb").exists()
        aside = [p.name for p in volume.iterdir() if p.name.startswith("data.before-restore.")]
        assert len(aside) == 1, list(volume.iterdir())
        log = (tmp_path / "broker-2.log").read_text()
        assert "event=restored" in log
        # the restored log gets a new epoch (--renew-epochs), so a cursor issued after the backup
        # ("after", seq 4) is answered with a reset instead of naming a seq the log will reuse
        assert "event=epochs_renewed" in log, log
        assert set(history("epoch")) == {history("epoch")[0]} and history("epoch")[0] != epoch_before
        assert history("seq") == [1, 2, 3]
        stop(broker)
    finally:
        end_process(broker)


# ---- the ConfigMap path: options only from the overlay's ConfigMaps --------------------------------

def test_broker_and_edge_run_from_the_dev_configmaps_alone(tmp_path):
    objects = rendered("dev")
    broker_env = config_map(objects, "herald-broker-config")
    edge_env = config_map(objects, "herald-edge-config")
    drain_ms = int(edge_env["HERALD_EDGE_DRAIN_GRACE"])
    assert drain_ms >= 1000
    port, live, http_port = free_port(), free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    # Only what differs between a pod and this machine: addresses (a pod's are its own) and the
    # data directory (a volume there).
    broker_env.update({
        "HERALD_POD_NAME": "herald-broker-0",
        "HERALD_BROKER_LISTEN": endpoint, "HERALD_BROKER_LIVE": f"tcp://127.0.0.1:{live}",
        "HERALD_BROKER_CLUSTER": endpoint, "HERALD_BROKER_DATA_DIR": str(tmp_path / "data")})
    edge_env.update({"HERALD_EDGE_LISTEN": f"127.0.0.1:{http_port}",
                     "HERALD_EDGE_BROKERS": endpoint})
    path = f"{BROKER_BIN.parent}:{EDGE_BIN.parent}:/usr/bin:/bin"
    procs = []
    try:
        with open(tmp_path / "broker.log", "wb") as f:
            broker = track(subprocess.Popen(["/bin/sh", str(ENTRYPOINT)],
                                            env={"PATH": path, **broker_env},
                                            stdin=subprocess.DEVNULL, stderr=f))
        procs.append(broker)
        with open(tmp_path / "edge.log", "wb") as f:
            edge = track(subprocess.Popen([str(EDGE_BIN)], env={"PATH": path, **edge_env},
                                          stdin=subprocess.DEVNULL, stderr=f))
        procs.append(edge)
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                if requests.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert edge.poll() is None and broker.poll() is None, \
                (tmp_path / "edge.log").read_text() + (tmp_path / "broker.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "edge.log").read_text()
            time.sleep(0.05)
        r = requests.post(base + "/v1/topics/k8s.demo/messages", data=b"from the configmap",
                          timeout=5)
        assert r.status_code == 201, r.text
        r = requests.get(base + "/v1/topics/k8s.demo/messages?after=earliest", timeout=5)
        assert [m["data"] for m in r.json()["messages"]] == ["from the configmap"]
        metrics = requests.get(base + "/metrics", timeout=5).text
        assert "herald_edge_draining 0" in metrics
        # docs/kubernetes.md says what each metric means: every family the edge exports.
        doc = (SOURCE_DIR / "docs" / "kubernetes.md").read_text()
        families = re.findall(r"^# TYPE (\S+) ", metrics, re.M)
        assert len(families) > 20, metrics
        undocumented = [f for f in families
                        if not re.search(r"`" + re.escape(f) + r"(\{[^`]*\})?`", doc)]
        assert not undocumented, f"metrics missing from docs/kubernetes.md: {undocumented}"
        # The overlay's log level came through (debug lines), and its drain grace:
        assert "level=debug" in (tmp_path / "edge.log").read_text()
        t0 = time.monotonic()
        os.kill(edge.pid, signal.SIGTERM)
        saw_503 = None
        while time.monotonic() - t0 < drain_ms / 1000 - 0.5:
            r = requests.get(base + "/readyz", timeout=2)
            if r.status_code == 503:
                saw_503 = time.monotonic() - t0
                assert r.json()["draining"] is True
                break
            time.sleep(0.02)
        assert saw_503 is not None and saw_503 < 0.5, "readyz did not turn 503 at once"
        assert requests.get(base + "/healthz", timeout=2).status_code == 200  # still serving
        assert edge.wait(timeout=drain_ms / 1000 + 10) == 0
        elapsed = time.monotonic() - t0
        assert elapsed >= drain_ms / 1000 - 0.2, f"exited after {elapsed:.2f} s, before the grace"
        os.kill(broker.pid, signal.SIGTERM)
        assert broker.wait(timeout=10) == 0, (tmp_path / "broker.log").read_text()
        assert re.search(r"event=config pod=herald-broker-0 node_id=0 brokers=1",
                         (tmp_path / "broker.log").read_text())
    finally:
        for p in procs:
            end_process(p)
