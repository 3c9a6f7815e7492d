"""Dataset building on real captures: labels per flow, splits that do not leak."""
import os

import numpy as np
import pytest

from models import dataset, labels

DATA = os.path.join(os.path.dirname(__file__), "data")
CAPTURES = [os.path.join(DATA, n) for n in ("whatsapp.pcap", "facebook.pcap", "doh.pcapng", "gre.pcapng",
                                             "badpackets.pcap", "ip_fragmented_garbage.pcap", "nats.pcap")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ds") / "ds.npz")
    lines = []
    summary = dataset.build(CAPTURES, out, source="out", classes=["WhatsApp", "Facebook", "DoH_DoT"],
                            jobs=2, progress=False, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    return dataset.load(out), summary, "\n".join(lines)


def test_every_packet_takes_its_flows_label(built):
    d, _, _ = built
    for f in np.unique(d["flow"]):
        assert len(np.unique(d["label"][d["flow"] == f])) == 1


def test_labels_follow_ndpi(built):
    d, summary, text = built
    assert d["classes"] == ["WhatsApp", "Facebook", "DoH_DoT", "other"]
    wa = d["captures"].index("whatsapp.pcap")
    assert (d["label"][d["capture"] == wa] == 0).mean() > 0.9  # whatsapp.pcap is WhatsApp
    assert "skipped frames by reason" in text and "fragment=" in text


def test_rows_are_the_feature_function_output(built):
    d, _, _ = built
    assert d["X"].shape[1] == 1480 and d["X"].dtype == np.uint8
    assert not d["X"][:, :20].any()
    assert (d["payload_len"] > 0).all()  # packets without payload are dropped by default


@pytest.mark.parametrize("split,key", [("flow", "flow"), ("capture", "group")])
def test_group_splits_do_not_leak(built, split, key):
    d, _, _ = built
    s = d["split_" + split]
    parts = [set(np.unique(d[key][s == p])) for p in range(3)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


def test_random_split_fractions(built):
    d, _, _ = built
    frac = np.bincount(d["split_random"], minlength=3) / len(d["split_random"])
    np.testing.assert_allclose(frac, [0.64, 0.16, 0.20], atol=0.03)


def test_out_file_parser_reads_ipv6_and_confidence():
    labs = labels.from_out_file(os.path.join(DATA, "doh.pcapng.out"))
    assert labs and all(l[0].confidence in labels.CONFIDENCE.values() for l in labs.values())


def test_label_map():
    m = labels.LabelMap.load()
    assert m.application("TLS.YouTube") == "YouTube"
    assert m.application("DNS.Google") == "DNS"          # master wins for name lookups
    assert m.application("WhatsAppCall") == "WhatsApp"  # alias
    assert m.application("TLS") == labels.OTHER         # generic


def test_balance_caps_classes():
    y = np.array([0] * 50 + [1] * 5 + [2] * 20)
    idx = dataset.balance(y, 10, 0)
    assert np.bincount(y[idx]).tolist() == [10, 5, 10]


def test_nfstream_labels_agree_with_out_files(tmp_path):
    pytest.importorskip("nfstream") if os.environ.get("CI") != "true" else None
    lines = []
    s = dataset.build([os.path.join(DATA, "whatsapp.pcap"), os.path.join(DATA, "facebook.pcap")],
                      str(tmp_path / "d.npz"), source="nfstream", classes=["WhatsApp", "Facebook"], jobs=1,
                      progress=False, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert s["agreement"]["same_application"] > 0.9
    assert any("nfstream vs nDPI .out" in l for l in lines)


def test_splits_do_not_depend_on_the_other_captures(built, tmp_path):
    """Adding captures must not reshuffle the packets of the ones already there."""
    d, _, _ = built
    out = str(tmp_path / "one.npz")
    dataset.build([os.path.join(DATA, "whatsapp.pcap")], out, source="out", classes=["WhatsApp", "Facebook", "DoH_DoT"],
                  jobs=1, progress=False, log=lambda *a, **k: None)
    one = dataset.load(out)
    sel = d["capture"] == d["captures"].index("whatsapp.pcap")
    for s in ("split_random", "split_flow"):
        np.testing.assert_array_equal(d[s][sel], one[s])
