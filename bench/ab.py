"""Interleaved A/B rounds of the live ladder between two config variants, the JSON kept.

    python -m bench.ab OUT.json RATES ROUNDS NAME=YAML NAME=YAML ...
    python -m bench.ab docs/bench-blocks-ab.json 50000,100000,200000 2 "at-once=  block_frames: 128" \\
        "frame-by-frame=  block_frames: 0"

Each round runs every variant once, in turn, so drift of the machine falls on all of them alike.
A variant's YAML ("\\n" for newlines) is lines of the ladder's pipeline section when it starts
indented ("  block_frames: 0"), else whole sections added to its config ("model:\\n  threads: 2").
"""
import json
import sys

from bench.live import ladder
from bench.machine import describe


def main(out, rates, rounds, *variants):
    rates = tuple(int(r) for r in rates.split(","))
    named = [v.split("=", 1) for v in variants]
    runs = []
    for rnd in range(int(rounds)):
        for name, lines in named:
            print(f"== round {rnd + 1} {name}", flush=True)
            text = lines.replace("\\n", "\n") + "\n"
            where = "pipeline_extra" if text.startswith(" ") else "config_extra"
            r = ladder(rates, mode="flow", **{where: text})
            runs.append(dict(round=rnd + 1, variant=name, **{where: text}, steps=r.get("steps")))
    with open(out, "w") as f:
        json.dump(dict(machine=describe(), command="python -m bench.ab " + " ".join(sys.argv[1:]), runs=runs), f,
                  indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
