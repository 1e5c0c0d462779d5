"""Every task's default model split over two simulated GPUs, through every engine that reads a trained model:
the graph must equal the single-device graph. Too slow for `make test` (about 7 minutes: the SmolLM2 tasks run
their 30 blocks alternating between the two simulated GPUs, under a torch function mode); run it by hand after
changing how engines or tasks place tensors:

    python -m tests.check_devices_all_tasks [TASK ...]

SmolLM2 ties its unembedding to its embedding, so its unembedding stays on cuda:0 with the embedding."""

from __future__ import annotations

import sys
import time

import tasks
from circuits import engines
from tests import simulated_devices as simulated

ENGINES = [("activation_patching", {}), ("edge_attribution", {"method": "eap"}), ("cdt", {"receiver_count": 2}),
           ("path_patching", {"per_input": False, "receivers": ["logits"]})]


def main(names: list[str]) -> int:
    failures = 0
    for name in names or tasks.ready_made():
        task = tasks.get(name)
        task = task.quick() if name == "regular_languages" else task  # the quick model: seconds on the simulated devices
        tied = name in ("factual_recall", "capitals")
        for engine_name, options in ENGINES:
            engine = engines.get(engine_name, **options)
            start = time.perf_counter()
            expected = engine.run(task.default_model(), task, n=4, seed=0)
            model = task.default_model()
            model = simulated.on_gpus(model, "cuda:0" if tied else "cuda:1", min(2, model.cfg.n_layers))
            with simulated.SimulatedDevices():
                same = engine.run(model, task, n=4, seed=0) == expected
            failures += not same
            print(f"{name:<18} {engine_name:<20} {'same graph' if same else 'DIFFERENT'}  "
                  f"{time.perf_counter() - start:6.1f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
