"""Model builders for a parameter budget: linear SVM, MLP, LSTM (and the 1D-CNN of issue 9).

`fit_budget(family, budget, n_classes)` picks widths and depths that land
within 5 % of the budget and returns (model, exact parameter count). The LSTM
is unrolled over its 40 steps so that it converts to plain TFLite built-in
ops (Keras 3's default LSTM becomes a while loop that needs Flex ops the
gateway runtime lacks, and crashes the full-int8 converter).
"""
from __future__ import annotations

BUDGETS = [15_000, 30_000, 50_000, 100_000, 200_000, 300_000, 350_000, 400_000, 500_000,
           600_000, 700_000, 800_000, 900_000, 950_000, 1_000_000]
from daemon.features import LSTM_SHAPE, N_BYTES

N_IN = N_BYTES
STEPS, STEP_BYTES = LSTM_SHAPE


def mlp_params(widths, n_classes):
    dims = [N_IN] + list(widths) + [n_classes]
    return sum(a * b + b for a, b in zip(dims, dims[1:]))


def lstm_params(units, n_classes, dense=0):
    p, d = 0, STEP_BYTES
    for u in units:
        p += 4 * (u * (d + u) + u)
        d = u
    if dense:
        p += d * dense + dense
        d = dense
    return p + d * n_classes + n_classes


EMBED = 16  # CNN: dimensions of the learned per-byte-value table


def cnn_params(f, n_classes):
    return 256 * EMBED + (7 * EMBED * f + f) + (5 * f * 2 * f + 2 * f) + (2 * f * n_classes + n_classes)


def nearest(params, budget, lo=4, hi=4096):
    """The width in [lo, hi) whose parameter count `params(width)` lands nearest the budget."""
    return min(range(lo, hi), key=lambda w: abs(params(w) - budget))


def cnn_filters(budget, n_classes):
    """First-layer filters (the second has twice as many) that land nearest the budget."""
    return nearest(lambda f: cnn_params(f, n_classes), budget)


CNNLSTM_FILTERS = 32


def cnnlstm_units(budget, n_classes):
    fixed = 256 * EMBED + 7 * EMBED * CNNLSTM_FILTERS + CNNLSTM_FILTERS
    return nearest(lambda u: fixed + 4 * (u * (CNNLSTM_FILTERS + u) + u) + u * n_classes + n_classes, budget)


def flowbytes_width(budget, n_classes, k=3):
    return nearest(lambda w: N_IN * w + w + k * w * n_classes + n_classes, budget)


