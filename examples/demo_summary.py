"""One-screen summary of `make demo`: the whole loop on digits, read back from what each step wrote.

Usage: python examples/demo_summary.py DEMO_DIR TARGET
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeloop.frontends import load_file
from edgeloop.graph import get_metadata
from edgeloop.hardware import format_bytes, recommend
from edgeloop.profile import profile_model


def main(demo: Path, target: str) -> None:
    card = json.loads((demo / "data" / "card.json").read_text())
    trained = get_metadata(load_file(demo / "digits.onnx"))
    shrink = json.loads((demo / "shrink" / "results.json").read_text())
    export = json.loads((demo / "c" / "report.json").read_text())
    chosen = next(c for c in shrink["candidates"] + [shrink["baseline"]] if c["chosen"])
    base = shrink["baseline"]["metrics"]
    fits = [r["name"] for r in recommend(profile_model(load_file(demo / "shrink" / "model.onnx"), latency=False))
            if r["fits"]]

    t = Table(title=f"edgeloop demo: digits -> {target}", title_justify="left", show_header=False)
    t.add_column("step")
    t.add_column("result")
    t.add_row("data", f"{card['source']}: {card['n_samples']:,} samples, {len(card['classes'])} classes")
    t.add_row("train", f"'{trained['trainer']['name']}' chosen smallest-first; test accuracy "
                       f"{trained['metrics']['test']:.3f}")
    passes = " + ".join(p["pass"] for p in chosen["passes"]) or "none"
    kept = get_metadata(load_file(demo / "shrink" / "model.onnx")).get("kept_features")
    if kept:
        passes += f" (keeps {len(kept)} of {card['sample_shape'][0]} inputs)"
    t.add_row("shrink", f"{passes}: validation accuracy {chosen['metrics']['accuracy']:.3f} "
                        f"(was {base['accuracy']:.3f}), "
                        f"flash {format_bytes(chosen['metrics']['flash_bytes'])} "
                        f"(was {format_bytes(base['flash_bytes'])}), {len(shrink['candidates'])} candidates tried")
    v = export.get("verify") or {}
    if v.get("available"):
        t.add_row("export (C)", f"{', '.join(export['files'])}; on a Cortex-M4 under QEMU the outputs match "
                                f"the host on {v['matches']}/{v['inputs']} inputs")
        t.add_row("size on the M4", f"flash {v['flash_bytes']:,} B (model object), RAM {v['ram_bytes']:,} B "
                                    f"(arena {v['arena_bytes']:,} + stack {v['stack_bytes']:,})")
        t.add_row("instructions", f"{v['instructions_per_inference']:,} per inference (QEMU counts instructions, "
                                  "not cycles)")
    else:
        t.add_row("export (C)", f"{', '.join(export['files'])}; arena {export['arena_bytes']:,} B; not run on "
                                f"a Cortex-M4: {v.get('error', 'the Arm toolchain or QEMU is not installed')}")
    t.add_row("fits", f"{len(fits)} targets: {', '.join(fits)}")
    Console(width=140).print(t)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2])
