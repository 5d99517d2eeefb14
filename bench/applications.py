"""Keras Applications families through the exporter: time, file size and parity figures.

    python bench/applications.py [--families MobileNetV2,EfficientNetB0]

Each family is built as tests/applications.py builds it (32x32 input, weights=None with BatchNorm
statistics drawn near their defaults, Dropout before a 5-class head) and exported with full
validation; prints one row per family for docs/APPLICATIONS.md.
"""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def main():
    from applications import FAMILIES, application_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()

    from mcdrop.export import export_model

    print("| family | stochastic layers | export s (with validation) | file MB | deterministic parity | statistical parity (T=1000) |")
    print("|---|---|---|---|---|---|")
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "m.keras")
            application_model(family).save(source)
            started = time.perf_counter()
            report = export_model(source, os.path.join(tmp, "m.onnx"))
            seconds = time.perf_counter() - started
        checks = {check.name: check.detail.replace("|", "\\|") for check in report.checks}  # markdown cells
        print(f"| {family} | {len(report.stochastic_layers)} | {seconds:.1f} | {report.size_bytes / 1e6:.1f} | "
              f"{checks['deterministic parity']} | {checks['statistical parity']} |", flush=True)


if __name__ == "__main__":
    main()