def flowmlp_width(budget, n_classes, n_in=32):
    return nearest(lambda w: n_in * w + w + w * (w // 2) + w // 2 + (w // 2) * n_classes + n_classes, budget)


def mlp_shape(budget, n_classes):
    """Two hidden layers (the second half as wide) once the budget allows 32 units, else one."""
    best = None
    for depth in (1, 2):
        for w in range(4, 4096):
            widths = [w] if depth == 1 else [w, max(w // 2, 4)]
            p = mlp_params(widths, n_classes)
            if p >= budget:
                prev = [w - 1] if depth == 1 else [w - 1, max((w - 1) // 2, 4)]
                cand = min((widths, p), (prev, mlp_params(prev, n_classes)), key=lambda t: abs(t[1] - budget))
                if depth == 1 or cand[0][0] >= 32:
                    best = cand
                break
    return best


def lstm_shape(budget, n_classes):
    """One LSTM layer up to 300k parameters, two stacked above (depth buys more than width there)."""
    layers = 1 if budget <= 300_000 else 2
    lo, hi = 2, 2048
    while lo < hi:
        u = (lo + hi) // 2
        if lstm_params([u] * layers, n_classes) < budget:
            lo = u + 1
        else:
            hi = u
    cands = [([u] * layers, lstm_params([u] * layers, n_classes)) for u in (lo - 1, lo)]
    return min(cands, key=lambda t: abs(t[1] - budget))


def build(family: str, budget: int, n_classes: int, seed: int = 0, reverse: bool = False):
    """A compiled-ready Keras model for `family` at `budget` parameters.

    reverse (LSTM only): the first layer reads the 40 steps last to first, so the packet's
    first bytes are the last its state sees. Forward, the state carries what it read through
    the zero padding that ends most packets; in int8 every padded step adds quantisation
    noise, and the 100k and 1M LSTMs lost 3-6 points (argmax agreement with Keras 0.46 at
    100k, 0.85 read backwards). Same input view, same parameter count."""
    if reverse and family != "lstm":
        raise ValueError("reverse applies to the LSTM only")
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    if family == "mlp":
        widths, _ = mlp_shape(budget, n_classes)
        inp = keras.Input((N_IN,), name="bytes")
        x = inp
        for w in widths:
            x = layers.Dense(w, activation="relu")(x)
        out = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    elif family == "lstm":
        units, _ = lstm_shape(budget, n_classes)
        inp = keras.Input((STEPS, STEP_BYTES), name="bytes")
        x = inp
        for i, u in enumerate(units):
            x = layers.LSTM(u, unroll=True, return_sequences=i < len(units) - 1,
                            go_backwards=reverse and i == 0)(x)
        out = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    elif family in ("cnn", "cnnlstm"):
        # issue 9: filters that find a signature at any offset (a TLS server name, a protocol
        # magic). Each byte value is looked up in a learned table first: bytes are symbols
        # ('w' is not 'v' plus a little), which a convolution over bytes/255 cannot see. The
        # input stays the flat view, so the daemon feeds it like the MLP.
        inp = keras.Input((N_IN,), name="bytes")
        x = layers.Lambda(lambda v: keras.ops.cast(keras.ops.round(v * 255.0), "int32"), name="byte_ids")(inp)
        x = layers.Embedding(256, EMBED)(x)
        if family == "cnn":
            f = cnn_filters(budget, n_classes)
            x = layers.Conv1D(f, 7, strides=2, activation="relu")(x)
            x = layers.MaxPooling1D(3)(x)
            x = layers.Conv1D(2 * f, 5, activation="relu")(x)
            x = layers.GlobalMaxPooling1D()(x)
        else:
            # the paper's future work, a CNN-LSTM: the first filters, then an LSTM reading
            # their pooled responses in order (92 steps, unrolled for TFLite)
            x = layers.Conv1D(CNNLSTM_FILTERS, 7, strides=2, activation="relu")(x)
            x = layers.MaxPooling1D(8)(x)
            x = layers.LSTM(cnnlstm_units(budget, n_classes), unroll=True)(x)
        out = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    elif family == "flowmlp":
        # issue 9's ablation: no payload at all, the sizes, directions and gaps of a flow's
        # first packets (daemon.features.flow_shape); the MLP's widths at this budget
        from daemon.features import FLOW_PACKETS
        w = flowmlp_width(budget, n_classes)
        inp = keras.Input((2 * FLOW_PACKETS,), name="flow_shape")
        x = layers.Dense(w, activation="relu")(inp)
        x = layers.Dense(w // 2, activation="relu")(x)
        out = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    elif family == "flowbytes":
        # issue 9's ablation: a flow's first packets read together, not averaged: one Dense
        # layer shared by the packets (what a packet says), then one over their outputs side by
        # side (what the exchange says)
        from daemon.features import FIRST_PACKETS
        w = flowbytes_width(budget, n_classes)
        inp = keras.Input((FIRST_PACKETS * N_IN,), name="first_packets")
        x = layers.Reshape((FIRST_PACKETS, N_IN))(inp)
        x = layers.Dense(w, activation="relu")(x)
        x = layers.Flatten()(x)
        out = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    elif family == "svm":
        # a linear SVM exported as one Dense layer: scores = W x + b (trained by scikit-learn)
        inp = keras.Input((N_IN,), name="bytes")
        out = layers.Dense(n_classes, name="scores")(inp)
    else:
        raise ValueError(f"unknown family {family!r}")
    model = keras.Model(inp, out, name=f"{family}_{budget}")
    return model, model.count_params()


def view_of(family: str) -> str:
    """Which input view (daemon.features.VIEWS) a family reads."""
    return "sequence" if family == "lstm" else "flat"
