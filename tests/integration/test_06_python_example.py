"""06 docs/examples/publish.py, the Python example of docs/zeromq-api.md, runs as documented."""

import os
import re
import subprocess
import sys

from conftest import SOURCE_DIR, closed_endpoint

EXAMPLE = SOURCE_DIR / "docs" / "examples" / "publish.py"


def run_example(pb2_dir, *args, timeout=30):
    env = dict(os.environ, PYTHONPATH=str(pb2_dir))
    return subprocess.run([sys.executable, str(EXAMPLE), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_example_publishes_and_reads_back(broker, client, pb2_dir):
    proc = run_example(pb2_dir, "--broker", broker.listen, "example.t")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 6
    epochs = set()
    for i, line in enumerate(lines[:3]):
        m = re.fullmatch(r"published seq=(\d+) epoch=([0-9a-f]{16})", line)
        assert m, line
        assert int(m.group(1)) == i + 1
        epochs.add(m.group(2))
    assert len(epochs) == 1
    assert lines[3:] == ["fetched seq=1 event=greeting data=hello",
                         "fetched seq=2 event=greeting data=bonjour",
                         "fetched seq=3 event=greeting data=hallo"]
    _, last, msgs = client.fetch_all("example.t")
    assert [(m.data, m.content_type) for m in msgs] == [(b"hello", b"text/plain"),
                                                         (b"bonjour", b"text/plain"),
                                                         (b"hallo", b"text/plain")]
    assert f"{msgs[0].epoch:016x}" in epochs

    # a second run appends: seqs continue, and the history shows all six
    proc = run_example(pb2_dir, "--broker", broker.listen, "example.t")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" epoch=")[0] for line in lines[:3]] == [
        "published seq=4", "published seq=5", "published seq=6"]
    assert len(lines) == 9


def test_example_reports_a_broker_error(broker, pb2_dir):
    proc = run_example(pb2_dir, "--broker", broker.listen, "not a topic")
    assert proc.returncode != 0
    assert "RuntimeError: invalid_topic: " in proc.stderr


def test_example_times_out_without_a_broker(pb2_dir):
    proc = run_example(pb2_dir, "--broker", closed_endpoint())
    assert proc.returncode != 0
    assert "TimeoutError: no reply from the broker" in proc.stderr


def python_blocks(markdown):
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.S | re.M)


def test_zeromq_api_doc_shows_the_example_verbatim():
    doc = (SOURCE_DIR / "docs" / "zeromq-api.md").read_text()
    blocks = python_blocks(doc)
    assert EXAMPLE.read_text() in blocks, "docs/zeromq-api.md and docs/examples/publish.py differ"
    for block in blocks:
        compile(block, "docs/zeromq-api.md", "exec")


def test_documented_protoc_command_generates_the_module(tmp_path):
    doc = (SOURCE_DIR / "docs" / "zeromq-api.md").read_text()
    (cmd,) = re.findall(r"^(protoc --proto_path=proto --python_out=\. proto/herald\.proto)",
                        doc, re.M)
    out = tmp_path / "gen"
    out.mkdir()
    args = cmd.replace("--python_out=.", f"--python_out={out}").split()
    subprocess.run(args, cwd=SOURCE_DIR, check=True, timeout=60)
    assert (out / "herald_pb2.py").exists()
