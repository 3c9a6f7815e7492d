"""The YAML config: defaults, the documented example, one-line errors naming the key, exit 78."""
import dataclasses
import os

import pytest
import yaml

from daemon import config as C
from tests.daemon_proc import ROOT, error_lines, run_cli, write_config

EXAMPLE = os.path.join(ROOT, "deploy", "config.example.yaml")


def keys_of(cls, prefix=""):
    out = []
    for f in dataclasses.fields(cls):
        k = prefix + f.name
        if f.metadata["kind"] == "section":
            out += keys_of(f.default_factory, k + ".")
        else:
            out.append(k)
    return out


def test_defaults():
    c = C.load(None)
    assert c.capture.backend == "afpacket" and c.pipeline.mode == "flow"
    assert c.pipeline.batch_size == 64 and c.pipeline.batch_timeout_ms == 5.0
    assert c.pipeline.queue_packets == 4096 and c.pipeline.max_flows == 65536
    assert c.metrics.listen == "127.0.0.1:9105"  # localhost unless the operator says otherwise
    assert c.model.threads == 1 and c.model.reject_threshold is None


def test_every_key_is_documented():
    for k in keys_of(C.Config):
        section, name = k.rsplit(".", 1)
        assert len(name) > 1
    for f in dataclasses.fields(C.Capture):
        assert len(f.metadata["doc"]) > 20, f.name


def test_example_is_the_schema_with_defaults():
    """deploy/config.example.yaml has every key, commented, and loads to the defaults."""
    text = open(EXAMPLE).read()
    assert text == C.example_yaml(), "regenerate: python -c 'from daemon import config; " \
                                     "print(config.example_yaml(), end=\"\")' > deploy/config.example.yaml"
    assert C.load(EXAMPLE) == C.Config()
    data = yaml.safe_load(text)
    for k in keys_of(C.Config):
        node = data
        for part in k.split("."):
            assert part in node, k
            node = node[part]
    assert text.count("\n#") + text.count("\n  #") >= len(keys_of(C.Config))


def test_values_are_converted():
    c = C.from_dict({"model": {"memory_budget": "2MiB"}, "capture": {"rcvbuf_bytes": "8MiB", "interfaces": "eth0",
                                                                      "bpf_filter": [[6, 0, 0, 65535]]},
                     "pipeline": {"idle_timeout": 30}})
    assert c.model.memory_budget == 2 << 20 and c.capture.rcvbuf_bytes == 8 << 20
    assert c.capture.interfaces == ["eth0"] and c.capture.bpf_filter == [(6, 0, 0, 65535)]
    assert c.pipeline.idle_timeout == 30.0 and isinstance(c.pipeline.idle_timeout, float)
    assert C.listen_address("[::1]:9105") == ("::1", 9105)
    assert C.listen_address(":9105") == ("0.0.0.0", 9105)


@pytest.mark.parametrize("data, key, expected", [
    ({"capture": {"interface": ["eth0"]}}, "capture.interface", "unknown key"),
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"pipeline": {"batch_size": "many"}}, "pipeline.batch_size", "expected an integer"),
    ({"pipeline": {"batch_size": 0}}, "pipeline.batch_size", "in 1..1024"),
    ({"pipeline": {"batch_size": True}}, "pipeline.batch_size", "expected an integer"),
    ({"pipeline": {"mode": "flows"}}, "pipeline.mode", "one of flow, packet"),
    ({"capture": {"promiscuous": "yes"}}, "capture.promiscuous", "true or false"),
    ({"capture": {"interfaces": [1, 2]}}, "capture.interfaces", "a list of strings"),
    ({"capture": {"bpf_filter": [[1, 2]]}}, "capture.bpf_filter", "[code, jt, jf, k]"),
    ({"capture": "eth0"}, "capture", "expected a mapping"),
    ({"model": {"memory_budget": "lots"}}, "model.memory_budget", "a size"),
    ({"model": {"reject_threshold": 2}}, "model.reject_threshold", "in 0..1"),
    ({"metrics": {"listen": "localhost"}}, "metrics.listen", "host:port"),
    ({"metrics": {"listen": "127.0.0.1:99999"}}, "metrics.listen", "host:port"),
    ({"metrics": {"tls": {"cert_file": "/x.pem"}}}, "metrics.tls", "go together"),
    ({"capture": {"workers": 2}}, "capture.workers", "fanout_group"),
    ({"logging": {"level": "loud"}}, "logging.level", "one of debug"),
])
def test_bad_values_name_the_key_and_type(data, key, expected):
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(data, "x.yaml")
    msg = str(e.value)
    assert msg.startswith(f"x.yaml: {key}") and expected in msg and "\n" not in msg, msg


def test_bad_yaml_and_missing_file(tmp_path):
    p = write_config(str(tmp_path / "c.yaml"), "capture:\n  interfaces: [eth0\n")
    with pytest.raises(C.ConfigError, match=r"not valid YAML at line \d"):
        C.load(p)
    with pytest.raises(C.ConfigError, match="No such file"):
        C.load(str(tmp_path / "missing.yaml"))
    assert C.load(write_config(str(tmp_path / "empty.yaml"), "")) == C.Config()


@pytest.mark.parametrize("text, key", [
    ("pipeline:\n  flow_packet: 3\n", "pipeline.flow_packet"),
    ("pipeline:\n  queue_packets: big\n", "pipeline.queue_packets"),
])
def test_run_exits_78_with_one_line(tmp_path, text, key):
    p = write_config(str(tmp_path / "c.yaml"), "capture:\n  interfaces: [lo]\n" + text)
    for cmd in (("run", "-c", p), ("run", "--check-config", "-c", p), ("classify", "-c", p)):
        r = run_cli(*cmd)
        assert r.returncode == 78, (cmd, r.stderr)
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and key in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_run_without_interface_is_a_config_error():
    r = run_cli("run", "--check-config")
    assert r.returncode == 78 and "capture.interfaces" in r.stderr


def test_check_config_ok():
    r = run_cli("run", "--check-config", "-c", EXAMPLE, "-i", "lo")
    assert r.returncode == 0, r.stderr
