"""The demo study through the Python API, then read back: what `llem run` and `llem results` do.

python examples/api_study.py [RESULTS_DIR]     # after `make install images tiny-model`
"""

import sys
from pathlib import Path

import llem

here = Path(__file__).resolve().parent
options = llem.Options(results_dir=Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results"))


class Progress:
    """Any of llem.Events' methods; llem calls those an object has."""

    def run_finished(self, outcome):
        print(f"  {outcome.entry.run_id}: {outcome.entry.status}", flush=True)


try:
    study = llem.run_study(here / "quickstart.yaml", options, events=Progress())
except llem.LlemError as exc:  # a study that cannot run: one line, as from the command line
    sys.exit(f"llem: {exc}")

print(f"{study.name}: {study.status}, {len(study.results)} results in {study.directory}")
for experiment in study.summary.experiments:  # statistics across cycles, as `llem results` shows them
    tps = experiment.stats["output_tokens_per_s"]
    print(f"  {experiment.label}: {tps.mean:,.1f} tok/s over {tps.n} cycles")

again = llem.load_study(study.directory)  # any study directory, finished or interrupted
best = max(again.table(), key=lambda row: row["output_tokens_per_s"] or 0.0)
print(f"fastest run: {best['run_id']} ({best['output_tokens_per_s']:,.1f} tok/s)")
