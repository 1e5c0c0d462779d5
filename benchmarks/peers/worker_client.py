"""Our side's handle on the peers' worker process (`benchmarks/peers/worker.py` in `.venv-peers`)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
WORKER = Path(__file__).with_name("worker.py")
PREFIX = "@@peers "


def peers_python() -> Optional[Path]:
    """The peers' interpreter, or None where `make bench-peers` has not built `.venv-peers`."""
    path = Path(os.environ.get("PEERS_PYTHON", PEERS_PYTHON))
    return path if path.exists() else None


class Worker:
    """One worker process for one model: ``load`` once, then ``run`` pairs (each answer timed on its side)."""

    def __init__(self, folder: Path, threads: int = 1, peers: Optional[list[str]] = None) -> None:
        python = peers_python()
        if python is None:
            raise FileNotFoundError(f"{PEERS_PYTHON} is missing: run `make bench-peers` first")
        env = {**os.environ, "PEERS_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        self.process = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=folder)
        self.folder = folder
        self.loaded = self.request(op="load", dir=str(folder), peers=peers)
        if "error" in self.loaded:
            self.close()
            raise RuntimeError(f"the peers' worker could not load the model: {self.loaded['error']}\n"
                               f"{self.loaded.get('traceback', '')}")

    def request(self, **payload: Any) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(payload) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
        raise RuntimeError(f"the peers' worker exited (code {self.process.wait()}) during {payload['op']}")

    def run(self, pair: str) -> tuple[float, dict[str, torch.Tensor], tuple[float, float]]:
        """(seconds, scores, (clean metric, corrupted metric)) of one timed run of `pair` on the peers' side."""
        with tempfile.NamedTemporaryFile(suffix=".safetensors", dir=self.folder, delete=False) as handle:
            out = handle.name
        reply = self.request(op="run", pair=pair, out=out)
        if "error" in reply:
            raise RuntimeError(f"{pair}: {reply['error']}\n{reply.get('traceback', '')}")
        scores = load_file(out)
        os.unlink(out)
        return reply["seconds"], scores, (reply["clean"], reply["corrupted"])

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.request(op="quit")
            finally:
                self.process.wait(timeout=30)
